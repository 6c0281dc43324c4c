"""Plain values shared by the pure step, the stores, the runtimes and the evaluator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = [
    "EVENT_TYPES",
    "EVENT_INDEX",
    "TRIGGERS",
    "Event",
    "Erasure",
    "Recommendation",
    "BatchResult",
    "StateView",
    "UserState",
]

EVENT_TYPES: tuple[str, ...] = ("click", "favourite", "cart", "purchase")
EVENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}
# Why a list was published: the user's own events, or a refresh while they were idle.
TRIGGERS: tuple[str, ...] = ("events", "refresh")


@dataclass(frozen=True, slots=True)
class Event:
    """One behaviour event, already validated. ``ts`` is epoch milliseconds."""

    user_id: str
    item_id: str
    event: str
    ts: int
    category: str | None = None


@dataclass(frozen=True, slots=True)
class Erasure:
    """A request to forget a user: their state and list go; the model never learns from it."""

    user_id: str


@dataclass(slots=True)
class UserState:
    """Everything the model keeps about one user between batches.

    ``recent_*`` are parallel lists, oldest first (the step bounds their
    length); ``long_term`` is float32[d] (d may be 0 when unused); ``seen`` and
    ``purchased`` are bounded exclusion lists; ``last_list`` is the list last
    published to the user.
    """

    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    last_ts: int = 0
    long_term: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    recent_items: list[str] = field(default_factory=list)
    recent_ts: list[int] = field(default_factory=list)
    recent_types: list[int] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    purchased: list[str] = field(default_factory=list)
    last_list: list[str] = field(default_factory=list)

    @property
    def n_events(self) -> int:
        return sum(self.counts)

    def copy(self, seen: bool = True) -> UserState:
        """An independent copy (no list or array is shared with ``self``); ``seen=False``
        leaves the seen list out (empty), for readers that never look at it."""
        lt = self.long_term
        # Positional, and an empty vector shared (nothing writes into one): a copy is
        # taken per event of a batch.
        return UserState(
            list(self.counts),
            self.last_ts,
            lt.copy() if lt.size else lt,
            list(self.recent_items),
            list(self.recent_ts),
            list(self.recent_types),
            list(self.seen) if seen else [],
            list(self.purchased),
            list(self.last_list),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserState):
            return NotImplemented
        return (
            self.counts == other.counts
            and self.last_ts == other.last_ts
            and np.array_equal(self.long_term, other.long_term)
            and self.recent_items == other.recent_items
            and self.recent_ts == other.recent_ts
            and self.recent_types == other.recent_types
            and self.seen == other.seen
            and self.purchased == other.purchased
            and self.last_list == other.last_list
        )


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A refreshed top-K list for one user.

    ``items`` is best first; ``event_ts`` is the newest event of this user that
    the list includes; ``explanation`` names the recent items that drove it;
    ``trigger`` says why it was published: ``"events"`` (the user's own events)
    or ``"refresh"`` (re-ranked while the user was idle, see model/refresh.py).
    """

    user_id: str
    items: tuple[tuple[str, float], ...]
    model_version: str
    event_ts: int
    explanation: tuple[str, ...] = ()
    trigger: str = "events"


@dataclass(slots=True)
class BatchResult:
    """What one call of the pure step returns.

    ``ranks[i]`` is the 0-based rank of ``events[i].item_id`` in the list the
    user had *before* that event (None: not in the top-K, or not scored).
    ``lists[i]`` is that list itself, only when the caller asked to keep it.
    ``finish_learning``: with ``learn="later"``, the rest of the model's
    learning from the batch, to be called before the model is used again.
    """

    recommendations: list[Recommendation] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    scored: int = 0
    lists: list[list[str]] = field(default_factory=list)
    finish_learning: Callable[[], None] | None = None


class StateView(Protocol):
    """User states of one partition as the pure step sees them.

    Ownership contract (``tests/state/test_store_contract.py`` checks it for
    every implementation): :meth:`get_many` hands out states the caller owns.
    Changing them changes nothing in the view; only :meth:`put` does. So a
    step that fails half way leaves the view exactly as it was, and a retry
    reads the same states again.
    """

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """States of the given users that exist (missing users are absent), owned by the caller."""
        ...

    def put(self, user_id: str, state: UserState) -> None:
        """Record the new state of a user (written when the batch commits)."""
        ...
