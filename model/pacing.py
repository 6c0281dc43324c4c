"""How a worker cuts the stream into micro-batches, for the worker and for replays of it.

A worker takes up to ``batch_max_events`` events a batch. One that is behind
(its batches come full: a backlog, or a load beyond the usual batches) doubles
its cap batch by batch up to ``batch_catch_up_events``, and goes back to
``batch_max_events`` at the first batch that is not full. The native runtime
follows :func:`next_cap`; the evaluator's subscriber replay drains its warm-up
with :func:`backlog_batches`, as a worker started on that history drains it,
so that both learn from the same batches.

>>> next_cap(500, 500, 500, 2000), next_cap(1000, 1000, 500, 2000), next_cap(2000, 12, 500, 2000)
(1000, 2000, 500)
>>> [len(b) for b in backlog_batches(list(range(5000)), 500, 2000)]
[500, 1000, 2000, 1500]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["BATCH_MAX_EVENTS", "BATCH_CATCH_UP_EVENTS", "next_cap", "backlog_batches"]

T = TypeVar("T")

# The worker's defaults (stream.config.WorkerConfig takes them from here).
BATCH_MAX_EVENTS = 500
BATCH_CATCH_UP_EVENTS = 2000


def next_cap(cap: int, got: int, base: int, top: int) -> int:
    """The next batch's cap after a batch of ``got`` events under ``cap``.

    Full: double, up to ``top`` (at most ``base`` turns catching up off); else ``base``.
    """
    top = max(base, top)
    return min(2 * cap, top) if got >= cap else base


def backlog_batches(events: Sequence[T], base: int, top: int) -> Iterator[Sequence[T]]:
    """``events`` as a worker drains them from a backlog: every batch full, caps doubling."""
    cap, at = base, 0
    while at < len(events):
        batch = events[at : at + cap]
        at += len(batch)
        yield batch
        cap = next_cap(cap, len(batch), base, top)
