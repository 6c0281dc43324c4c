"""Model failures isolated to the events that cause them.

The runtime calls :meth:`ModelGuard.step` for each partition's part of a
micro-batch. When the model raises, the batch is retried event by event and
the events it still fails on are dead-lettered as ``processing-error``;
``max_in_a_row`` failures in a row raise :class:`ModelError`.

An :class:`~stream.errors.InterestStreamError` (e.g. a
:class:`~state.store.StateStoreError`: unreadable user state, a RocksDB read
that failed) is never isolated: it is about the worker, not the event, so it
stops the worker with one clear line instead of dead-lettering valid events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from model.step import RankingModel, process_batch
from model.types import Recommendation
from stream.errors import InterestStreamError
from stream.events import PROCESSING_ERROR, Rejected

__all__ = ["ModelError", "ModelGuard"]

class ModelError(InterestStreamError):
    """The model keeps failing on valid events: stopping beats dead-lettering everything."""


class ModelGuard:
    """Runs the pure step on one partition's batch, isolating model failures.

    ``warn(kind, text, exc)`` logs (throttled by the caller); ``dead_letter(msg,
    rejected)`` sends one message aside.
    """

    def __init__(self, k: int, warn: Callable[[str, str, BaseException], None],
                 dead_letter: Callable[[Any, Rejected], None],
                 max_in_a_row: int = 50) -> None:
        self.k = k
        self.max_in_a_row = max_in_a_row
        self._warn = warn
        self._dead_letter = dead_letter
        self.failures_in_a_row = 0

    def step(self, b: Any, model: RankingModel) -> None:
        """The pure step on ``b`` (the runtime's per-partition batch), in place."""
        try:
            b.take(process_batch(b.events, b.txn, model, self.k))
            self.failures_in_a_row = 0
            return
        except InterestStreamError:
            raise  # the worker's own trouble (state store, ...): not the events' fault
        except Exception as exc:  # any model bug: the events are retried one by one below
            self._warn(f"model {type(exc).__name__}",
                       f"model failed on a batch of {b.part.name} ({type(exc).__name__}: "
                       f"{exc}); retrying event by event", exc)
        b.txn.discard()
        b.txn = b.part.begin()
        b.txn.set_offset(b.offset)
        events, msgs, stamps = b.events, b.msgs, b.kafka_ts
        b.events, b.msgs, b.kafka_ts = [], [], []
        latest: dict[str, Recommendation] = {}
        for ev, msg, ts in zip(events, msgs, stamps, strict=True):
            try:
                result = process_batch([ev], b.txn, model, self.k)
            except InterestStreamError:
                raise
            except Exception as exc:  # this event is what the model cannot take
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= self.max_in_a_row:
                    raise ModelError(f"the model failed on {self.failures_in_a_row} events "
                                     f"in a row; last: {type(exc).__name__}: {exc}") from exc
                self._dead_letter(msg, Rejected(PROCESSING_ERROR, type(exc).__name__))
                continue
            self.failures_in_a_row = 0
            b.events.append(ev)
            b.msgs.append(msg)
            b.kafka_ts.append(ts)
            b.scored += result.scored
            b.hits += sum(r is not None for r in result.ranks)
            latest.update((rec.user_id, rec) for rec in result.recommendations)
        b.recs = list(latest.values())  # still one list per touched user
