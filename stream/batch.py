"""One input partition's share of a micro-batch, as plain data (no Kafka client objects).

Every runtime turns the messages it consumed into :class:`Source` records and
groups the valid events per partition in a :class:`PartitionBatch`; the guarded
step (:mod:`stream.isolation`) turns that into a :class:`StepOutcome` and the
checkpoint (:mod:`stream.checkpoint`) commits it. Nothing here knows which
Kafka client read the messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.types import Event, Recommendation
from state.store import PartitionTransaction
from stream.events import Rejected

__all__ = ["Source", "PartitionBatch", "StepOutcome"]


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
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    events: list[Event] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    messages: int = 0  # consumed, valid or not
    forwarded: int = 0  # valid events that belong to another partition (sent there)

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(slots=True)
class StepOutcome:
    """What the guarded step made of one :class:`PartitionBatch`.

    ``txn`` holds the new user states and the batch's last offset, to be
    committed by the checkpoint after the outputs; ``applied[i]`` is the
    source of each event folded into state; ``failed`` are the events the
    model could not take (dead-lettered as ``processing-error``); ``learnt``:
    the model's ``learn_many`` returned for the batch or some of its events.
    """

    txn: PartitionTransaction
    recommendations: list[Recommendation] = field(default_factory=list)
    applied: list[Source] = field(default_factory=list)
    failed: list[tuple[Source, Rejected]] = field(default_factory=list)
    scored: int = 0
    hits: int = 0
    learnt: bool = False
