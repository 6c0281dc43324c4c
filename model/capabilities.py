"""What a model must do, and what it may do, declared as protocols and checked once.

Every model the worker or the evaluator runs is a :class:`RankingModel`: it
has a registry ``name`` and a ``version`` and ranks a user (``rank``).
Everything else is optional and named here, one protocol per capability
(River's ``base.Estimator`` family is the model of this):

==================================  ================================================
:class:`RanksInBulk`                ranks many users in one call (``rank_many``)
:class:`Learns`                     learns from a batch of events (``learn_many``)
:class:`LearnsLater`                splits learning: what must go out with the batch
                                    now, the gradient step later (``learn_later``)
:class:`Freezes`                    stops learning on request (``freeze``)
:class:`ReportsLoss`                its last training step's loss (``last_loss``)
:class:`KeepsUserParts`             keeps parts of a user's state (``update_state``)
:class:`ReadsPartOfState`           says what it reads of a state (``state_before``)
:class:`TakesItems`                 takes item metadata (``add_item_metadata``,
                                    ``await_content``)
:class:`Explains`                   the recent items behind each list (``explain_many``)
:class:`ForgetsUsers`               keeps data per user elsewhere (``forget_users``)
:class:`WarmsUp`                    loads what loads at first use early (``warm_up``)
:class:`~model.sync.Shared`         shares what it learns with its copies
:class:`~model.persist.Persistent`  saves and loads itself
==================================  ================================================

:func:`capabilities` checks a model against all of them with ``isinstance``,
once: the worker logs the result at start-up (:meth:`Capabilities.describe`)
and the step, the batch driver and the replays use its fields, never
``getattr`` on the model.

>>> from model.baselines.popular import MostPopular
>>> caps = capabilities(MostPopular())
>>> caps.learns is not None, caps.learns_later is None
(True, True)
>>> caps.describe()
'popular popular-nodecay-2: ranks in bulk, learns, reads part of a state, persists'
>>> caps.rank_many(["u1"], [UserState()], 3)  # nothing learnt yet: an empty list
[[]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from core.types import Event, UserState
from model.items import ItemMeta
from model.persist import Persistent
from model.sync import Shared

__all__ = [
    "RankingModel",
    "RanksInBulk",
    "Learns",
    "LearnsLater",
    "Freezes",
    "ReportsLoss",
    "KeepsUserParts",
    "ReadsPartOfState",
    "TakesItems",
    "Explains",
    "ForgetsUsers",
    "WarmsUp",
    "Capabilities",
    "capabilities",
]

Ranked = list[tuple[str, float]]


@runtime_checkable
class RankingModel(Protocol):
    """What every model does: rank a user (the only required capability)."""

    name: str  # registry name (model.factory)
    version: str

    def rank(self, user_id: str, state: UserState, k: int) -> Ranked:
        """Top-``k`` (item_id, score), best first, never an item the state excludes."""
        ...


@runtime_checkable
class RanksInBulk(Protocol):
    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[Ranked]:
        """:meth:`RankingModel.rank` for many users in one call (one matrix product)."""
        ...


@runtime_checkable
class Learns(Protocol):
    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        """Learn from ``events``; ``before[i]`` is the user's state before ``events[i]``."""
        ...


@runtime_checkable
class Freezes(Protocol):
    def freeze(self) -> None:
        """Stop learning from the stream (the evaluator's static baselines)."""
        ...


@runtime_checkable
class LearnsLater(Protocol):
    def learn_later(
        self, events: Sequence[Event], before: Sequence[UserState]
    ) -> Callable[[], None]:
        """Do at once what must go out with the batch; return the call that finishes
        learning (the gradient step), taken before the model is used again."""
        ...


@runtime_checkable
class ReportsLoss(Protocol):
    @property
    def last_loss(self) -> float | None:
        """The loss of the last training step (NaN or infinite when training diverged)."""
        ...


@runtime_checkable
class KeepsUserParts(Protocol):
    def update_state(self, state: UserState, ev: Event) -> None:
        """Update the model-owned parts of ``state`` (e.g. a long-term vector) after ``ev``."""
        ...


@runtime_checkable
class ReadsPartOfState(Protocol):
    def state_before(self, state: UserState) -> UserState:
        """A copy of what ranking and learning read of ``state``, as it is now."""
        ...


@runtime_checkable
class TakesItems(Protocol):
    def add_item_metadata(self, items: Sequence[ItemMeta]) -> None:
        """Take item metadata (encoded in the background: never waits)."""
        ...

    def await_content(self) -> None:
        """Wait until the metadata given so far is in (replays and tests)."""
        ...


@runtime_checkable
class Explains(Protocol):
    def explain_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], lists: Sequence[Ranked]
    ) -> list[tuple[str, ...]]:
        """The recent items behind each list."""
        ...


@runtime_checkable
class ForgetsUsers(Protocol):
    def forget_users(self, user_ids: Sequence[str]) -> None:
        """Drop what the model keeps about these users (they were erased)."""
        ...


@runtime_checkable
class WarmsUp(Protocol):
    def warm_up(self) -> None:
        """Load what loads at first use, so the first batch does not wait for it."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """A model and what it can do; a field is the model itself or None."""

    model: RankingModel
    ranks_in_bulk: RanksInBulk | None
    learns: Learns | None
    learns_later: LearnsLater | None
    freezes: Freezes | None
    reports_loss: ReportsLoss | None
    keeps_user_parts: KeepsUserParts | None
    reads_part_of_state: ReadsPartOfState | None
    takes_items: TakesItems | None
    explains: Explains | None
    forgets_users: ForgetsUsers | None
    warms_up: WarmsUp | None
    shared: Shared | None
    persistent: Persistent | None

    def describe(self) -> str:
        """One line: the model and its capabilities, for the worker's start-up log."""
        names = [
            label
            for label, have in (
                ("ranks in bulk", self.ranks_in_bulk),
                ("learns", self.learns),
                ("learns alongside the commit", self.learns_later),
                ("freezes", self.freezes),
                ("reports its loss", self.reports_loss),
                ("keeps user-state parts", self.keeps_user_parts),
                ("reads part of a state", self.reads_part_of_state),
                ("takes item metadata", self.takes_items),
                ("explains", self.explains),
                ("forgets users", self.forgets_users),
                ("warms up", self.warms_up),
                ("shares", self.shared),
                ("persists", self.persistent),
            )
            if have is not None
        ]
        model = self.model
        return f"{model.name} {model.version}: {', '.join(names) or 'ranks only'}"

    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[Ranked]:
        """The model's lists for ``user_ids``: one bulk call when it ranks in bulk."""
        if self.ranks_in_bulk is not None:
            return self.ranks_in_bulk.rank_many(user_ids, states, k)
        rank = self.model.rank
        return [rank(u, st, k) for u, st in zip(user_ids, states, strict=True)]

    def explain_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], lists: Sequence[Ranked]
    ) -> list[tuple[str, ...]]:
        """The model's explanations of ``lists`` (empty ones when it does not explain)."""
        if self.explains is None:
            return [()] * len(user_ids)
        return [tuple(why) for why in self.explains.explain_many(user_ids, states, lists)]


def capabilities(model: Any) -> Capabilities:
    """Check ``model`` against every capability (TypeError if it cannot even rank)."""
    if not isinstance(model, RankingModel):
        raise TypeError(
            f"{type(model).__name__} is not a ranking model: it needs name, version and "
            "rank(user_id, state, k)"
        )

    def has(protocol: type) -> Any:
        return model if isinstance(model, protocol) else None

    return Capabilities(
        model=model,
        ranks_in_bulk=has(RanksInBulk),
        learns=has(Learns),
        learns_later=has(LearnsLater),
        freezes=has(Freezes),
        reports_loss=has(ReportsLoss),
        keeps_user_parts=has(KeepsUserParts),
        reads_part_of_state=has(ReadsPartOfState),
        takes_items=has(TakesItems),
        explains=has(Explains),
        forgets_users=has(ForgetsUsers),
        warms_up=has(WarmsUp),
        shared=has(Shared),
        persistent=has(Persistent),
    )
