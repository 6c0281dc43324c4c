"""The worker's model survives restarts: snapshots under the state dir.

Where: ``<state_dir>/<group>/model/snapshot.safetensors``, in the format of
:mod:`model.persist` (whatever the model says it learnt: for the interest model
parameters, optimiser moments, co-occurrence, popularity, vocabulary;
safetensors, never pickle). Any model that saves itself
(:class:`model.persist.Persistent`) is snapshotted; one that does not is
served without snapshots.

When: after the state commits of the batches it covers, every
``$INTEREST_SNAPSHOT_EVERY_S`` seconds (default 60; 0 = never by time) or every
``$INTEREST_SNAPSHOT_EVERY_BATCHES`` batches (default 0 = never by count),
whichever comes first, and once more on a clean stop. Because a snapshot never
holds learning from a batch whose state could still be lost, a restart never
learns an event twice; after a crash the model misses at most the batches since
the last snapshot (their user states are kept).

Cost: the model's ``state_dict()`` (a copy) is taken on the worker's thread (a
consistent point between batches); it is encoded and written on a background
thread, so the hot path pays only the copy (see ``bench/snapshot_cost.py``).
A snapshot that falls due while the previous one is still being written is
skipped. Writing is atomic (temp
file, fsync, rename): a crash mid-write leaves the previous snapshot intact.

On start a snapshot is loaded if present. One that cannot be read (corrupt,
or from an incompatible model version) is moved aside to
``snapshot.safetensors.bad`` with one WARNING, and the worker starts with a
fresh model, as it would without a snapshot.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.persist import ModelState, Persistent, snapshot_bytes
from model.snapshot import load_snapshot, write_atomic
from stream.config import WorkerConfig

__all__ = ["SnapshotPolicy", "ModelSnapshots"]

log = logging.getLogger("interest_stream.worker")

FILE_NAME = "snapshot.safetensors"


@dataclass(frozen=True)
class SnapshotPolicy:
    """How often a worker saves its model (0 turns a trigger off)."""

    every_s: float = 60.0
    every_batches: int = 0

    @classmethod
    def from_config(cls, worker: WorkerConfig) -> SnapshotPolicy:
        return cls(float(worker.snapshot_every_s), worker.snapshot_every_batches)


class ModelSnapshots:
    """Loads and saves one worker's model under ``directory``."""

    def __init__(self, directory: Path, policy: SnapshotPolicy) -> None:
        self.path = Path(directory) / FILE_NAME
        self.policy = policy
        self.saved = 0  # snapshots written
        self.copy_seconds = 0.0  # the last snapshot's pause on the worker thread
        self.write_seconds = 0.0  # the last snapshot's write (background)
        self.saved_at: float | None = None  # Unix time of the snapshot on disk
        self._thread: threading.Thread | None = None
        self._batches = 0  # batches since the last snapshot
        self._last = time.monotonic()
        # What else a snapshot must remember (e.g. the shared updates its model includes),
        # taken at the same point as the model's state; what it said comes back in ``extra``.
        self.describe: Callable[[], dict[str, Any]] | None = None
        self.extra: dict[str, Any] = {}
        self.loaded = False  # a snapshot was loaded by restore()

    def restore(self, model: Any) -> Any:
        """The model saved here, or ``model`` itself when there is none (or it is unreadable)."""
        if not isinstance(model, Persistent) or not self.path.exists():
            return model
        try:
            loaded, self.extra = load_snapshot(self.path, with_extra=True)
        except Exception as exc:  # corrupt, truncated, or saved by an incompatible model
            bad = self.path.with_name(FILE_NAME + ".bad")
            os.replace(self.path, bad)
            log.warning(
                "model snapshot %s is unreadable (%s); moved to %s, starting with a fresh model",
                self.path,
                exc,
                bad.name,
            )
            return model
        log.info("model %s restored from %s", loaded.version, self.path)
        self.loaded = True
        self.saved_at = self.path.stat().st_mtime
        return loaded

    def after_batch(self, model: Any, committed: bool) -> None:
        """Called between batches; ``committed``: a batch was just applied and committed."""
        if committed:
            self._batches += 1
        if not self._batches or not isinstance(model, Persistent):
            return
        p = self.policy
        due = (p.every_batches and self._batches >= p.every_batches) or (
            p.every_s and time.monotonic() - self._last >= p.every_s
        )
        if not due or (self._thread is not None and self._thread.is_alive()):
            return
        t0 = time.perf_counter()
        frozen = _Frozen(model, self.describe)  # a consistent copy; the worker trains on
        self.copy_seconds = time.perf_counter() - t0
        self._batches, self._last = 0, time.monotonic()
        self._thread = threading.Thread(
            target=self._write, args=(frozen,), name="model-snapshot", daemon=True
        )
        self._thread.start()

    def close(self, model: Any, clean: bool) -> None:
        """Wait for a write in progress; on a clean stop save ``model`` once more."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if clean:
            self.save(model)

    def save(self, model: Any) -> None:
        """Save ``model`` now, on this thread (``copy_seconds``/``write_seconds`` say how long)."""
        if not isinstance(model, Persistent):
            return
        t0 = time.perf_counter()
        frozen = _Frozen(model, self.describe)
        self.copy_seconds = time.perf_counter() - t0
        self._write(frozen)

    def _write(self, frozen: _Frozen) -> None:
        t0 = time.perf_counter()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, frozen.to_bytes())
        except Exception as exc:  # a full disk must not stop the worker: state is safe
            log.warning("model snapshot %s could not be written: %s", self.path, exc)
            return
        self.write_seconds = time.perf_counter() - t0
        self.saved += 1
        self.saved_at = time.time()


class _Frozen:
    """What a model had learnt at one point, to be encoded later on another thread."""

    def __init__(
        self, model: Persistent, describe: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.name, self.version = model.name, model.version
        self.config = dict(model.config)
        self.state: ModelState = model.state_dict()
        self.extra = describe() if describe is not None else None

    def to_bytes(self) -> bytes:
        return snapshot_bytes(self.name, self.version, self.config, self.state, extra=self.extra)
