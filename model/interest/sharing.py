"""The interest model's side of :mod:`model.sync`: its deltas, by item id, as plain arrays.

**Count contribution** of a batch (what :meth:`model.memories.CountMemories.remember`
needs, with item ids in place of rows): per event the item, its category, time,
type and the user's experience stage, and the user's recent window just before
the event, right-aligned (``win_len[i]`` slots, oldest first; -1 where the item
was unknown). Arrays (int32 indexes into ``meta["ids"]`` / ``meta["cats"]``):
``item``, ``cat`` (-1: none), ``ts`` (int64 ms), ``type``, ``stage``, ``win_len``
(int16) and ``win`` (the windows one after another). 500 events with windows
of 30 take about 60 KiB before compression, 15-20 KiB after (docs/model/results-history.md).

**Parameter delta**: for every table, the rows this copy trained since it
last shared (``<table>.rows``, indexes into ``meta["ids"]`` or, for the category
tables, ``meta["cats"]``) and their change (``<table>.delta``, float16: half the
bytes; what rounding leaves out stays in the copy's unshared change and goes
out next time), and the change of every dense parameter (``dense.<name>``, float32).

:class:`Sharing` is one copy's bookkeeping (what it owes the others, what they
agreed on); :func:`apply_counts` and :func:`apply_params` take the others'
deltas into any :class:`Receiver`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from core.types import EVENT_INDEX, Event
from model.interest.memories import EVENT_WEIGHTS, Context, CountMemories
from model.interest.params import DENSE, InterestParams
from model.persist import ModelState
from model.rowtable import RowTable
from model.vocab import ItemVocab

__all__ = [
    "Receiver",
    "Sharing",
    "Contribution",
    "contribution",
    "merge_contributions",
    "unpack_window",
    "apply_counts",
    "param_parts",
    "apply_params",
]

_ITEM_TABLES = ("emb_in", "emb_out", "bias")
_CAT_TABLES = ("cat_in", "cat_out")


class Receiver(Protocol):
    """What taking in another copy's delta needs of a model."""

    @property
    def vocab(self) -> ItemVocab: ...

    @property
    def memories(self) -> CountMemories: ...

    @property
    def tables(self) -> Mapping[str, RowTable]: ...

    def expire_until(self, ts: int) -> None:
        """Forget the items unseen for too long before event time ``ts`` (when due)."""
        ...

    def grow(self) -> None:
        """Room for every row of the vocabulary; the rows it just handed out start from
        vectors seeded by their item (as in every copy)."""
        ...

    def mark_changed(self, rows: np.ndarray) -> None:
        """Item ``rows`` changed at the current learning step."""
        ...


class Sharing:
    """One copy's side of :mod:`model.sync`: the contributions it owes, the agreed values.

    Until :meth:`start`, the model counts its own batches and nothing is
    tracked. ``params`` are the copy's; ``window`` is its users' recent window.
    """

    def __init__(self, params: InterestParams, window: int) -> None:
        self.params, self.window = params, window
        self.active = False  # counts only from apply_count_delta (see model.sync)
        self._pending: list[Contribution] = []
        # The agreed values of the dense parameters (None: not tracked).
        self.dense_base: list[torch.Tensor] | None = None
        # (table, rows, sent, table clock when taken) and the dense changes of the last
        # param_delta, applied to the agreed values once delivered
        self._outbox: list[tuple[str, np.ndarray, np.ndarray, int]] = []
        self._dense_sent: list[torch.Tensor] = []

    def start(self) -> None:
        """Count only what comes back as contributions; track parameter changes."""
        self.active = True
        for table in self.params.tables.values():
            table.track_changes()
        if self.dense_base is None:
            self.dense_base = [p.detach().clone() for p in self.params.dense()]

    def queue(self, events: Sequence[Event], rows: np.ndarray, ctx: Context) -> None:
        """Keep a batch's count contribution for the next :meth:`count_delta`."""
        self._pending.append(contribution(events, rows, ctx, self.params.vocab))

    def count_delta(self) -> ModelState | None:
        parts, self._pending = self._pending, []
        return merge_contributions(parts, self.window) if parts else None

    def param_delta(self, max_bytes: int) -> list[ModelState]:
        """What this copy learnt since it last shared (see ``Shared.param_delta``)."""
        self.start()
        assert self.dense_base is not None
        dense = {
            name: (p.detach() - base).numpy()
            for name, p, base in zip(DENSE, self.params.dense(), self.dense_base, strict=True)
        }
        tables = self.params.tables
        clocks = {name: table.clock for name, table in tables.items()}
        parts, outbox = param_parts(tables, dense, self.params.vocab, max_bytes)
        self._outbox = [(name, rows, sent, clocks[name]) for name, rows, sent in outbox]
        self._dense_sent = [torch.from_numpy(dense[name].copy()) for name in DENSE]
        return parts

    def delivered(self) -> None:
        """The parts of the last :meth:`param_delta` went out: what they hold is agreed."""
        # What was sent, not the weights now: a step taken since (the worker shares
        # while the batch's step runs) is shared next time.
        for name, rows, sent, clock in self._outbox:
            self.params.tables[name].shared(rows, sent, clock)
        self._outbox = []
        if self.dense_base is not None and self._dense_sent:
            for base, change in zip(self.dense_base, self._dense_sent, strict=True):
                base += change
        self._dense_sent = []

    def add_dense(self, delta: ModelState, adopt: bool) -> None:
        """Add the dense part of a parameter delta (``adopt``: this copy's own)."""
        base = self.dense_base
        with torch.no_grad():
            for i, (name, param) in enumerate(zip(DENSE, self.params.dense(), strict=True)):
                if f"dense.{name}" not in delta.arrays:
                    continue
                d = torch.from_numpy(np.asarray(delta.arrays[f"dense.{name}"], dtype=np.float32))
                if base is not None:
                    base[i] += d
                    param.copy_(base[i] if adopt else param + d)
                else:
                    param.add_(d)

    def drop_unshared(self) -> None:
        """Every parameter back to its agreed value."""
        for table in self.params.tables.values():
            table.drop_unshared()
        if self.dense_base is not None:
            with torch.no_grad():
                for param, base in zip(self.params.dense(), self.dense_base, strict=True):
                    param.copy_(base)

    def save(self, state: ModelState) -> None:
        """The agreed dense values into ``state`` (``base.<name>``), when tracked."""
        if self.dense_base is not None:
            for name, base in zip(DENSE, self.dense_base, strict=True):
                state.arrays[f"base.{name}"] = base.numpy().copy()

    def load(self, state: ModelState) -> None:
        arrays = state.arrays
        if f"base.{DENSE[0]}" in arrays:
            self.dense_base = [
                torch.from_numpy(np.array(arrays[f"base.{name}"], dtype=np.float32))
                for name in DENSE
            ]


@dataclass
class Contribution:
    """One ``learn_many`` call's count contribution, before encoding."""

    ids: list[str]
    cats: list[str]
    arrays: dict[str, np.ndarray]


def contribution(
    events: Sequence[Event], rows: np.ndarray, ctx: Context, vocab: ItemVocab
) -> Contribution:
    """The count contribution of ``events`` (item ``rows``, users' contexts ``ctx`` before)."""
    n, length = ctx.rows.shape
    mask = ctx.mask
    ref = np.unique(np.concatenate([rows, ctx.rows[mask]]))
    names = vocab.ids
    ids = [str(names[r]) for r in ref.tolist()]
    win = np.where(mask, np.searchsorted(ref, ctx.rows), -1)
    first = np.where(mask.any(axis=1), mask.argmax(axis=1), length)
    keep = np.arange(length)[None, :] >= first[:, None]
    cat_index: dict[str, int] = {}
    cat = np.array(
        [cat_index.setdefault(ev.category, len(cat_index)) if ev.category else -1 for ev in events],
        dtype=np.int32,
    )
    arrays = {
        "item": np.searchsorted(ref, rows).astype(np.int32),
        "cat": cat,
        "ts": np.fromiter((ev.ts for ev in events), dtype=np.int64, count=n),
        "type": np.fromiter((EVENT_INDEX[ev.event] for ev in events), dtype=np.int8, count=n),
        "stage": ctx.stage.astype(np.int8),
        "win_len": (length - first).astype(np.int16),
        "win": win[keep].astype(np.int32),
    }
    return Contribution(ids, list(cat_index), arrays)


def merge_contributions(parts: Sequence[Contribution], window: int) -> ModelState:
    """One :class:`ModelState` holding ``parts`` in order (indexes remapped to shared lists)."""
    ids: dict[str, int] = {}
    cats: dict[str, int] = {}
    out: dict[str, list[np.ndarray]] = {}
    for part in parts:
        id_map = np.array([ids.setdefault(x, len(ids)) for x in part.ids] + [-1], dtype=np.int32)
        cat_map = np.array([cats.setdefault(c, len(cats)) for c in part.cats] + [-1], np.int32)
        for name, arr in part.arrays.items():
            if name in ("item", "win"):
                arr = id_map[arr]  # -1 indexes the trailing -1
            elif name == "cat":
                arr = cat_map[arr]
            out.setdefault(name, []).append(arr)
    arrays = {name: np.concatenate(chunks) for name, chunks in out.items()}
    return ModelState(arrays, {"ids": list(ids), "cats": list(cats), "window": window})


def unpack_window(
    delta: ModelState, ref_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64[n, L] window rows (-1: none), bool mask, float32[n, L] ages) of a contribution.

    ``ref_rows`` maps the delta's ids to this copy's rows (-1: unknown here).
    """
    a = delta.arrays
    length = int(delta.meta["window"])
    win_len = np.asarray(a["win_len"], dtype=np.int64)
    n, total = len(win_len), int(win_len.sum())
    win = np.asarray(a["win"], dtype=np.int64)
    if (win_len < 0).any() or (win_len > length).any() or len(win) != total:
        raise ValueError("window lengths do not match the windows")
    rows = np.full((n, length), -1, dtype=np.int64)
    starts = np.cumsum(win_len) - win_len
    event = np.repeat(np.arange(n), win_len)
    pos = np.repeat(length - win_len, win_len) + (np.arange(total) - np.repeat(starts, win_len))
    ok = win >= 0
    rows[event[ok], pos[ok]] = ref_rows[win[ok]]
    ages = np.broadcast_to(np.arange(length - 1, -1, -1, dtype=np.float32), (n, length)).copy()
    return rows, rows >= 0, ages


def apply_counts(model: Receiver, delta: ModelState) -> int:
    """Count a contribution made by any copy into ``model``; returns its number of events."""
    a, ids, cats = delta.arrays, delta.meta["ids"], delta.meta["cats"]
    ts = np.asarray(a["ts"], dtype=np.int64)
    if ts.size == 0:
        return 0
    cat = np.asarray(a["cat"], dtype=np.int64)
    model.expire_until(int(ts.max()))  # event time moves on here too
    rows = model.vocab.add_events(
        (ids[i], cats[c] if c >= 0 else None, t)
        for i, c, t in zip(a["item"].tolist(), cat.tolist(), ts.tolist(), strict=True)
    )
    model.grow()
    index = model.vocab.index
    win, mask, ages = unpack_window(
        delta, np.array([index.get(x, -1) for x in ids] + [-1], dtype=np.int64)
    )
    n = len(rows)
    ctx = Context(
        win,
        mask,
        np.zeros_like(win),
        ages,
        np.zeros((n, 0), np.float32),
        np.ones(n, np.float32),
        np.asarray(a["stage"], dtype=np.int64),
        np.full((n, 1), -1, np.int64),
    )
    weights = EVENT_WEIGHTS[np.asarray(a["type"], dtype=np.int64)]
    model.memories.remember(rows, ctx, weights, model.vocab)
    model.mark_changed(rows)
    return n


def apply_params(model: Receiver, delta: ModelState, adopt: bool) -> None:
    """Add another copy's parameter delta to ``model``'s tables (the dense part:
    :meth:`Sharing.add_dense`)."""
    a, index = delta.arrays, model.vocab.index
    # An item this copy has not counted yet (its count delta is on its way) is added
    # now; its time and category come with the counts.
    model.vocab.add_events((x, None, model.vocab.now) for x in delta.meta["ids"] if x not in index)
    model.grow()  # from the same start as in the copy that knows it
    items = np.array([index[x] for x in delta.meta["ids"]] + [-1], dtype=np.int64)
    cat_index = model.vocab.category_index
    cats = np.array([cat_index(c) for c in delta.meta["cats"]] + [-1], dtype=np.int64)
    for name, table in model.tables.items():
        if f"{name}.rows" not in a:
            continue
        rows = (cats if name in _CAT_TABLES else items)[np.asarray(a[f"{name}.rows"])]
        ok = rows >= 0  # a category unknown here: its items bring it later
        table.add_delta(rows[ok], np.asarray(a[f"{name}.delta"])[ok], adopt)


def param_parts(
    tables: dict[str, RowTable],
    dense: dict[str, np.ndarray],
    vocab: ItemVocab,
    max_bytes: int,
) -> tuple[list[ModelState], list[tuple[str, np.ndarray, np.ndarray]]]:
    """The parameter delta of trained rows in parts of about ``max_bytes``, and what it sends.

    ``dense`` maps each dense parameter's name to its change. The second value
    lists (table, rows, the float32 change as the others will add it), for
    :meth:`model.rowtable.RowTable.shared` once the parts are delivered.
    """
    sent: list[tuple[str, np.ndarray, np.ndarray]] = []
    per_table: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, table in tables.items():
        rows = table.trained_rows()
        if name in _ITEM_TABLES and rows.size:
            rows = rows[vocab.live()[rows]]  # a row freed meanwhile has nothing to share
        if rows.size == 0:
            continue
        q = table.delta(rows).astype(np.float16)
        sent.append((name, rows, q.astype(np.float32)))
        per_table.append((name, rows, q))
    if not per_table and not any(np.any(v) for v in dense.values()):
        return [], sent
    row_bytes = 2 * max(t.width for t in tables.values()) + 8
    room = per_part = max(1, max_bytes // row_bytes)
    chunks: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{}]
    for name, rows, q in per_table:
        lo = 0
        while lo < len(rows):
            take = min(room, len(rows) - lo)
            chunks[-1][name] = (rows[lo : lo + take], q[lo : lo + take])
            lo, room = lo + take, room - take
            if room == 0:
                chunks.append({})
                room = per_part
    if not chunks[-1] and len(chunks) > 1:
        chunks.pop()
    parts = [_part(c, vocab, dense if i == 0 else {}) for i, c in enumerate(chunks)]
    return parts, sent


def _part(
    chunk: dict[str, tuple[np.ndarray, np.ndarray]], vocab: ItemVocab, dense: dict
) -> ModelState:
    """One part: per table the rows (as indexes into the part's ids or categories) and deltas."""
    item_rows = [rows for name, (rows, _) in chunk.items() if name in _ITEM_TABLES]
    cat_rows = [rows for name, (rows, _) in chunk.items() if name in _CAT_TABLES]
    items = np.unique(np.concatenate(item_rows)) if item_rows else np.zeros(0, np.int64)
    cats = np.unique(np.concatenate(cat_rows)) if cat_rows else np.zeros(0, np.int64)
    arrays: dict[str, np.ndarray] = {}
    for name, (rows, q) in chunk.items():
        ref = cats if name in _CAT_TABLES else items
        arrays[f"{name}.rows"] = np.searchsorted(ref, rows).astype(np.int32)
        arrays[f"{name}.delta"] = q
    for name, value in dense.items():
        arrays[f"dense.{name}"] = np.asarray(value, dtype=np.float32)
    ids, names = vocab.ids, vocab.categories
    meta = {
        "ids": [str(ids[r]) for r in items.tolist()],
        "cats": ["" if names[c] is None else str(names[c]) for c in cats.tolist()],
    }
    return ModelState(arrays, meta)
