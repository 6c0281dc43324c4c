"""The model's gradient steps off the lists' path, and a heap the collector leaves alone.

:class:`Learner` is the one thread that takes the model's gradient steps while a
batch commits (see :meth:`engine.driver.BatchDriver.commit`);
:func:`settle_heap` takes what start-up built out of the cyclic collector's
full passes.
"""

from __future__ import annotations

import atexit
import gc
import queue
import threading
from collections.abc import Callable

__all__ = ["Learner", "settle_heap", "SETTLE_AFTER_BATCHES"]

_settled = False  # the heap was settled once: thawed at exit (see settle_heap)
# Committed batches after which the heap is settled a second time.
SETTLE_AFTER_BATCHES = 200


class Learner:
    """One daemon thread that takes the model's gradient steps, one at a time.

    The same thread every batch: torch keeps per-thread state (autograd, its
    thread pools) that a new thread per batch would set up again each time.
    """

    def __init__(self) -> None:
        # (job, set when it returned); a None job ends the thread
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None] | None, threading.Event]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> threading.Event:
        """Run ``job`` on the learner thread; the event is set once it returned."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="interest-learn", daemon=True)
            self._thread.start()
        done = threading.Event()
        self._jobs.put((job, done))
        return done

    def close(self) -> None:
        """End the thread once the jobs before are done (a later submit starts another)."""
        if self._thread is not None:
            self._jobs.put((None, threading.Event()))
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            job, done = self._jobs.get()
            if job is None:
                return
            try:
                job()  # catches what it raises itself (see Pipeline.learn_alongside)
            finally:
                done.set()


def settle_heap() -> None:
    """Leave what start-up built out of the cyclic garbage collector's full passes.

    Modules, the model and its tables are ~400,000 tracked objects that live as
    long as the process; a full collection walked them all, ~100 ms on the 2-core
    box, several times a minute under load (the worst event-to-list latencies).
    Called when a worker starts, and again after its first
    ``SETTLE_AFTER_BATCHES`` batches (what they built to stay: modules imported
    and kernels compiled at first use, grown tables; ~50,000 objects, 12-20 ms a
    full pass every few seconds at 2,000 events/s, ~1 ms after). Each worker a
    process starts settles its own: a second worker with a model of another
    kind left ~140,000 objects to every full pass and drained a backlog ~25%
    slower. What is frozen is still freed when its last reference goes, only
    cycles among it are not (until exit, which thaws it so that extension
    modules see their objects collected).
    """
    global _settled
    if not _settled:
        atexit.register(gc.unfreeze)
        _settled = True
    gc.collect()
    gc.freeze()
