"""Is the worker making progress? What ``/healthz``, ``/readyz`` and the stall gauges say.

A worker *makes progress* when it commits a batch, when a restore applies
changelog records, or when it finds nothing to do (every assigned partition is
read to its end). Stuck anywhere (a poll that never returns, a transaction
call that hangs, a restore that never ends, batches aborted again and again
while the broker is away), it stops making progress while events wait; after
``stall_after_s`` seconds of that it is *stalled*: ``interest_stalled`` is 1
and ``/healthz`` answers 503, so an orchestrator restarts it. The seconds are
counted on the HTTP server's thread, so a loop that hangs for good is seen too.

*Ready* (``/readyz`` 200): the worker has joined its consumer group (its loop
runs and it got its first assignment), no partition of it is being restored
from the changelog, and it is not stalled.

>>> now = [0.0]
>>> health = Health(stall_after_s=30, clock=lambda: now[0])
>>> health.live(), health.ready()
((True, 'starting'), (False, 'starting'))
>>> health.start()
>>> health.set_ready(True, "consuming")
>>> now[0] = 31.0
>>> health.stalled(), health.live()
(True, (False, 'stalled: no progress for 31s (events wait)'))
>>> health.progressed()
>>> health.live(), health.ready()
((True, 'making progress'), (True, 'consuming'))
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Health"]


class Health:
    """Progress and readiness of one worker, written by its loop, read by HTTP threads."""

    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = float(stall_after_s)
        self._clock = clock
        self._progress_at: float | None = None  # None: the loop has not started
        self._ready = False
        self._why = "starting"

    def start(self) -> None:
        """The worker's loop begins: progress is counted from now."""
        self._progress_at = self._clock()

    def progressed(self) -> None:
        """A batch committed, a restore applied records, or there was nothing to do."""
        self._progress_at = self._clock()

    def set_ready(self, ready: bool, why: str) -> None:
        """Whether the worker consumes (``why``: what ``/readyz`` says, e.g. "restoring")."""
        self._ready, self._why = ready, why

    def seconds_since_progress(self) -> float | None:
        """Seconds since the last progress (None before the loop started)."""
        at = self._progress_at
        return None if at is None else max(0.0, self._clock() - at)

    def stalled(self) -> bool:
        since = self.seconds_since_progress()
        return since is not None and since > self.stall_after_s

    def live(self) -> tuple[bool, str]:
        """``/healthz``: False once stalled; a worker still starting is alive."""
        since = self.seconds_since_progress()
        if since is None:
            return True, "starting"
        if since > self.stall_after_s:
            return False, f"stalled: no progress for {since:.0f}s (events wait)"
        return True, "making progress"

    def ready(self) -> tuple[bool, str]:
        """``/readyz``: joined, nothing restoring, not stalled."""
        if self.stalled():
            return False, self.live()[1]
        return self._ready, self._why
