"""Plain values shared by the pure step, the runtimes and the evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from state.codec import UserState

__all__ = [
    "EVENT_TYPES",
    "EVENT_INDEX",
    "Event",
    "Recommendation",
    "BatchResult",
    "StateView",
    "UserState",
]

EVENT_TYPES: tuple[str, ...] = ("click", "favourite", "cart", "purchase")
EVENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}


@dataclass(frozen=True, slots=True)
class Event:
    """One behaviour event, already validated. ``ts`` is epoch milliseconds."""

    user_id: str
    item_id: str
    event: str
    ts: int
    category: str | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A refreshed top-K list for one user.

    ``items`` is best first; ``event_ts`` is the newest event of this user that
    the list includes; ``explanation`` names the recent items that drove it.
    """

    user_id: str
    items: tuple[tuple[str, float], ...]
    model_version: str
    event_ts: int
    explanation: tuple[str, ...] = ()


@dataclass(slots=True)
class BatchResult:
    """What one call of the pure step returns.

    ``ranks[i]`` is the 0-based rank of ``events[i].item_id`` in the list the
    user had *before* that event (None: not in the top-K, or not scored).
    ``lists[i]`` is that list itself, only when the caller asked to keep it.
    """

    recommendations: list[Recommendation] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    scored: int = 0
    lists: list[list[str]] = field(default_factory=list)


class StateView(Protocol):
    """User states of one partition as the pure step sees them."""

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """States of the given users that exist (missing users are absent)."""
        ...

    def put(self, user_id: str, state: UserState) -> None:
        """Record the new state of a user (written when the batch commits)."""
        ...
