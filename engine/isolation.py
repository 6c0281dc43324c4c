"""Model failures isolated to the events that cause them.

The runtime calls :meth:`ModelGuard.step_many` with every partition's part of
a micro-batch: one model call for all of them, each user's state in its own
partition's transaction. When the model raises, each partition's events are
retried event by event and the events it still fails on are dead-lettered as
``processing-error``;
:data:`MAX_MODEL_FAILURES` failures in a row raise :class:`ModelError`.

Two rules keep the isolation honest:

* an :class:`~core.errors.InterestStreamError` (e.g. a
  :class:`~state.store.StateStoreError`: unreadable user state, a RocksDB read
  that failed) is about the worker, not the event: it stops the worker with
  one clear line instead of dead-lettering valid events;
* warnings and errors name the partition and the exception's type and line,
  not its message (a model's ``KeyError`` names the user it failed on), unless
  ``log_ids`` is on (see :mod:`engine.privacy`);
* a retry never learns twice: if the failed call got as far as learning (the
  model's ``learn_many`` or ``learn_later`` returned, or a torch optimiser
  stepped inside it), the events are retried with learning off. A failure before learning started is
  retried with learning on, so an event the model cannot learn from is still
  found and dead-lettered. (A model without a torch optimiser that fails half
  way through ``learn_many`` cannot be told apart from one that failed first.)

Erasures come first: the users a batch erases are deleted in its state
transaction before its events are applied (their earlier events in the batch
were dropped, see :meth:`engine.batch.PartitionBatch.erase`), and a model
that keeps data per user (a ``forget_users(user_ids)`` method) forgets them.
The step never sees an erasure request, so nothing learns from one.

A model with ``learn_later`` ranks the batch's lists before its gradient step
on the batch; :meth:`ModelGuard.finish_learning` takes the steps the last
:meth:`ModelGuard.step_many` left (the worker runs it while the batch's
checkpoint commits). A failure there cannot be retried event by event (the
lists are out): it is a warning, and the model goes on without that step.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from core.errors import InterestStreamError
from core.types import BatchResult, Event, Recommendation, UserState
from engine.batch import PartitionBatch, RoutedStates, StepOutcome
from engine.events import PROCESSING_ERROR, Rejected
from engine.privacy import exception_text
from model.capabilities import Capabilities
from model.step import process_batch
from state.store import StatePartition, StateTransaction

__all__ = ["ModelError", "ModelGuard", "StepMode", "MAX_MODEL_FAILURES"]

MAX_MODEL_FAILURES = 50  # valid events the model may fail on in a row before the worker stops

_steps = threading.local()  # optimiser steps taken on this thread (see _install_step_hook)
_hooked = False
_hook_lock = threading.Lock()


@dataclass(frozen=True)
class StepMode:
    """How a step scores and learns: the worker's way by default.

    ``score="held"``: each event against the list its user holds (the worker's
    online hit rate); ``True``: against a list ranked now (the evaluator's pull
    view). ``keep_lists``: the outcome keeps each event's rank and list.
    ``learn="later"``: the gradient step waits for :meth:`ModelGuard.finish_learning`.
    ``version``: what the lists say they were ranked with (None: the model's version).
    """

    score: bool | Literal["held"] = "held"
    keep_lists: bool = False
    learn: bool | Literal["later"] = "later"
    version: str | None = None


class ModelError(InterestStreamError):
    """The model keeps failing on valid events: stopping beats dead-lettering everything."""


def _install_step_hook() -> None:
    # A global post-step hook sees every torch optimiser, whatever the model calls it;
    # the count is per thread, so workers sharing a process do not see each other's.
    global _hooked
    if "torch" not in sys.modules or _hooked:
        return  # without torch imported no model can hold a torch optimiser
    from torch.optim.optimizer import register_optimizer_step_post_hook

    with _hook_lock:
        if not _hooked:

            def count(optimizer: Any, args: Any, kwargs: Any) -> None:
                _steps.n = getattr(_steps, "n", 0) + 1

            register_optimizer_step_post_hook(count)
            _hooked = True


class _Watched:
    """The model's learning as the pure step sees it, remembering how far it got."""

    def __init__(self, caps: Capabilities) -> None:
        self._caps = caps
        self.learned = False  # learning returned, or an optimiser stepped inside it
        # The step learns through this object: the model's other capabilities as they are.
        self.caps = replace(
            caps,
            learns=self if caps.learns is not None else None,
            learns_later=self if caps.learns_later is not None else None,
        )

    def learn_later(
        self, events: Sequence[Event], before: Sequence[UserState]
    ) -> Callable[[], None]:
        assert self._caps.learns_later is not None
        finish = self._caps.learns_later.learn_later(events, before)
        self.learned = True
        return finish

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        assert self._caps.learns is not None
        start = getattr(_steps, "n", 0)
        try:
            self._caps.learns.learn_many(events, before)
        finally:
            self.learned = getattr(_steps, "n", 0) > start
        self.learned = True


class ModelGuard:
    """Runs the pure step on one partition's batch, isolating model failures.

    ``warn(kind, text, exc)`` logs (throttled by the caller; ``exc`` None: no
    traceback). Failed events come back in :attr:`StepOutcome.failed` for the
    checkpoint to dead-letter. ``log_ids``: warnings may carry exception
    messages and tracebacks, which can name users.
    """

    def __init__(
        self,
        k: int,
        warn: Callable[[str, str, BaseException | None], None],
        max_in_a_row: int = MAX_MODEL_FAILURES,
        log_ids: bool = False,
    ) -> None:
        self.k = k
        self.max_in_a_row = max_in_a_row
        self.log_ids = log_ids
        self._warn = warn
        self.failures_in_a_row = 0
        self._later: list[Callable[[], None]] = []

    @property
    def learning_pending(self) -> bool:
        """The last step left gradient steps for :meth:`finish_learning`."""
        return bool(self._later)

    def drop_learning(self) -> None:
        """Forget the steps left by a batch that will not commit (it is read again)."""
        self._later = []

    def finish_learning(self) -> int:
        """Take the gradient steps the last :meth:`step_many` left; returns how many failed.

        The batch's lists and states are already out, so a failure is logged and
        the model goes on without that step (an :class:`InterestStreamError` is
        the worker's own trouble and is raised).
        """
        later, self._later = self._later, []
        failed = 0
        for finish in later:
            try:
                finish()
            except InterestStreamError:
                raise
            except Exception as exc:
                failed += 1
                self._warn(
                    f"model {type(exc).__name__}",
                    "model failed to learn from a committed batch "
                    f"({exception_text(exc, self.log_ids)}); going on without that step",
                    exc if self.log_ids else None,
                )
        return failed

    def step(self, batch: PartitionBatch, part: StatePartition, caps: Capabilities) -> StepOutcome:
        """The pure step on ``batch`` against ``part``'s state; nothing is committed here."""
        return self.step_many([(part, batch)], caps)[0]

    def step_many(
        self,
        batches: Sequence[tuple[StatePartition, PartitionBatch]],
        caps: Capabilities,
        mode: StepMode | None = None,
    ) -> list[StepOutcome]:
        """The pure step on every partition's batch in one model call; nothing is committed.

        A micro-batch is one step of the model whichever partitions its events
        came from (as in the evaluator): a model call has a fixed cost (one
        optimiser step, one ranking pass), which paid per partition made small
        batches up to twice as expensive per event. Each user's state is read
        from and written to its own partition's transaction. When the model
        fails, each partition's events are retried one by one as before.
        ``mode``: how events are scored and learnt (default: the worker's).
        """
        mode = mode or StepMode()
        _install_step_hook()
        if self._later:  # a caller that did not finish the last batch's learning: now
            self.finish_learning()
        outs: list[StepOutcome] = []
        forget = caps.forgets_users
        for part, batch in batches:
            txn, erased = self._begin(part, batch)
            outs.append(StepOutcome(txn, erased=erased, keys=batch.keys))
            if batch.erased and forget is not None:
                forget.forget_users(list(batch.erased))
        todo = [i for i, (_, batch) in enumerate(batches) if batch.events]
        if not todo:
            return outs
        owner: dict[str, int] = {}
        for i in todo:
            for ev in batches[i][1].events:
                if owner.setdefault(ev.user_id, i) != i:  # a user on two partitions: keep apart
                    return [
                        self._step_one(batches[j], outs[j], caps, mode) if j in todo else outs[j]
                        for j in range(len(batches))
                    ]
        events = [ev for i in todo for ev in batches[i][1].events]
        watched = _Watched(caps)
        view = RoutedStates({user: outs[i].txn for user, i in owner.items()})
        try:
            result = self._process(events, view, watched, mode)
        except InterestStreamError:
            raise  # the worker's own trouble (state store, ...): not the events' fault
        except Exception as exc:  # any model bug: the events are retried one by one below
            learn = not watched.learned
            names = ", ".join(batches[i][1].name for i in todo)
            self._warn(
                f"model {type(exc).__name__}",
                f"model failed on a batch of {names} ({exception_text(exc, self.log_ids)}); "
                "retrying event by event"
                f"{'' if learn else ' without learning (the batch was learnt)'}",
                exc if self.log_ids else None,
            )
            for i in todo:
                part, batch = batches[i]
                outs[i].txn.discard()
                outs[i].txn, _ = self._begin(part, batch)
                self._one_by_one(batch, outs[i], caps, mode, learn)
            return outs
        self.failures_in_a_row = 0
        if result.finish_learning is not None:
            self._later.append(result.finish_learning)
        at = 0
        for i in todo:
            batch, out = batches[i][1], outs[i]
            n = len(batch.events)
            self._scored(out, result, at, n, mode)
            at += n
            out.learnt = mode.learn is not False
            out.applied = list(batch.sources)
        for rec in result.recommendations:
            outs[owner[rec.user_id]].recommendations.append(rec)
        return outs

    def _process(
        self, events: Sequence[Event], view: Any, watched: _Watched, mode: StepMode
    ) -> BatchResult:
        return process_batch(
            events,
            view,
            watched.caps.model,
            self.k,
            score=mode.score,
            keep_lists=mode.keep_lists,
            learn=mode.learn,
            caps=watched.caps,
            version=mode.version,
        )

    @staticmethod
    def _scored(out: StepOutcome, result: BatchResult, at: int, n: int, mode: StepMode) -> None:
        ranks = result.ranks[at : at + n]
        out.scored += n if result.scored else 0
        out.hits += sum(r is not None for r in ranks)
        if mode.keep_lists:
            out.ranks.extend(ranks)
            out.lists.extend(result.lists[at : at + n])

    def _step_one(
        self,
        item: tuple[StatePartition, PartitionBatch],
        out: StepOutcome,
        caps: Capabilities,
        mode: StepMode,
    ) -> StepOutcome:
        """One partition's batch in a model call of its own (``out`` already begun)."""
        part, batch = item
        watched = _Watched(caps)
        try:
            result = self._process(batch.events, out.txn, watched, mode)
        except InterestStreamError:
            raise
        except Exception as exc:
            learn = not watched.learned
            self._warn(
                f"model {type(exc).__name__}",
                f"model failed on a batch of {batch.name} ({exception_text(exc, self.log_ids)}); "
                "retrying event by event"
                f"{'' if learn else ' without learning (the batch was learnt)'}",
                exc if self.log_ids else None,
            )
            out.txn.discard()
            out.txn, _ = self._begin(part, batch)
            self._one_by_one(batch, out, caps, mode, learn)
            return out
        self.failures_in_a_row = 0
        if result.finish_learning is not None:
            self._later.append(result.finish_learning)
        out.learnt = mode.learn is not False
        out.recommendations = result.recommendations
        out.applied = list(batch.sources)
        self._scored(out, result, 0, len(batch.events), mode)
        return out

    def _one_by_one(
        self,
        batch: PartitionBatch,
        out: StepOutcome,
        caps: Capabilities,
        mode: StepMode,
        learn: bool,
    ) -> None:
        """Retry ``batch`` event by event in ``out``'s fresh transaction; dead-letter failures."""
        latest: dict[str, Recommendation] = {}
        one = replace(mode, learn=mode.learn if learn else False)
        for ev, src in zip(batch.events, batch.sources, strict=True):
            try:
                result = process_batch(
                    [ev],
                    out.txn,
                    caps.model,
                    self.k,
                    score=one.score,
                    keep_lists=one.keep_lists,
                    learn=one.learn,
                    caps=caps,
                    version=one.version,
                )
            except InterestStreamError:
                raise
            except Exception as exc:  # this event is what the model cannot take
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= self.max_in_a_row:
                    raise ModelError(
                        f"the model failed on {self.failures_in_a_row} events "
                        f"in a row; last: {exception_text(exc, self.log_ids)}"
                    ) from exc
                out.failed.append((src, Rejected(PROCESSING_ERROR, type(exc).__name__)))
                continue
            self.failures_in_a_row = 0
            if result.finish_learning is not None:
                result.finish_learning()  # one event at a time: learnt before the next
            out.learnt = out.learnt or learn
            out.applied.append(src)
            self._scored(out, result, 0, 1, mode)
            latest.update((rec.user_id, rec) for rec in result.recommendations)
        out.recommendations = list(latest.values())  # still one list per touched user

    @staticmethod
    def _begin(
        part: StatePartition, batch: PartitionBatch
    ) -> tuple[StateTransaction, list[tuple[str, bool]]]:
        """A transaction for ``batch``: its offset set, its erased users deleted."""
        txn = part.begin()
        txn.set_offset(batch.last_offset)
        erased = [(user, txn.delete(user)) for user in batch.erased]
        return txn, erased
