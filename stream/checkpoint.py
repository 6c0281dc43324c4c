"""The commit order of a micro-batch, in one object.

A runtime polls, decodes, runs the guarded step and hands everything the batch
produced to a :class:`Checkpoint`: dead letters, recommendation lists and each
partition's state transaction. :meth:`Checkpoint.commit` then commits them in
numbered steps, so the loop that polls never knows which guarantee is on:

at-least-once (outputs), exactly-once (state):
    1. outputs were produced while the batch went (lists, dead letters);
    2. flush: every output is acknowledged by the broker; if one is not, a
       :class:`~core.errors.KafkaClientError` stops here and nothing below is
       committed (after a restart the batch is processed again);
    3. state: each partition's transaction (user states + last offset) in one
       RocksDB write;
    4. group offsets, asynchronously (informational: the state holds the offset,
       and on assignment the worker resumes from it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from core.errors import KafkaClientError
from core.types import Recommendation
from state.store import StorePartition
from stream.batch import Source, StepOutcome
from stream.config import TopicsConfig
from stream.events import Rejected, encode_recommendation

__all__ = ["Outputs", "Checkpoint"]

log = logging.getLogger("interest_stream.worker")

_FLUSH_SLICE_S = 1.0
_STOP_GRACE_S = 15.0  # how long a stopping worker waits for unacknowledged outputs


class Outputs:
    """A confluent-kafka producer as the checkpoint uses it.

    ``produce`` waits while the local queue is full; delivery failures are
    collected and raised by :meth:`flush` as one :class:`KafkaClientError`.
    ``stopping`` bounds how long a flush may wait once the worker is stopping.
    """

    def __init__(self, producer: Any, stopping: threading.Event) -> None:
        self.producer = producer
        self.stopping = stopping
        self._errors: list[str] = []

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, value, key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:
                # Local queue full: let librdkafka drain it, then retry.
                self.producer.poll(0.05)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()} ({err.name()})")

    def poll(self) -> None:
        self.producer.poll(0)

    def flush(self) -> None:
        """Wait until every output is acknowledged; raise if one failed."""
        waited = 0.0
        while (left := self.producer.flush(_FLUSH_SLICE_S)) > 0:
            waited += _FLUSH_SLICE_S
            if int(waited) % 10 == 1:
                log.warning(
                    "waiting %.0fs for the broker to acknowledge %d output(s)", waited, left
                )
            if self.stopping.is_set() and waited >= _STOP_GRACE_S:
                raise KafkaClientError(
                    f"stopping with {left} output(s) the broker has not acknowledged; "
                    "their batch was not committed and will be processed again on restart"
                )
        if self._errors:
            first, n = self._errors[0], len(self._errors)
            self._errors.clear()
            raise KafkaClientError(f"{n} output message(s) could not be delivered: {first}")


class Checkpoint:
    """Everything one micro-batch produced, committed in order (see the module docstring)."""

    def __init__(
        self,
        outputs: Outputs,
        topics: TopicsConfig,
        commit_offsets: Callable[[list[StorePartition]], None],
    ) -> None:
        self._outputs = outputs
        self._topics = topics
        self._commit_offsets = commit_offsets
        self.dead_letters: list[tuple[Source, Rejected]] = []
        self.outcomes: list[tuple[StorePartition, StepOutcome]] = []
        self.delivered_ms = 0.0  # when the outputs were acknowledged

    def dead_letter(self, source: Source, rejected: Rejected) -> None:
        """Send a message aside, bytes unchanged, with its reason in the headers."""
        headers = [("error", rejected.reason.encode()), ("source", source.where.encode())]
        if rejected.detail:  # e.g. which field is missing; helps whoever fixes the producer
            headers.append(("detail", rejected.detail.encode("utf-8", "replace")))
        self._outputs.produce(self._topics.dead_letter, source.key, source.value, headers)
        self.dead_letters.append((source, rejected))

    def add(self, part: StorePartition, outcome: StepOutcome, generated_at_ms: int) -> None:
        """One partition's outcome: its lists and failed events now, its state on commit."""
        for source, rejected in outcome.failed:
            self.dead_letter(source, rejected)
        for rec in outcome.recommendations:
            self._publish(rec, generated_at_ms)
        self.outcomes.append((part, outcome))

    def _publish(self, rec: Recommendation, generated_at_ms: int) -> None:
        key, value = encode_recommendation(rec, generated_at_ms)
        self._outputs.produce(self._topics.recommendations, key, value)

    def commit(self) -> None:
        """Steps 2-4 of the module docstring."""
        self._outputs.flush()
        self.delivered_ms = time.time() * 1000.0
        for _, outcome in self.outcomes:
            outcome.txn.commit()
        self._commit_offsets([part for part, _ in self.outcomes])
