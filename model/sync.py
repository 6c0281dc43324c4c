"""One model across workers: what a shareable model offers, the wire format, the bookkeeping.

Every worker trains its own copy of the model on the events it owns. Copies
stay one model in two ways (the worker in :mod:`stream.runtime.modelsync` and the
offline twin in :mod:`engine.replay.scaleout` run this same code):

* **Count memories are sums.** With :meth:`Shared.start_sharing`, a model no
  longer counts what it learns from; :meth:`Shared.count_delta` hands out the
  batch's contribution instead (by item id: rows differ from copy to copy),
  and every copy, the one that made it included, adds every copy's
  contributions with :meth:`Shared.apply_count_delta`. All copies then hold
  the counts a single model would (undecayed ones exactly; decayed ones up to
  the order they were added in).
* **Learned parameters are merged by adding changes.** Every copy starts an
  item from the same vector (seeded by the item id); :meth:`Shared.param_delta`
  is what this copy learnt since it last shared, and the others add it
  (:meth:`Shared.apply_param_delta`), so every copy holds "start + the sum of
  every copy's changes" once all changes went round. Optimiser moments stay
  local.

Wire format (:func:`encode_delta`): ``b"ISd"``, one codec byte (0 none, 1
zlib), then safetensors bytes whose header holds ``format``
(:data:`DELTA_FORMAT`), ``kind`` (``counts`` or ``params``), the model's
version, the sender's header fields and the state's JSON metadata (e.g. the
item ids the arrays refer to). Never pickle.
"""

from __future__ import annotations

import json
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.errors import DataError
from model.persist import ModelState

__all__ = [
    "Shared",
    "DELTA_FORMAT",
    "COUNTS",
    "PARAMS",
    "Delta",
    "encode_delta",
    "decode_delta",
    "SyncClock",
    "SyncBook",
]

DELTA_FORMAT = "interest-delta-1"
COUNTS, PARAMS = "counts", "params"
_MAGIC = b"ISd"
_RAW, _ZLIB = 0, 1
# zlib level 1: a 500-event count delta shrinks 3-4x in about 0.3 ms
# (docs/model/results-history.md).
_LEVEL = 1


@runtime_checkable
class Shared(Protocol):
    """A model whose copies can share what they learn (see the module docstring)."""

    version: str

    def start_sharing(self) -> None:
        """Count only what :meth:`apply_count_delta` brings (own batches included) from now
        on, and keep track of what this copy learns that the others have not seen."""
        ...

    def count_delta(self) -> ModelState | None:
        """The count contribution of what was learnt since the last call (None: nothing)."""
        ...

    def apply_count_delta(self, delta: ModelState) -> int:
        """Add a contribution made by any copy; returns the number of events it holds."""
        ...

    def param_delta(self, max_bytes: int) -> list[ModelState]:
        """What this copy learnt since it last shared, in parts of about ``max_bytes`` at most.

        Nothing changes until :meth:`param_delta_shared` says the parts went out.
        """
        ...

    def param_delta_shared(self) -> None:
        """The parts the last :meth:`param_delta` returned were delivered: they are agreed now."""
        ...

    def apply_param_delta(self, delta: ModelState, adopt: bool = False) -> None:
        """Add another copy's change (``adopt``: this copy's own, see RowTable.add_delta)."""
        ...

    def drop_unshared(self) -> None:
        """Forget what this copy learnt and did not share (after loading another copy's state)."""
        ...


@dataclass
class Delta:
    """A decoded update: its kind, the sender's header fields, the model's state change."""

    kind: str
    header: dict[str, Any]
    state: ModelState


def encode_delta(
    kind: str, version: str, state: ModelState, header: dict[str, Any] | None = None
) -> bytes:
    """Wire bytes of a delta (see the module docstring); ``header`` must be JSON-able.

    >>> s = ModelState({"n": np.arange(3, dtype=np.int32)}, {"ids": ["a", "b"]})
    >>> d = decode_delta(encode_delta("counts", "m-1", s, {"worker": "w1"}))
    >>> d.kind, d.header["worker"], d.state.meta["ids"], d.state.arrays["n"].tolist()
    ('counts', 'w1', ['a', 'b'], [0, 1, 2])
    """
    from safetensors.numpy import save

    arrays = {k: np.require(v, requirements="C") for k, v in state.arrays.items()}
    meta = {
        "format": DELTA_FORMAT,
        "kind": kind,
        "version": version,
        "header": json.dumps(header or {}),
        "meta": json.dumps(state.meta),
    }
    raw = save(arrays, metadata=meta)
    packed = zlib.compress(raw, _LEVEL)
    if len(packed) < len(raw):
        return _MAGIC + bytes([_ZLIB]) + packed
    return _MAGIC + bytes([_RAW]) + raw


def decode_delta(data: bytes) -> Delta:
    """The :class:`Delta` in ``data``; anything else raises DataError (one clear line)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not isinstance(data, bytes | bytearray) or data[:3] != _MAGIC or len(data) < 4:
        raise DataError("not a model update")
    codec, body = data[3], bytes(data[4:])
    try:
        if codec == _ZLIB:
            body = zlib.decompress(body)
        elif codec != _RAW:
            raise ValueError(f"unknown codec {codec}")
        size = int.from_bytes(body[:8], "little")
        meta = json.loads(body[8 : 8 + size]).get("__metadata__", {})
        if meta.get("format") != DELTA_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {DELTA_FORMAT}")
        arrays = load(body)
        header, extra = json.loads(meta["header"]), json.loads(meta["meta"])
        kind = meta["kind"]
    except (zlib.error, SafetensorError, ValueError, KeyError, AttributeError) as exc:
        raise DataError(f"unreadable model update: {exc}") from None
    header["version"] = meta.get("version")
    return Delta(kind, header, ModelState(dict(arrays), extra))


@dataclass
class SyncClock:
    """When a copy shares its learned parameters: every ``every_s`` seconds of its clock.

    The worker's clock is wall time; the offline twin's is the events' time,
    so the twin shares as often as a live worker would on the same stream.
    ``every_s`` 0 shares after every batch.
    """

    every_s: float
    last: float | None = None

    def due(self, now_s: float) -> bool:
        if self.last is None:
            self.last = now_s
        return now_s - self.last >= self.every_s

    def done(self, now_s: float) -> None:
        self.last = now_s


@dataclass
class SyncBook:
    """What one copy knows about the sharing: its sequence numbers and merges.

    Parameter deltas carry the sender's id and a sequence number. A copy skips
    its own deltas up to ``own_seq`` (already in its weights); an own delta
    beyond it was shared by an earlier life of this copy after the state it
    restarted from, and is adopted (:meth:`Shared.apply_param_delta`).

    Count deltas carry the sending process's ``life`` (a fresh id per start)
    and a sequence number; a copy counts every delta, its own included, at
    most once: ``counted`` holds, per life, the last sequence number in the
    model (kept with its snapshots).
    ``served_version`` names the model a list was ranked with:
    ``<model version>@<snapshot version>+<merges since>``.

    >>> book = SyncBook("w1")
    >>> h = book.count_header(120)
    >>> book.counts_sent(h)
    >>> book.take_counts(h), book.take_counts(h)  # read back twice: counted once
    (True, False)
    >>> book.take_counts({"life": "w2.x", "seq": 1})
    True
    """

    worker: str
    own_seq: int = 0
    snapshot: int = 0  # version of the shared snapshot this copy descends from (0: none)
    merges: int = 0  # parameter deltas added since (own and others')
    events: int = 0  # events counted from count deltas
    seen: dict[str, int] = field(default_factory=dict)  # sender -> last seq added
    life: str = ""  # this process's id in count deltas (set in __post_init__)
    count_seq: int = 0  # last count delta this life sent
    counted: dict[str, int] = field(default_factory=dict)  # life -> last count seq counted

    def __post_init__(self) -> None:
        if not self.life:
            self.life = f"{self.worker}.{uuid.uuid4().hex[:8]}"

    def count_header(self, events: int) -> dict[str, Any]:
        """Header of this copy's next count delta (of ``events`` events)."""
        return {
            "worker": self.worker,
            "life": self.life,
            "seq": self.count_seq + 1,
            "events": events,
        }

    def counts_sent(self, header: dict[str, Any]) -> None:
        """The count delta with ``header`` was delivered (it is counted when read back)."""
        self.count_seq = int(header["seq"])

    def take_counts(self, header: dict[str, Any]) -> bool:
        """Whether a count delta is new here (then it is marked counted)."""
        life, seq = header.get("life"), int(header.get("seq", 0))
        if not isinstance(life, str) or not life:
            return True  # a sender without sequence numbers: no duplicates to tell
        if seq <= self.counted.get(life, 0):
            return False
        self.counted[life] = seq
        return True

    def next_seq(self) -> int:
        return self.own_seq + 1

    def sent(self, seq: int) -> None:
        self.own_seq = max(self.own_seq, seq)
        self.merges += 1

    def decide(self, header: dict[str, Any]) -> str | None:
        """For a parameter delta: ``"add"``, ``"adopt"`` or None (skip, already in)."""
        sender, seq = str(header.get("worker", "")), int(header.get("seq", 0))
        if sender == self.worker:
            return "adopt" if seq > self.own_seq else None
        return "add"

    def merged(self, header: dict[str, Any]) -> None:
        sender, seq = str(header.get("worker", "")), int(header.get("seq", 0))
        if sender == self.worker:
            self.own_seq = max(self.own_seq, seq)
        self.seen[sender] = max(self.seen.get(sender, 0), seq)
        self.merges += 1

    def served_version(self, model_version: str) -> str:
        return f"{model_version}@{self.snapshot}+{self.merges}"

    def to_json(self) -> dict[str, Any]:
        """What a snapshot of the model must remember about the sharing."""
        return {
            "worker": self.worker,
            "own_seq": self.own_seq,
            "snapshot": self.snapshot,
            "seen": dict(self.seen),
            "counted": dict(self.counted),
        }
