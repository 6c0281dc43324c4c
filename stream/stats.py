"""Counters a running worker keeps for its caller (the demo, tests, the benchmark).

Plain integers updated by the worker thread and read from any thread; the
latency samples are a bounded window so a long run does not grow without end.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["WorkerStats", "percentile"]

_MAX_SAMPLES = 200_000


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class WorkerStats:
    """What a worker has done so far.

    ``consumed == applied + dead_lettered`` holds after every batch.
    ``latencies_s`` holds the newest event-to-list latencies in seconds;
    ``hits / scored`` is the online hit rate (item in the list shown just before).
    """

    consumed: int = 0
    applied: int = 0
    dead_lettered: int = 0
    lists_published: int = 0
    batches: int = 0
    scored: int = 0
    hits: int = 0
    dead_letters_by_reason: Counter[str] = field(default_factory=Counter)
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_SAMPLES))
    started_at: float | None = None
    finished_at: float | None = None
    # The worker thread appends while a reader (demo screen, bench) copies.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def started(self) -> None:
        self.started_at = time.monotonic()

    def finished(self) -> None:
        self.finished_at = time.monotonic()

    def add_latencies(self, values: Iterable[float]) -> None:
        with self._lock:
            self.latencies_s.extend(values)

    def clear_latencies(self) -> None:
        """Forget the samples so far (e.g. after a warm-up)."""
        with self._lock:
            self.latencies_s.clear()

    def latency_samples(self) -> list[float]:
        """A copy of the current latency window (seconds)."""
        with self._lock:
            return list(self.latencies_s)

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at

    def latency_ms(self, q: float) -> float | None:
        """Percentile ``q`` of the event-to-list latency in milliseconds."""
        p = percentile(self.latency_samples(), q)
        return None if p is None else p * 1000.0

    def summary(self) -> dict[str, float | int | None | dict[str, int]]:
        p50, p99 = self.latency_ms(50), self.latency_ms(99)
        return {
            "consumed": self.consumed,
            "applied": self.applied,
            "dead_lettered": self.dead_lettered,
            "dead_letters_by_reason": dict(self.dead_letters_by_reason),
            "lists_published": self.lists_published,
            "batches": self.batches,
            "online_hit_rate": round(self.hits / self.scored, 4) if self.scored else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "latency_p50_ms": None if p50 is None else round(p50, 1),
            "latency_p99_ms": None if p99 is None else round(p99, 1),
        }
