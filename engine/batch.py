"""One input partition's share of a micro-batch, as plain data (no Kafka client objects).

Every runtime turns the messages it consumed into :class:`Source` records and
groups the valid events and erasure requests per partition in a
:class:`PartitionBatch`; the guarded step (:mod:`engine.isolation`) turns that
into a :class:`StepOutcome` and the checkpoint (:mod:`stream.runtime.checkpoint`)
commits it. Nothing here knows which Kafka client read the messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from core.types import Erasure, Event, Recommendation, UserState
from engine.events import Rejected
from engine.privacy import UserIds
from state.store import StateTransaction

__all__ = ["Source", "PartitionBatch", "StepOutcome", "RoutedStates"]


@dataclass(frozen=True, slots=True)
class Source:
    """Where one consumed message came from, and its bytes (for dead letters)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # the Kafka message timestamp, when it has one
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def where(self) -> str:
        """``topic/partition/offset``: the dead-letter ``source`` header."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(slots=True)
class PartitionBatch:
    """The valid events one input partition contributes to a micro-batch.

    ``sources[i]`` is the message ``events[i]`` was decoded from; the batch
    covers input offsets ``first_offset`` to ``last_offset``, valid or not
    (messages that were dead-lettered count too: they are done with).
    ``erased`` are the users to forget before the events are applied (see
    :meth:`erase`); ``keys`` maps a stored user id to the message key its
    producer used, when the two differ (pseudonymised ids): lists and
    tombstones are published under that key.
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    events: list[Event] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    messages: int = 0  # consumed, valid or not
    forwarded: int = 0  # valid events that belong to another partition (sent there)
    erased: list[str] = field(default_factory=list)  # one per request, repeats included
    dropped: int = 0  # events an erasure request of their user followed (never applied)
    keys: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"

    def admit(self, decoded: Event | Erasure, source: Source, ids: UserIds) -> None:
        """Take a valid event or erasure request, its user id made the stored one by ``ids``."""
        user = ids.of(decoded.user_id)
        if user != decoded.user_id and source.key:
            self.keys[user] = source.key  # lists go out under the producer's key
        if isinstance(decoded, Erasure):
            self.erase(user)
        else:
            self.add(decoded if user == decoded.user_id else replace(decoded, user_id=user), source)

    def add(self, event: Event, source: Source) -> None:
        """Append a valid event."""
        self.events.append(event)
        self.sources.append(source)

    def erase(self, user_id: str) -> None:
        """Forget ``user_id``: their state goes before this batch's events are applied.

        Their events earlier in this batch are dropped (never applied, never
        learnt from): they are part of what the user asked to be forgotten.
        Their events after the request start a new state.
        """
        keep = [i for i, ev in enumerate(self.events) if ev.user_id != user_id]
        if len(keep) < len(self.events):
            self.dropped += len(self.events) - len(keep)
            self.events = [self.events[i] for i in keep]
            self.sources = [self.sources[i] for i in keep]
        self.erased.append(user_id)


@dataclass(slots=True)
class StepOutcome:
    """What the guarded step made of one :class:`PartitionBatch`.

    ``txn`` holds the new user states and the batch's last offset, to be
    committed by the checkpoint after the outputs; ``applied[i]`` is the
    source of each event folded into state; ``failed`` are the events the
    model could not take (dead-lettered as ``processing-error``); ``learnt``:
    the model's ``learn_many`` returned for the batch or some of its events;
    ``erased``: (user id, had a state) of each user the batch erased;
    ``keys``: the batch's :attr:`PartitionBatch.keys`; ``refresh``: the
    outcome of a refresh part, accounted for by the refresher, not as a batch.
    """

    txn: StateTransaction
    recommendations: list[Recommendation] = field(default_factory=list)
    applied: list[Source] = field(default_factory=list)
    failed: list[tuple[Source, Rejected]] = field(default_factory=list)
    scored: int = 0
    hits: int = 0
    learnt: bool = False
    erased: list[tuple[str, bool]] = field(default_factory=list)
    keys: dict[str, bytes] = field(default_factory=dict)
    refresh: bool = False  # lists of a refresh part (engine.refresh), no events
    # per applied event, when the step kept them (replays): its rank and the list scored
    ranks: list[int | None] = field(default_factory=list)
    lists: list[list[str]] = field(default_factory=list)

    def key_of(self, user_id: str) -> bytes:
        """The message key lists and tombstones of ``user_id`` are published under."""
        return self.keys.get(user_id) or user_id.encode("utf-8")


class RoutedStates:
    """The state view of a step over several partitions: each user's own transaction."""

    def __init__(self, txns: dict[str, StateTransaction]) -> None:
        self._txns = txns

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        groups: dict[int, tuple[StateTransaction, list[str]]] = {}
        for user in user_ids:
            txn = self._txns[user]
            groups.setdefault(id(txn), (txn, []))[1].append(user)
        found: dict[str, UserState] = {}
        for txn, users in groups.values():
            found.update(txn.get_many(users))
        return {user: found[user] for user in user_ids if user in found}

    def put(self, user_id: str, state: UserState) -> None:
        self._txns[user_id].put(user_id, state)
