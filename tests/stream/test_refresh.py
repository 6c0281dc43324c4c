"""Refresh of idle users' lists in the worker: budget, no repeats, and the real thing on Kafka."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from core.types import Event, UserState
from engine.batch import Source, StepOutcome
from engine.checkpoint import MemoryCheckpoint
from engine.config import OutputTopics
from engine.events import NEWCOMERS_ID, decode_recommendation, encode_event
from engine.metrics import WorkerMetrics
from engine.refresh import CHUNK_USERS, Refresher
from model.capabilities import capabilities
from model.refresh import RefreshPolicy
from model.step import process_batch
from state.store import MemoryStore, StorePartition
from stream.cli.publish import Publisher
from stream.cli.state import read_states
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.checkpoint import Checkpoint
from stream.runtime.native import Worker
from tests.stream.helpers import (
    TinyPopularity,
    make_settings,
    read_topic,
    running_worker,
    wait_for,
)

TOPIC = "ev"
T0 = 1_767_225_600_000


class FakeTimer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowCounting(TinyPopularity):
    """TinyPopularity whose ranking costs 1 ms of the fake timer per user."""

    def __init__(self, timer: FakeTimer) -> None:
        super().__init__()
        self.timer = timer
        self.ranked = 0

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        self.timer.now += 0.001
        self.ranked += 1
        return super().rank(user_id, state, k)


class Loop:
    """A worker's loop without Kafka: event batches and refresh passes on a memory store."""

    def __init__(self, policy: RefreshPolicy, budget: int) -> None:
        self.timer = FakeTimer()
        self.model = SlowCounting(self.timer)
        self.part: StorePartition = MemoryStore().open_partition(TOPIC, 0)
        self.metrics = WorkerMetrics.create(CollectorRegistry())
        self.refresher = Refresher(policy, budget, 3, self.metrics, timer=self.timer)
        self.offset = -1
        self.passes: list[tuple[int, list]] = []  # (users re-ranked, lists published)

    def events(
        self,
        events: Sequence[Event],
        keys: dict[str, bytes] | None = None,
        erase: Sequence[str] = (),
    ) -> Checkpoint:
        """A batch; ``keys``: stored id -> producer's key (pseudonymised ids);
        ``erase``: users erased before the batch's events."""
        produced = int(self.timer.now * 1000)  # the events' Kafka timestamp
        keys = keys or {}
        txn = self.part.begin()
        self.offset += max(1, len(events))
        txn.set_offset(self.offset)
        erased = [(user, txn.delete(user)) for user in erase]
        result = process_batch(events, txn, self.model, 3)
        sources = [
            Source(
                TOPIC,
                0,
                i,
                keys.get(ev.user_id, ev.user_id.encode()),
                encode_event(ev)[1],
                produced,
            )
            for i, ev in enumerate(events)
        ]
        out = StepOutcome(txn, result.recommendations, sources, erased=erased, keys=keys)
        checkpoint = MemoryCheckpoint(OutputTopics("lists", "dead", "changelog"))
        checkpoint.add(self.part, out, 0)
        txn.commit()
        checkpoint.delivered_ms = self.timer.now * 1000.0
        self.refresher.after_batch(checkpoint)
        return checkpoint

    def refresh(self) -> Checkpoint | None:
        """One pass if due: staged, then committed (the runtime's part)."""
        if not self.refresher.due():
            return None
        checkpoint = MemoryCheckpoint(OutputTopics("lists", "dead", "changelog"))
        before = self.model.ranked
        staged = self.refresher.stage(
            {(TOPIC, 0): self.part}, capabilities(self.model), checkpoint, 0, (TOPIC, 0)
        )
        recs = []
        if staged:
            for _, out in checkpoint.outcomes:
                out.txn.commit()
            recs = self.refresher.committed(self.timer.now * 1000.0)
        self.passes.append((self.model.ranked - before, recs))
        return checkpoint


def _clicks(users: Sequence[str], item: str, ts: int = T0) -> list[Event]:
    return [Event(u, item, "click", ts + i) for i, u in enumerate(users)]


def test_refresh_keeps_within_its_share_of_time_and_its_users_per_pass() -> None:
    policy = RefreshPolicy(stale_events=5, max_users=40, interval_ms=10)
    loop = Loop(policy, budget=20)
    users = [f"u{i}" for i in range(300)]
    loop.events(_clicks(users, "a"))
    start = loop.timer.now
    for step in range(2000):  # 2,000 batches of 5 ms each: the lists keep going stale
        loop.timer.now += 0.005
        loop.events(_clicks([f"n{step % 50}"], f"i{step % 7}"))
        loop.refresh()
    elapsed = loop.timer.now - start
    spent = loop.metrics.registry.get_sample_value("interest_refresh_seconds_sum")
    ranked = [n for n, _ in loop.passes]
    assert max(ranked) <= policy.max_users + 1  # + the newcomer list
    assert sum(ranked) > 1000  # it did refresh, a lot
    assert spent <= 0.2 * elapsed + max(ranked) * 0.001  # 20%, give or take the last pass


def test_a_pass_goes_out_in_parts_of_at_most_chunk_users_each_paced_by_the_budget() -> None:
    policy = RefreshPolicy(stale_events=5, max_users=150, interval_ms=10_000)
    loop = Loop(policy, budget=50)
    users = [f"u{i}" for i in range(400)]
    loop.events(_clicks(users, "a"))
    loop.events(_clicks([f"n{i}" for i in range(5)], "b"))  # every list is stale now
    for _ in range(400):  # 5 ms batches for 2 s: the pass goes out, the interval holds
        loop.timer.now += 0.005
        loop.refresh()
    parts = [n for n, _ in loop.passes if n]
    # 150 users of the pass in parts (the first also re-ranks the newcomer list);
    # each part of d seconds is followed by d seconds for the rest (50%); then 10 s.
    sizes = [min(CHUNK_USERS, 150 - i) for i in range(0, 150, CHUNK_USERS)]
    sizes[0] += 1
    assert parts == sizes
    assert sum(len(recs) for _, recs in loop.passes) >= 150


def test_refresh_never_republishes_the_list_a_user_holds() -> None:
    policy = RefreshPolicy(stale_events=2, max_users=100, interval_ms=1)
    loop = Loop(policy, budget=100)
    loop.events(_clicks(["u1", "u2"], "a") + _clicks(["u3"], "b"))
    assert loop.part.get("u1").last_list == ["a", "b"]
    first = loop.refresh()  # nothing stale; the newcomer list goes out once
    assert [r.user_id for _, r in _lists(first)] == [NEWCOMERS_ID]
    loop.events(_clicks(["u4", "u5", "u6"], "a", T0 + 10))  # "a" gains; nobody's list changes
    loop.timer.now += 1
    unchanged = loop.refresh()
    assert loop.passes[-1][0] >= 3 and _lists(unchanged) == []  # re-ranked, nothing sent
    loop.events(_clicks([f"v{i}" for i in range(9)], "c", T0 + 20))  # "c" leads now
    loop.timer.now += 1
    changed = loop.refresh()
    published = {r.user_id: r for _, r in _lists(changed)}
    assert {"u1", "u2", "u3", NEWCOMERS_ID} <= set(published)
    assert [i for i, _ in published["u1"].items] == ["c", "a", "b"]
    assert published["u1"].trigger == "refresh" and published["u1"].event_ts == T0
    assert published[NEWCOMERS_ID].event_ts == 0
    assert loop.part.get("u1").last_list == ["c", "a", "b"]  # what u1 holds, in state
    assert loop.refresher.recent[(TOPIC, 0)].held_at("u1") == int(loop.timer.now * 1000)
    # u1 acts 2 s after receiving the refreshed list: that is the age observed.
    loop.timer.now += 2
    loop.events(_clicks(["u1"], "c", T0 + 30))
    reg = loop.metrics.registry
    assert reg.get_sample_value("interest_list_age_seconds_count") == 1
    assert reg.get_sample_value("interest_list_age_seconds_sum") == 2.0


def _lists(checkpoint: Checkpoint | None) -> list:
    assert checkpoint is not None
    return [(part, rec) for part, out in checkpoint.outcomes for rec in out.recommendations]


def test_refresh_publishes_under_the_producers_key_and_never_brings_back_an_erased_user():
    """Pseudonymised ids: state is keyed by pseudonym, lists by the key the producer used."""
    loop = Loop(RefreshPolicy(stale_events=2, max_users=100, interval_ms=1), budget=100)
    keys = {"p1": b"u1", "p2": b"u2"}
    sent = loop.events(_clicks(["p1", "p2"], "a"), keys=keys)
    assert sorted(r.user_id for _, r in _lists(sent)) == ["u1", "u2"]
    loop.refresh()  # the newcomer list
    loop.events(_clicks([f"v{i}" for i in range(5)], "c", T0 + 10))  # "c" leads now
    loop.timer.now += 1
    published = {r.user_id: r for _, r in _lists(loop.refresh())}
    assert {"u1", "u2"} <= set(published) and not {"p1", "p2"} & set(published)
    assert [i for i, _ in published["u1"].items][0] == "c"
    assert loop.part.get("p1").last_list[0] == "c"  # state stays under the pseudonym
    # u2 is erased; then everyone's lists go stale again.
    loop.events([], keys={"p2": b"u2"}, erase=["p2"])
    loop.events(_clicks([f"w{i}" for i in range(9)], "d", T0 + 20))
    loop.timer.now += 1
    again = {r.user_id for _, r in _lists(loop.refresh())}
    assert "u1" in again and "u2" not in again and "p2" not in again
    assert loop.part.get("p2") is None


def test_refresh_off_publishes_nothing() -> None:
    loop = Loop(RefreshPolicy(stale_events=1, interval_ms=1), budget=0)
    loop.events(_clicks(["u1"], "a"))
    loop.events(_clicks(["u2"], "b"))
    assert loop.refresh() is None and loop.refresher.recent == {}


def test_refreshed_lists_on_kafka(kafka_bootstrap, unique_topics, tmp_path) -> None:
    """Every list carries its trigger; refreshes reach idle users, in state and changelog."""
    topics = unique_topics(partitions=2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        refresh_stale_events=20,
        refresh_interval_ms=50,
        refresh_budget_percent=50,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    idle = [f"idle{i}" for i in range(10)]
    registry = CollectorRegistry()
    worker = Worker(settings, TinyPopularity(), registry=registry)
    with running_worker(worker), Publisher(settings) as pub:
        pub.publish(_clicks(idle, "old", T0))
        wait_for(lambda: worker.stats.applied >= len(idle), 60, "the idle users' events")
        # Others make "new" the most popular item while the idle users do nothing.
        pub.publish(_clicks([f"busy{i % 30}" for i in range(100)], "new", T0 + 100))
        wait_for(lambda: worker.stats.applied >= len(idle) + 100, 60, "the busy users' events")
        wait_for(lambda: worker.stats.lists_refreshed >= len(idle), 60, "refreshed lists")
    assert registry.get_sample_value("interest_lists_refreshed_total") >= len(idle)
    assert registry.get_sample_value("interest_refresh_seconds_count") > 0

    by_user: dict[str, list[dict]] = defaultdict(list)
    for msg in sorted(
        read_topic(settings.kafka, topics.recommendations),
        key=lambda m: (m.partition(), m.offset()),
    ):
        assert "trigger" in json.loads(msg.value())  # on the wire, not only by default
        doc = decode_recommendation(msg.value())
        assert doc["trigger"] in ("events", "refresh")
        assert msg.key() == doc["user_id"].encode()
        by_user[doc["user_id"]].append(doc)
    for user in idle:
        docs = by_user[user]
        assert docs[0]["trigger"] == "events" and docs[0]["event_ts"] == docs[-1]["event_ts"]
        assert any(d["trigger"] == "refresh" for d in docs), user
        assert docs[-1]["items"][0]["item_id"] == "new"  # followed what happened meanwhile
    for docs in by_user.values():
        for before, after in zip(docs, docs[1:], strict=False):
            if after["trigger"] == "refresh":  # a refresh never repeats what the user holds
                assert _ids(after) != _ids(before)
    newcomers = by_user[NEWCOMERS_ID]
    assert newcomers and {d["trigger"] for d in newcomers} == {"refresh"}
    # The state (restored from the changelog) holds what the user was last sent.
    states = dict(read_states(settings))
    for user in idle:
        assert states[user].last_list == _ids(by_user[user][-1])


def _ids(doc: dict) -> list[str]:
    return [entry["item_id"] for entry in doc["items"]]


def test_a_failing_refresh_pass_warns_without_naming_the_user() -> None:
    loop = Loop(RefreshPolicy(stale_events=1, max_users=10, interval_ms=1), budget=100)
    warnings: list[tuple[str, BaseException | None]] = []
    loop.refresher._warn = lambda kind, text, exc: warnings.append((text, exc))
    loop.events(_clicks(["u1"], "a"))
    loop.refresh()  # the newcomer list
    loop.events(_clicks(["u2"], "b"))

    def broken(user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        raise KeyError(user_id)

    loop.model.rank = broken  # type: ignore[method-assign]
    loop.timer.now += 1
    checkpoint = loop.refresh()
    assert checkpoint is not None and checkpoint.outcomes == []  # nothing staged, nothing sent
    ((text, exc),) = warnings
    assert text.startswith("refresh pass failed (KeyError at ") and "u1" not in text
    assert exc is None  # no traceback either: its message would name the user
    assert not loop.refresher.due()  # tried again later, not at once


class CountingRanker(TinyPopularity):
    """TinyPopularity with a batched ranker that records how many users each call ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def rank_many(self, users: Sequence[str], states: Sequence[UserState], k: int) -> list:
        self.calls.append(len(users))
        return [self.rank(u, st, k) for u, st in zip(users, states, strict=True)]


def _stale_on_two_partitions() -> tuple[CountingRanker, Refresher, dict]:
    """Users a, b on partition 0 and c on 1 (offsets up to 4), every list stale."""
    store, model = MemoryStore(), CountingRanker()
    metrics = WorkerMetrics.create(CollectorRegistry())
    refresher = Refresher(RefreshPolicy(stale_events=1, max_users=64), 50, 3, metrics)
    parts = {(TOPIC, p): store.open_partition(TOPIC, p) for p in (0, 1)}
    first = MemoryCheckpoint(OutputTopics("lists", "dead", "changelog"))
    for key, users in {(TOPIC, 0): ["a", "b"], (TOPIC, 1): ["c"]}.items():
        txn = parts[key].begin()
        txn.set_offset(4)
        result = process_batch(_clicks(users, "x"), txn, model, 3)
        sources = [Source(TOPIC, key[1], i, u.encode(), b"{}", T0) for i, u in enumerate(users)]
        first.add(parts[key], StepOutcome(txn, result.recommendations, sources), 0)
        txn.commit()
    first.delivered_ms = 0.0
    refresher.after_batch(first)
    model.learn_many(_clicks(["z"] * 5, "y"), [UserState()] * 5)  # every list is stale now
    refresher.clock += 10
    model.calls.clear()
    return model, refresher, parts


def test_a_part_over_several_partitions_is_one_ranking_call_with_states_kept_apart() -> None:
    model, refresher, parts = _stale_on_two_partitions()
    staged = MemoryCheckpoint(OutputTopics("lists", "dead", "changelog"))
    assert refresher.stage(parts, capabilities(model), staged, 0, None) == 3
    assert model.calls == [3]  # one call for both partitions
    by_part = {
        part.partition: sorted(r.user_id for r in out.recommendations)
        for part, out in staged.outcomes
    }
    assert by_part == {0: ["a", "b"], 1: ["c"]}
    for _, out in staged.outcomes:
        out.txn.commit()
    refresher.committed(0.0)
    assert parts[(TOPIC, 0)].begin().get_many(["a", "b", "c"]).keys() == {"a", "b"}
    assert parts[(TOPIC, 1)].begin().get_many(["a", "b", "c"]).keys() == {"c"}
    assert parts[(TOPIC, 1)].begin().get_many(["c"])["c"].last_list[0] == "y"


def test_a_part_riding_in_an_event_batch_leaves_its_users_and_offsets_alone() -> None:
    model, refresher, parts = _stale_on_two_partitions()
    # An event batch of "a" on partition 0 (offsets 5-6), then the part rides along.
    batch = MemoryCheckpoint(OutputTopics("lists", "dead", "changelog"))
    txn = parts[(TOPIC, 0)].begin()
    txn.set_offset(6)
    result = process_batch(_clicks(["a", "a"], "w"), txn, model, 3)
    batch.add(parts[(TOPIC, 0)], StepOutcome(txn, result.recommendations), 0)
    batch.offsets[(TOPIC, 0)] = 7
    assert refresher.stage(parts, capabilities(model), batch, 0, None, exclude={"a"}) == 2
    refreshed = sorted(
        r.user_id for _, out in batch.outcomes if out.refresh for r in out.recommendations
    )
    assert refreshed == ["b", "c"]  # "a" is the batch's: its state is in the batch's transaction
    assert batch.offsets == {(TOPIC, 0): 7, (TOPIC, 1): 5}  # the batch's offset stays
    for _, out in batch.outcomes:
        out.txn.commit()
    refresher.committed(0.0)
    assert parts[(TOPIC, 0)].last_offset() == 6
    a = parts[(TOPIC, 0)].begin().get_many(["a"])["a"]
    assert a.recent_items[-2:] == ["w", "w"]  # the batch's events are in "a"'s state
