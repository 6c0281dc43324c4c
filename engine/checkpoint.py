"""What one micro-batch produced, staged in one object until it is committed.

A driver stages into a checkpoint everything a batch (or a refresh part)
produced: dead letters, forwarded events, recommendation lists, the changelog
records of each partition's state transaction, any other record the batch must
publish with them (:meth:`Checkpoint.add_record`: e.g. the model's shared
deltas) and the next input offsets. Nothing is produced before
:meth:`Checkpoint.commit`, which a transport implements (the Kafka checkpoints
of :mod:`stream.runtime.checkpoint`: outputs, then offsets, then local state,
in one order whatever the guarantee); :class:`MemoryCheckpoint` commits the
states alone, for replays without a broker.

An erased user's list goes with a tombstone (the producer's key, no value) on
the compacted recommendations topic, before any list of the batch, and their
state with a tombstone in the changelog. Lists and tombstones are keyed by the
message key the producer used (which differs from the stored user id when ids
are pseudonymised, see :mod:`engine.privacy`), and a list's ``user_id`` is
that key too.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace

from core.types import Recommendation
from engine.batch import PartitionBatch, Source, StepOutcome
from engine.config import OutputTopics
from engine.events import Rejected, encode_recommendation
from engine.placement import FORWARDED_FROM
from state.store import StatePartition, StorePartition

__all__ = ["OutputTopics", "Record", "Checkpoint", "MemoryCheckpoint"]


@dataclass(frozen=True, slots=True)
class Record:
    """One output message."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None
    timestamp_ms: int | None = None


class Checkpoint:
    """Everything one micro-batch produced; a transport commits it (module docstring)."""

    def __init__(self, topics: OutputTopics) -> None:
        self._topics = topics
        self._changelog = topics.changelog
        self.records: list[Record] = []
        self.dead_letters: list[tuple[Source, Rejected]] = []
        self.outcomes: list[tuple[StatePartition, StepOutcome]] = []
        # Next input offset per (topic, partition): what the batch consumed up to.
        self.offsets: dict[tuple[str, int], int] = {}
        self.messages = 0  # consumed messages, valid or not
        self.forwarded = 0  # valid events sent on to the partition they belong to
        self.events_erased = 0  # valid events an erasure request of their user followed
        self.event_types: Counter[str] = Counter()  # valid events by type
        self.delivered_ms = 0.0  # when the outputs became visible
        self._changelog_at: dict[int, int] = {}  # changelog partition -> last offset written
        self._reseeded: list[StorePartition] = []

    def consumed(self, batch: PartitionBatch) -> None:
        """The batch covers ``batch``'s partition up to its last offset."""
        self.offsets[(batch.topic, batch.partition)] = batch.last_offset + 1
        self.messages += batch.messages
        self.events_erased += batch.dropped
        self.event_types.update(ev.event for ev in batch.events)

    def dead_letter(self, source: Source, rejected: Rejected) -> None:
        """Send a message aside, bytes unchanged, with its reason in the headers."""
        headers = [("error", rejected.reason.encode()), ("source", source.where.encode())]
        if rejected.detail:  # e.g. which field is missing; helps whoever fixes the producer
            headers.append(("detail", rejected.detail.encode("utf-8", "replace")))
        self.records.append(Record(self._topics.dead_letter, source.key, source.value, headers))
        self.dead_letters.append((source, rejected))

    def forward(self, source: Source, partition: int) -> None:
        """Send an event to the partition its key belongs to: bytes, headers, timestamp kept."""
        headers = [*source.headers, (FORWARDED_FROM, source.where.encode())]
        self.records.append(
            Record(source.topic, source.key, source.value, headers, partition, source.timestamp_ms)
        )
        self.forwarded += 1

    def add(self, part: StatePartition, outcome: StepOutcome, generated_at_ms: int) -> None:
        """One partition's outcome: tombstones, lists, failed events, changelog, state on commit."""
        for source, rejected in outcome.failed:
            self.dead_letter(source, rejected)
        for user in dict.fromkeys(user for user, _ in outcome.erased):
            # Compacted: the erased user's list goes for every subscriber. Lists of
            # the batch come after, so one made from events after the erasure stays.
            key = outcome.key_of(user)
            self.records.append(Record(self._topics.recommendations, key, None))
        if outcome.keys:  # pseudonymised ids: subscribers see the producer's id
            outcome.recommendations = [
                replace(rec, user_id=outcome.key_of(rec.user_id).decode("utf-8"))
                for rec in outcome.recommendations
            ]
        for rec in outcome.recommendations:
            self._publish(rec, generated_at_ms)
        if self._changelog:  # none for replays without a broker
            self._changes(part.partition, outcome.txn.changes())
        self.outcomes.append((part, outcome))

    def add_record(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish one more record with the batch (in its transaction, exactly once)."""
        self.records.append(Record(topic, key, value, headers, partition))

    def reseed(self, part: StorePartition) -> None:
        """Write every state of ``part`` to the changelog again (it was recreated empty)."""
        self._changes(part.partition, list(part.changelog_records()))
        self._reseeded.append(part)

    def _changes(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in records:
            self.records.append(Record(self._changelog, key, value, None, partition))

    def _publish(self, rec: Recommendation, generated_at_ms: int) -> None:
        key, value = encode_recommendation(rec, generated_at_ms)
        self.records.append(Record(self._topics.recommendations, key, value))

    def on_changelog(self, partition: int, offset: int) -> None:
        """A changelog record of ``partition`` was written at ``offset``."""
        if offset > self._changelog_at.get(partition, -1):
            self._changelog_at[partition] = offset

    def commit_state(self) -> None:
        """Write the staged states (and what reseeded partitions' changelogs reached)."""
        for part, outcome in self.outcomes:
            outcome.txn.commit(self._changelog_at.get(part.partition))
        for part in self._reseeded:
            written = self._changelog_at.get(part.partition)
            if written is not None:
                part.apply_changelog([], written)

    def discard(self) -> None:
        """Drop the staged states (the batch will be read again)."""
        for _, outcome in self.outcomes:
            outcome.txn.discard()

    def commit(self) -> None:
        """Make everything staged visible, then write the states (the transport's order)."""
        raise NotImplementedError


class MemoryCheckpoint(Checkpoint):
    """A checkpoint without a broker: commit writes the staged states; records stay here.

    Lists are not encoded (they stay in :attr:`outcomes`); with no changelog
    topic, no changelog records are made either.
    """

    def _publish(self, rec: Recommendation, generated_at_ms: int) -> None:
        pass

    def commit(self) -> None:
        self.delivered_ms = time.time() * 1000.0
        self.commit_state()
