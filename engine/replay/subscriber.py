"""Quality as a subscriber sees it: each event scored against the list the user last received.

The pull view (:func:`engine.replay.pull.evaluate_models`) scores an event against
a list ranked at that moment. A subscriber of the recommendations topic holds
something else: the list published after their previous event (or refreshed
since, see :mod:`model.refresh`), ranked with the model of that time.

:func:`subscriber_replay` replays the stream so that a user's next event comes
only after the list for their previous one was published: a micro-batch never
holds two events of the same user (:func:`user_batches`), which is what
happens when people act on what they are shown. Each scored event is then
scored three ways in the same replay: pull (ranked now, as a reference for
this replay), and against the list the user holds under each refresh policy
given (typically the service's policy and no refresh at all). A user with no
list yet holds the newcomer list when the policy publishes one (refresh on),
else nothing: a miss, as for a subscriber.

The warm-up (learn only) is drained as a worker started on that history
drains a backlog (:func:`model.pacing.backlog_batches`: batches of the
worker's usual cap, doubling while they come full up to its catch-up cap),
so the model the scored events meet is the one a live worker has then
(``python -m bench.live_quality`` measures the same replay through Kafka).

Refresh passes are driven by event time: between two batches, passes run
every ``interval_ms`` of event time, each re-ranking at most ``max_users``
stale users (the same :class:`~model.refresh.RecentUsers` order as the worker),
until none is stale; the model does not change between batches, so a pass
that finds nothing stale ends the gap. A refreshed list is received at the
pass's time; an event-triggered list at the time of its batch's newest event.

Also reported per view: lists refreshed (published, i.e. changed), users
re-ranked whose list had not changed, the age of the user's own held list
at each scored event (seconds of event time: the staleness subscribers
experience; the newcomer list is left out, as in the worker's metric) and
how many events learnt it was behind, and what was held at each scored event
with its hits (``held``: the user's list from their own events, a refreshed
one, the newcomer list, nothing); ``recall_own_lists`` leaves the newcomer
list out, as a subscriber that reads only the user's own key sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.types import Event, Recommendation, UserState
from engine.replay.harness import Replica
from engine.replay.pull import ItemSchedule, give_items
from model.capabilities import Capabilities, RankingModel
from model.eval.metrics import ModelReport
from model.items import ItemMeta
from model.pacing import BATCH_CATCH_UP_EVENTS, BATCH_MAX_EVENTS, backlog_batches
from model.refresh import NewcomerList, RecentUsers, RefreshPolicy, refresh_lists
from state.views import MemoryStates

__all__ = [
    "user_batches",
    "HeldLists",
    "SubscriberView",
    "SubscriberReport",
    "subscriber_replay",
    "subscriber_summaries",
    "table",
]


def user_batches(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    """Consecutive micro-batches of at most ``size`` events, no user twice in one batch.

    >>> from core.types import Event
    >>> evs = [Event(u, "i", "click", t) for t, u in enumerate("abacb")]
    >>> [[e.user_id for e in b] for b in user_batches(evs, 32)]
    [['a', 'b'], ['a', 'c', 'b']]
    """
    batch: list[Event] = []
    users: set[str] = set()
    for ev in events:
        if ev.user_id in users or len(batch) >= size:
            yield batch
            batch, users = [], set()
        batch.append(ev)
        users.add(ev.user_id)
    if batch:
        yield batch


class HeldLists:
    """A :class:`~core.types.StateView` over the replay's states with this view's own lists.

    The replay's states carry the lists their events produced; a refresh
    under one policy must not change what another view holds, so refreshed
    lists are kept here and shadow ``last_list`` until the user's next event.
    """

    def __init__(self, states: MemoryStates) -> None:
        self.states = states
        self.lists: dict[str, list[str]] = {}

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        out = self.states.get_many(user_ids)
        for user, st in out.items():
            if user in self.lists:
                st.last_list = list(self.lists[user])
        return out

    def put(self, user_id: str, state: UserState) -> None:
        self.lists[user_id] = list(state.last_list)

    def held(self, user_id: str) -> list[str] | None:
        """The list the user holds (None: the user has no list yet)."""
        if user_id in self.lists:
            return self.lists[user_id]
        st = self.states.states.get(user_id)
        return None if st is None else st.last_list

    def published(self, user_id: str) -> None:
        """The user's events produced a new list (in the replay's state)."""
        self.lists.pop(user_id, None)


@dataclass
class SubscriberView:
    """What subscribers hold under one refresh policy, and how it scores."""

    policy: RefreshPolicy
    held: HeldLists
    k: int
    report: ModelReport = field(init=False)
    recent: RecentUsers = field(init=False)
    newcomers: NewcomerList = field(default_factory=NewcomerList)
    received_at: dict[str, int] = field(default_factory=dict)  # user -> event time of their list
    ages: list[float] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)  # events learnt since the held list
    # What the user held at each scored event, and the hits on it: their list from
    # their own events ("events"), a refreshed one ("refresh"), the newcomer list, none.
    held_kinds: dict[str, int] = field(default_factory=dict)
    # (user, ts, what was held, the list) per scored event, when asked for
    trace: list[tuple[str, int, str, tuple[str, ...]]] | None = None
    refreshed: int = 0
    unchanged: int = 0
    next_pass: int | None = None

    def __post_init__(self) -> None:
        self.report = ModelReport(self.k)
        self.recent = RecentUsers(self.policy.track_users)

    def score(self, ev: Event, clock: int) -> None:
        """Score ``ev`` against the list its user holds now (``clock``: events learnt)."""
        held = self.held.held(ev.user_id)
        at = self.received_at.get(ev.user_id)
        if held is not None and at is not None:
            # The user's own list, as the worker's interest_list_age_seconds sees it
            # (the newcomer list's age is not a user's staleness).
            self.ages.append(max(0, ev.ts - at) / 1000.0)
            ranked = self.recent.ranked_at(ev.user_id)
            if ranked >= 0:
                self.staleness.append(clock - ranked)
        kind = "none" if held is None else "refresh" if ev.user_id in self.held.lists else "events"
        if held is None and self.policy.enabled and self.newcomers.items:
            held, kind = self.newcomers.ids, "newcomers"
        listed = held or []
        hit = ev.item_id in listed
        self.report.add(listed.index(ev.item_id) if hit else None, listed)
        self.held_kinds[kind] = self.held_kinds.get(kind, 0) + 1
        self.held_kinds[f"{kind}_hits"] = self.held_kinds.get(f"{kind}_hits", 0) + hit
        if self.trace is not None:
            self.trace.append((ev.user_id, ev.ts, kind, tuple(listed)))

    def published(self, recs: Sequence[Recommendation], clock: int, at_ms: int) -> None:
        for rec in recs:
            self.held.published(rec.user_id)
            self.recent.published(rec.user_id, clock, at_ms)
            self.received_at[rec.user_id] = at_ms

    def passes_until(self, until_ms: int, caps: Capabilities, clock: int) -> None:
        """The refresh passes due in event time up to ``until_ms`` (the next batch)."""
        if not self.policy.enabled:
            return
        t0 = time.perf_counter()
        if self.next_pass is None:
            self.next_pass = until_ms
        while self.next_pass <= until_ms:
            if not self._pass(caps, clock, self.next_pass):
                # Nothing stale: nothing will be before the model learns again.
                self.next_pass = until_ms + self.policy.interval_ms
                break
            self.next_pass += self.policy.interval_ms
        self.report.seconds += time.perf_counter() - t0

    def _pass(self, caps: Capabilities, clock: int, at_ms: int) -> bool:
        p = self.policy
        users = self.recent.stale(clock, p.stale_events, p.max_users)
        recs, same = refresh_lists(users, self.held, caps.model, self.k, explain=False, caps=caps)
        for rec in recs:
            self.recent.refreshed(rec.user_id, clock, at_ms)
            self.received_at[rec.user_id] = at_ms
        for user in same:
            self.recent.refreshed(user, clock, None)
        self.refreshed += len(recs)
        self.unchanged += len(same)
        due = self.newcomers.due(p, clock)
        if due and self.newcomers.rerank(caps.model, self.k, clock, at_ms, caps):
            self.refreshed += 1
        return bool(users) or due

    def summary(self, catalogue: int) -> dict[str, float | int | None]:
        out = self.report.summary(catalogue, with_lag=False)
        out["refresh_seconds"] = out.pop("seconds")
        ages = np.asarray(self.ages, dtype=np.float64)
        out["lists_refreshed"] = self.refreshed
        out["refreshed_unchanged"] = self.unchanged
        for name, q in (("list_age_median_s", 50), ("list_age_p90_s", 90)):
            out[name] = round(float(np.percentile(ages, q)), 1) if ages.size else None
        # In events learnt: how far behind the model the held list was at the next event.
        stale = np.asarray(self.staleness, dtype=np.float64)
        for name, q in (("list_staleness_median_events", 50), ("list_staleness_p90_events", 90)):
            out[name] = float(np.percentile(stale, q)) if stale.size else None
        out["stale_share"] = (
            round(float((stale >= self.policy.stale_events).mean()), 4) if stale.size else None
        )
        out["held"] = dict(sorted(self.held_kinds.items()))
        # As a subscriber that reads only the user's own key sees it (no newcomer list).
        own = sum(self.report.hits) - self.held_kinds.get("newcomers_hits", 0)
        out["recall_own_lists"] = round(own / max(len(self.report.hits), 1), 5)
        return out


@dataclass
class SubscriberReport:
    """One model's subscriber replay: pull in this replay, and one view per policy."""

    pull: ModelReport
    views: dict[str, SubscriberView]

    def summary(self, catalogue: int, main: str, others: dict[str, str]) -> dict:
        """``main``'s view at the top level, ``others`` (view name -> key) and pull nested."""
        out: dict = self.views[main].summary(catalogue)
        for view, key in others.items():
            out[key] = self.views[view].summary(catalogue)
        out["pull"] = self.pull.summary(catalogue, with_lag=False)
        return out


def subscriber_replay(
    models: dict[str, RankingModel],
    warmup: Sequence[Event],
    test: Sequence[Event],
    policies: dict[str, RefreshPolicy],
    *,
    k: int = 10,
    batch_size: int = 32,
    static: Iterable[str] = (),
    freeze_after: int = 0,
    progress: Callable[[int], object] | None = None,
    items: Sequence[ItemMeta] = (),
    backlog: tuple[int, int] | None = (BATCH_MAX_EVENTS, BATCH_CATCH_UP_EVENTS),
    trace: bool = False,
    item_times: Mapping[str, int] | None = None,
) -> dict[str, SubscriberReport]:
    """Replay ``warmup`` (learn only) then ``test`` in user-distinct batches; score every view.

    ``static``, ``freeze_after``, ``items`` (item metadata for models that
    take it) and ``item_times`` as in :func:`engine.replay.pull.evaluate_models`. The model clock of
    the refresh policies is the number of events learnt. ``backlog``: the
    worker's ``(batch_max_events, batch_catch_up_events)``: the warm-up is
    drained as a worker started on it drains a backlog
    (:func:`model.pacing.backlog_batches`); None: in batches of ``batch_size``.
    ``trace``: each view keeps what every scored event was scored against
    (:attr:`SubscriberView.trace`).
    """
    reports: dict[str, SubscriberReport] = {}
    for name, model in models.items():
        replica = Replica(model, k)
        caps = replica.caps
        schedule = ItemSchedule(items, item_times)

        def release(ts: int | None, caps: Capabilities = caps, s: ItemSchedule = schedule) -> None:
            due = s.due(ts)
            if due:
                give_items(caps, due)

        release(None)
        states = replica.view
        assert isinstance(states, MemoryStates)
        views = {p: SubscriberView(pol, HeldLists(states), k) for p, pol in policies.items()}
        if trace:
            for view in views.values():
                view.trace = []
        rep = reports[name] = SubscriberReport(ModelReport(k), views)
        clock = 0
        t0 = time.perf_counter()
        warm = _chunks(warmup, batch_size) if backlog is None else backlog_batches(warmup, *backlog)
        for batch in warm:
            release(batch[-1].ts)
            out = replica.step(batch, score=False)
            clock += len(batch)
            for view in views.values():
                view.published(out.recommendations, clock, batch[-1].ts)
            if progress is not None:
                progress(len(batch))
        learn, done = True, 0
        frozen = name in set(static)
        for batch in user_batches(test, batch_size):
            if frozen and done >= freeze_after:
                if caps.freezes is not None:
                    caps.freezes.freeze()
                else:
                    learn = False
                frozen = False
            release(max(ev.ts for ev in batch))
            for view in views.values():
                view.passes_until(batch[0].ts, caps, clock)
                for ev in batch:
                    view.score(ev, clock)
            # As in the worker: the lists go out before the model's step on the batch.
            out = replica.step(batch, learn=learn)
            for rank, listed in zip(out.ranks, out.lists, strict=True):
                rep.pull.add(rank, listed)
            clock += len(batch)
            done += len(batch)
            for view in views.values():
                view.published(out.recommendations, clock, max(ev.ts for ev in batch))
            if progress is not None:
                progress(len(batch))
        replica.close()
        # The replay's own time: the step (scoring, learning, ranking), without refresh passes.
        rep.pull.seconds = time.perf_counter() - t0 - sum(v.report.seconds for v in views.values())
    return reports


def _chunks(events: Sequence[Event], size: int) -> Iterator[Sequence[Event]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]


def subscriber_summaries(reports: dict[str, SubscriberReport], catalogue: int) -> dict[str, dict]:
    """The ``"subscriber"`` entry of each model in ``evaluate --json`` (docs/model/protocols.md).

    The view named ``"refresh"`` at the top level (the metric keys of the pull
    view, plus refresh counts and list ages), ``"without_refresh"`` (view
    ``"off"``) and ``"pull"`` (this replay's pull view) nested.
    """
    return {
        name: rep.summary(catalogue, "refresh", {"off": "without_refresh"})
        for name, rep in reports.items()
    }


def table(result: dict, k: int) -> str:
    """Recall@K per model: pull, and with a subscriber view the subscriber columns beside it."""
    with_sub = any("subscriber" in m for m in result["models"].values())
    head = f"{'model':<16} {'pull':>7}"
    if with_sub:
        head += (
            f" {'subscriber':>10} {'own key':>8} {'no refresh':>10} {'pull*':>7}"
            f" {'refreshed':>9} {'age p50':>8}"
        )
    rows = [head]
    for name, m in result["models"].items():
        row = f"{name:<16} {m['recall']:>7.4f}"
        sub = m.get("subscriber")
        if sub is not None:
            age = sub["list_age_median_s"]
            row += (
                f" {sub['recall']:>10.4f} {sub['recall_own_lists']:>8.4f}"
                f" {sub['without_refresh']['recall']:>10.4f}"
                f" {sub['pull']['recall']:>7.4f} {sub['lists_refreshed']:>9}"
                f" {'-' if age is None else f'{age:.0f} s':>8}"
            )
        rows.append(row)
    if with_sub:
        rows.append(
            f"Recall@{k}. pull: a list ranked at each event; subscriber: the list the user "
            "holds, with refresh (a user with no list yet holds the newcomer list; own key: "
            "not counting it) and without (* pull in the same replay, where the warm-up is "
            "drained as a worker drains a backlog and users act only after receiving their "
            "list); age p50: of the held list at the next event"
        )
    else:
        rows.append(
            f"Recall@{k} (pull: a list ranked at each event; --subscriber adds the list users hold)"
        )
    return "\n".join(rows)
