"""A worker without a broker: the batch driver over in-memory partitions, for replays.

:class:`Replica` is what every replay of the evaluator drives: the same
:class:`~engine.driver.BatchDriver` as a worker, its partitions kept in a
:class:`~core.types.StateView` (plain objects by default, or the worker's
codec bytes, :class:`state.views.CodecStates`), a
:class:`~engine.checkpoint.MemoryCheckpoint` per batch. A batch goes through
the driver's guarded step, its checkpoint commits the states, the model's
gradient step runs as the worker runs it (alongside the commit) and the
driver counts what the batch did, so a replay measures what a worker does.

>>> from model.baselines.popular import MostPopular
>>> from model.data.synthetic import SyntheticStream
>>> replica = Replica(MostPopular(), k=5)
>>> events = list(SyntheticStream(seed=1, n_events=64))
>>> _ = replica.step(events[:32], score=False)
>>> outcome = replica.step(events[32:], score=True)
>>> len(outcome.ranks) == len(outcome.lists) == 32, replica.metrics.events_applied._value.get()
(True, 64.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from prometheus_client import CollectorRegistry

from core.types import Event, StateView, UserState
from engine.batch import PartitionBatch, Source, StepOutcome
from engine.checkpoint import MemoryCheckpoint
from engine.config import DriverConfig, OutputTopics
from engine.driver import BatchDriver
from engine.isolation import StepMode
from engine.metrics import WorkerMetrics
from model.capabilities import Capabilities, RankingModel
from model.refresh import RefreshPolicy
from state.store import StateTransaction
from state.views import CodecStates, MemoryStates

__all__ = ["Replica", "ViewPartition", "REPLAY_TOPIC"]

REPLAY_TOPIC = "replay"
_OUTPUTS = OutputTopics("replay.recommendations", "replay.dead-letter", "")


class _ViewTransaction:
    """A batch's changes to a :class:`ViewPartition`, put into the view on commit."""

    def __init__(self, part: ViewPartition) -> None:
        self._part = part
        self._puts: dict[str, UserState | None] = {}  # None: deleted
        self._offset: int | None = None

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        out = self._part.view.get_many([u for u in user_ids if u not in self._puts])
        for user in user_ids:
            staged = self._puts.get(user)
            if staged is not None:
                out[user] = staged.copy()
        return out

    def put(self, user_id: str, state: UserState) -> None:
        self._puts[user_id] = state

    def delete(self, user_id: str) -> bool:
        had = bool(self.get_many([user_id]))
        self._puts[user_id] = None
        return had

    def set_offset(self, offset: int) -> None:
        self._offset = offset

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        return []  # a replay keeps no changelog

    def commit(self, changelog_offset: int | None = None) -> None:
        self._part.commit(self._puts, self._offset)
        self._puts = {}

    def discard(self) -> None:
        self._puts = {}


class ViewPartition:
    """An input partition whose states live in a :class:`~core.types.StateView`."""

    def __init__(self, view: StateView, topic: str = REPLAY_TOPIC, partition: int = 0) -> None:
        self.view = view
        self.topic, self.partition = topic, partition
        self._offset: int | None = None
        self._users: set[str] = set()

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"

    def last_offset(self) -> int | None:
        return self._offset

    def user_count(self) -> int:
        return len(self._users)

    def claim_ids(self, scheme: bytes) -> None:
        pass  # one replay, one id scheme

    def begin(self) -> StateTransaction:
        return _ViewTransaction(self)

    def commit(self, puts: dict[str, UserState | None], offset: int | None) -> None:
        for user, state in puts.items():
            if state is None:
                self._users.discard(user)
                if isinstance(self.view, MemoryStates | CodecStates):
                    self.view.drop(user)
            else:
                self._users.add(user)
                self.view.put(user, state)
        if offset is not None:
            self._offset = offset


class Replica:
    """One model as a worker runs it, without a broker (module docstring).

    ``states`` builds the partition's state view (default: plain objects in
    memory). ``k``: list length. The driver's refresh passes are off: the
    subscriber replay runs the refresh policy on event time itself.
    """

    def __init__(
        self,
        model: RankingModel,
        k: int = 10,
        states: Callable[[], StateView] = MemoryStates,
    ) -> None:
        self.metrics = WorkerMetrics.create(CollectorRegistry())
        config = DriverConfig(
            events_topic=REPLAY_TOPIC,
            partitions=1,
            k=k,
            refresh=RefreshPolicy(enabled=False),
            refresh_budget_percent=0,
        )
        self.driver = BatchDriver(config, self.metrics)
        self.driver.model = model
        self.part = ViewPartition(states())
        self._offset = -1

    @property
    def model(self) -> RankingModel:
        return self.driver.model

    @property
    def caps(self) -> Capabilities:
        return self.driver.caps

    @property
    def view(self) -> StateView:
        """The states, as the step left them."""
        return self.part.view

    def step(
        self,
        events: Sequence[Event],
        score: bool | Literal["held"] = True,
        learn: bool = True,
    ) -> StepOutcome:
        """One micro-batch through the driver; its outcome: the lists published and,
        when scored, each event's rank and the list it was scored against (in the
        order of ``events``)."""
        batch = PartitionBatch(REPLAY_TOPIC, 0, self._offset + 1, self._offset + len(events))
        for ev in events:
            self._offset += 1
            batch.add(ev, Source(REPLAY_TOPIC, 0, self._offset, None, None, ev.ts))
        batch.messages = len(events)
        checkpoint = MemoryCheckpoint(_OUTPUTS)
        checkpoint.consumed(batch)
        mode = StepMode(score=score, keep_lists=bool(score), learn="later" if learn else False)
        (outcome,) = self.driver.step([(self.part, batch)], checkpoint, mode)
        self.driver.commit(checkpoint.commit)
        self.driver.account(checkpoint)
        if outcome.failed:
            raise RuntimeError(f"the model failed on {len(outcome.failed)} replayed event(s)")
        return outcome

    def close(self) -> None:
        self.driver.close()
