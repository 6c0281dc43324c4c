"""What a running worker has done, for its caller (the demo, tests, the benchmark).

Every count is read from the worker's Prometheus metrics, the one place the
worker counts anything; this adds only what Prometheus cannot give exactly:
a bounded window of event-to-list latencies for percentiles, and the run's
start and end. Read from any thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable

from engine.metrics import WorkerMetrics, sample_total

__all__ = ["WorkerStats", "percentile"]

_MAX_SAMPLES = 200_000


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[rank]


class WorkerStats:
    """A view of one worker's metrics plus its latency window.

    ``consumed == applied + dead_lettered + forwarded + erasures + events_erased``
    holds after every committed batch (forwarded: events sent on to the partition
    their key belongs to; erasures: erasure requests; events_erased: events an
    erasure request of their user followed in the same batch, never applied);
    ``hits / scored`` is the online hit rate (item in the list shown just before).
    """

    def __init__(self, metrics: WorkerMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else WorkerMetrics.create()
        self._latencies: deque[float] = deque(maxlen=_MAX_SAMPLES)
        self._lock = threading.Lock()  # the worker thread appends while a reader copies
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # counts (from the metrics) ---------------------------------------------------------
    @property
    def consumed(self) -> int:
        return sample_total(self.metrics.messages_consumed)

    @property
    def applied(self) -> int:
        return sample_total(self.metrics.events_applied)

    @property
    def dead_lettered(self) -> int:
        return sample_total(self.metrics.dead_letters)

    @property
    def dead_letters_by_reason(self) -> dict[str, int]:
        by = sample_total(self.metrics.dead_letters, by="reason")
        return {reason: n for reason, n in by.items() if n}

    @property
    def forwarded(self) -> int:
        return sample_total(self.metrics.events_forwarded)

    @property
    def erasures(self) -> int:
        return sample_total(self.metrics.users_erased)

    @property
    def events_erased(self) -> int:
        return sample_total(self.metrics.events_erased)

    @property
    def lists_published(self) -> int:
        return sample_total(self.metrics.lists_published)

    @property
    def lists_refreshed(self) -> int:
        return sample_total(self.metrics.lists_refreshed)

    @property
    def batches(self) -> int:
        return sample_total(self.metrics.batches)

    @property
    def scored(self) -> int:
        return sample_total(self.metrics.events_scored)

    @property
    def hits(self) -> int:
        return sample_total(self.metrics.list_hits)

    # run time and latency ----------------------------------------------------------------
    def started(self) -> None:
        self.started_at = time.monotonic()

    def finished(self) -> None:
        self.finished_at = time.monotonic()

    def add_latencies(self, values: Iterable[float]) -> None:
        with self._lock:
            self._latencies.extend(values)

    def clear_latencies(self) -> None:
        """Forget the samples so far (e.g. after a warm-up)."""
        with self._lock:
            self._latencies.clear()

    def latency_samples(self) -> list[float]:
        """A copy of the current latency window (seconds)."""
        with self._lock:
            return list(self._latencies)

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
        scored = self.scored
        return {
            "consumed": self.consumed,
            "applied": self.applied,
            "dead_lettered": self.dead_lettered,
            "dead_letters_by_reason": self.dead_letters_by_reason,
            "forwarded": self.forwarded,
            "erasures": self.erasures,
            "lists_published": self.lists_published,
            "batches": self.batches,
            "online_hit_rate": round(self.hits / scored, 4) if scored else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "latency_p50_ms": None if p50 is None else round(p50, 1),
            "latency_p99_ms": None if p99 is None else round(p99, 1),
        }
