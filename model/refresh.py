"""Refresh of stale lists: whose list to re-rank between events, and the re-ranking itself.

A subscriber holds the list published after their previous event, ranked with
the model of that time. While they are idle the model keeps learning from
everyone else's events, so their list goes stale. The worker
(:mod:`engine.refresh`) and the evaluator's subscriber view
(:mod:`engine.replay.subscriber`) run the same policy, here, on different clocks:
wall time live, event time offline.

* **Stale** means the model has learnt from at least ``stale_events`` events
  since the list was ranked (the model clock: events learnt, counted by the
  caller). That is the significant change: on MovieLens-100K a list goes on
  losing recall as more events are learnt after it (see docs/model/results-history.md,
  "Subscriber view").
* **Candidates** are the recently active users: a bounded recency list per
  partition (:class:`RecentUsers`, ``track_users`` users; the least recently
  active are forgotten first). It is kept in memory and rebuilt as users act
  after a restart.
* **Order**: the stalest list first (round robin over the tracked users).
* **Budget**: at most ``max_users`` users per pass, at most one pass per
  ``interval_ms`` of the clock; the worker also keeps passes within a share of
  its time (``refresh_budget_percent``).
* A refreshed list identical to the one the user holds is never published
  again (:func:`refresh_lists`); the user counts as refreshed all the same.
* **Newcomers**: the list for a user with no history (an empty state) is
  refreshed under the same rule and published under a reserved key (see
  :mod:`engine.events`), for apps to show to users they know nothing about.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from core.types import TRIGGERS, Recommendation, StateView, UserState
from model.capabilities import Capabilities, RankingModel, capabilities

__all__ = [
    "RefreshPolicy",
    "RecentUsers",
    "NewcomerList",
    "rank_lists",
    "refresh_lists",
    "TRIGGER_EVENTS",
    "TRIGGER_REFRESH",
]

TRIGGER_EVENTS, TRIGGER_REFRESH = TRIGGERS


@dataclass(frozen=True)
class RefreshPolicy:
    """When a list is stale and how many are re-ranked per pass (see the module docstring).

    ``enabled=False`` turns refresh off: no pass runs and no newcomer list is published.
    """

    # Chosen on the first 30% of MovieLens-100K's scored events (FluRS;
    # docs/model/results-history.md, "Subscriber view"): subscriber Recall@10 0.2069
    # at 500 (pull 0.2064), 0.2064 at 1000, 0.2055 at 250, 0.1932 without refresh. On
    # the synthetic stream 250-2000 are all within 0.002 of pull.
    stale_events: int = 500
    max_users: int = 256
    interval_ms: int = 1000
    track_users: int = 10_000
    enabled: bool = True

    def is_stale(self, ranked_at_clock: int, clock: int) -> bool:
        """True when at least ``stale_events`` events were learnt since ``ranked_at_clock``."""
        return clock - ranked_at_clock >= self.stale_events


class RecentUsers:
    """The recently active users of one partition and the clock of the list each holds.

    Two orders over the same users: by activity (the least recently active is
    forgotten first when there are more than ``capacity``) and by the model
    clock of their list (the stalest first), so a pass costs O(picked users).

    >>> recent = RecentUsers(capacity=2)
    >>> recent.published("a", clock=0, at_ms=10)
    >>> recent.published("b", clock=5, at_ms=20)
    >>> recent.stale(clock=6, stale_events=5, limit=10)
    ['a']
    >>> recent.refreshed("a", clock=6, at_ms=30)
    >>> recent.stale(clock=11, stale_events=5, limit=10)
    ['b', 'a']
    >>> recent.published("c", clock=11, at_ms=40)  # "a" is the least recently active
    >>> sorted(recent), recent.held_at("b")
    (['b', 'c'], 20)
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._active: OrderedDict[str, None] = OrderedDict()
        # user -> (model clock when the list was ranked, when the user received it, ms)
        self._lists: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # user -> the message key their lists go out under, when it is not the id itself
        # (pseudonymised ids): known only from the user's own events, kept in memory only.
        self._keys: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self):  # noqa: ANN204 - an iterator of user ids
        return iter(self._active)

    def published(self, user: str, clock: int, at_ms: int, key: bytes | None = None) -> None:
        """The user's own events produced a list, ranked at ``clock``, received at ``at_ms``.

        ``key``: the message key the user's lists are published under, when it
        is not the user id's UTF-8 bytes.
        """
        self._active[user] = None
        self._active.move_to_end(user)
        self._lists[user] = (clock, at_ms)
        self._lists.move_to_end(user)
        if key is not None:
            self._keys[user] = key
        while len(self._active) > self.capacity:
            gone, _ = self._active.popitem(last=False)
            del self._lists[gone]
            self._keys.pop(gone, None)

    def key_of(self, user: str) -> bytes | None:
        """The message key given with the user's last list (None: the id itself)."""
        return self._keys.get(user)

    def refreshed(self, user: str, clock: int, at_ms: int | None) -> None:
        """The user's list was re-ranked at ``clock``; ``at_ms`` None: it had not changed."""
        held = self._lists.get(user)
        if held is None:
            return
        self._lists[user] = (clock, held[1] if at_ms is None else at_ms)
        self._lists.move_to_end(user)

    def ranked_at(self, user: str) -> int:
        """The model clock the user's list was ranked at (-1 if not tracked)."""
        held = self._lists.get(user)
        return -1 if held is None else held[0]

    def held_at(self, user: str) -> int | None:
        """When the user received the list they hold (ms), None if not tracked."""
        held = self._lists.get(user)
        return None if held is None else held[1]

    def stale(self, clock: int, stale_events: int, limit: int) -> list[str]:
        """Up to ``limit`` users with a list ``stale_events`` or more events old, stalest first."""
        out: list[str] = []
        for user, (ranked_at, _) in self._lists.items():
            if len(out) >= limit or clock - ranked_at < stale_events:
                break  # the rest were ranked later
            out.append(user)
        return out

    def forget(self, user: str) -> None:
        """Stop tracking ``user`` (erased): no refresh until their next list."""
        self._active.pop(user, None)
        self._lists.pop(user, None)
        self._keys.pop(user, None)


@dataclass(slots=True)
class NewcomerList:
    """The list for users with no history: items, the clock it was ranked at, when published."""

    items: tuple[tuple[str, float], ...] = ()
    clock: int = -1
    at_ms: int = 0

    @property
    def ids(self) -> list[str]:
        return [item for item, _ in self.items]

    def due(self, policy: RefreshPolicy, clock: int) -> bool:
        return self.clock < 0 or policy.is_stale(self.clock, clock)

    def rerank(
        self,
        model: RankingModel,
        k: int,
        clock: int,
        at_ms: int,
        caps: Capabilities | None = None,
    ) -> bool:
        """Rank it again; True when it changed (and should be published)."""
        (ranked,), _ = rank_lists(model, [""], [UserState()], k, explain=False, caps=caps)
        changed = [item for item, _ in ranked] != self.ids or self.clock < 0
        self.clock = clock
        if changed:
            self.items, self.at_ms = tuple(ranked), at_ms
        return changed and bool(ranked)


def rank_lists(
    model: RankingModel,
    users: Sequence[str],
    states: Sequence[UserState],
    k: int,
    explain: bool = True,
    caps: Capabilities | None = None,
) -> tuple[list[list[tuple[str, float]]], list[tuple[str, ...]]]:
    """Top-``k`` lists of ``users`` with the model as it is now, and their explanations."""
    caps = capabilities(model) if caps is None else caps
    ranked = caps.rank_many(users, states, k)
    why: list[tuple[str, ...]] = (
        caps.explain_many(users, states, ranked) if explain else [()] * len(users)
    )
    return ranked, why


def refresh_lists(
    users: Sequence[str],
    view: StateView,
    model: RankingModel,
    k: int,
    explain: bool = True,
    *,
    caps: Capabilities | None = None,
    version: str | None = None,
) -> tuple[list[Recommendation], list[str]]:
    """Re-rank ``users`` and put the lists that changed into their states.

    Returns the lists to publish (``trigger="refresh"``, ``event_ts`` the newest
    event each includes) and the users whose list came out identical to the
    one they hold (nothing to publish; ``last_list`` is what they hold). Users
    without a state are skipped; ``explain=False`` leaves explanations out.
    ``caps`` and ``version`` as in :func:`model.step.process_batch`.

    >>> from core.types import Event
    >>> from state.views import MemoryStates
    >>> from model.baselines.popular import MostPopular
    >>> from model.step import process_batch
    >>> view, model = MemoryStates(), MostPopular()
    >>> _ = process_batch([Event("u1", "i1", "purchase", 1767225600000)], view, model, k=2)
    >>> view.states["u1"].last_list  # i1 is bought: never listed
    []
    >>> model.learn_many([Event("u2", "i2", "click", 1767225600001)], [UserState()])
    >>> recs, same = refresh_lists(["u1"], view, model, k=2)
    >>> [(r.user_id, [i for i, _ in r.items], r.trigger) for r in recs], same
    ([('u1', ['i2'], 'refresh')], [])
    >>> refresh_lists(["u1"], view, model, k=2)[1]  # nothing new: nothing published
    ['u1']
    """
    states = view.get_many(users)
    known = [u for u in users if u in states]
    if not known:
        return [], []
    final = [states[u] for u in known]
    ranked, why = rank_lists(model, known, final, k, explain, caps)
    out: list[Recommendation] = []
    same: list[str] = []
    for user, st, items, reasons in zip(known, final, ranked, why, strict=True):
        ids = [item for item, _ in items]
        if ids == st.last_list:
            same.append(user)
            continue
        st.last_list = ids
        view.put(user, st)
        out.append(
            Recommendation(
                user,
                tuple(items),
                version or model.version,
                st.last_ts,
                reasons,
                trigger=TRIGGER_REFRESH,
            )
        )
    return out, same
