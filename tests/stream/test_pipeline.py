"""The worker end to end on the real broker and real RocksDB."""

from __future__ import annotations

import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from core.types import EVENT_INDEX
from engine.events import NEWCOMERS_ID, decode_recommendation
from state.store import RocksDBStore
from stream.cli.publish import Publisher
from stream.kafka.broker import free_port
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker, state_root
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    read_topic,
    running_worker,
    wait_for,
)


def test_every_touched_user_gets_lists_without_purchased_items(
    kafka_bootstrap, unique_topics, tmp_path
):
    # A backlog: the batches grow from 150 towards 600 events (catching up) and the
    # cap comes back to 150 once the worker has caught up; nothing else changes.
    topics = unique_topics(partitions=4)
    port = free_port()
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=150,
        batch_catch_up_events=600,
        metrics_port=port,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(3000, n_users=300)
    with Publisher(settings) as pub:
        pub.publish(events)

    registry = CollectorRegistry()
    worker = Worker(settings, TinyPopularity(), registry=registry)
    with running_worker(worker):
        wait_for(lambda: worker.stats.applied >= len(events), 90, "all events applied")
        wait_for(
            lambda: all(
                registry.get_sample_value(
                    "interest_consumer_lag_messages", {"topic": topics.events, "partition": str(p)}
                )
                == 0
                for p in range(4)
            ),
            30,
            "consumer lag 0 on every partition",
        )
        wait_for(
            lambda: registry.get_sample_value("interest_batch_cap_events") == 150,
            30,
            "the batch cap back to batch_max_events",
        )
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    stats = worker.stats
    sizes = {
        le: registry.get_sample_value("interest_batch_size_events_bucket", {"le": le})
        for le in ("250.0", "500.0", "1000.0")
    }
    batches = registry.get_sample_value("interest_batch_size_events_count")
    assert sizes["250.0"] < batches  # batches above 250 events: the cap grew
    assert sizes["1000.0"] == batches  # never above 600
    assert stats.consumed == stats.applied == len(events) and stats.dead_lettered == 0
    metrics = body.decode()
    for name in (
        "interest_messages_consumed_total 3000.0",
        "interest_events_applied_total 3000.0",
        "interest_event_to_list_latency_seconds_bucket",
        "interest_consumer_lag_messages",
        "interest_users_in_state",
        'interest_stage_seconds_count{stage="step"}',
        f"interest_lists_published_total {float(stats.lists_published)}",
    ):
        assert name in metrics, name
    assert stats.scored == len(events) and 0 < stats.hits <= stats.scored
    assert registry.get_sample_value("interest_list_hits_total") == stats.hits
    kinds = Counter(ev.event for ev in events)
    for kind, n in kinds.items():
        assert f'interest_events_consumed_total{{event="{kind}"}} {float(n)}' in metrics

    lists = [
        decode_recommendation(m.value()) for m in read_topic(settings.kafka, topics.recommendations)
    ]
    assert len(lists) == stats.lists_published
    by_user = defaultdict(list)
    for doc in lists:
        by_user[doc["user_id"]].append(doc)
    by_user.pop(NEWCOMERS_ID, None)  # the list for unknown users, when a refresh sent it
    assert set(by_user) == {ev.user_id for ev in events}

    # One list per user per micro-batch: generated_at identifies the batch.
    per_batch = Counter((doc["user_id"], doc["generated_at"]) for doc in lists)
    assert max(per_batch.values()) == 1

    purchases = defaultdict(list)  # user -> [(ts, item)]
    for ev in events:
        if ev.event == "purchase":
            purchases[ev.user_id].append((ev.ts, ev.item_id))
    newest = {}
    for ev in events:
        newest[ev.user_id] = ev.ts
    for user, docs in by_user.items():
        for doc in docs:
            assert len(doc["items"]) == 10 and doc["model_version"] == "tiny-pop-1"
            bought = {item for ts, item in purchases[user] if ts <= doc["event_ts"]}
            assert not bought & {it["item_id"] for it in doc["items"]}, (user, doc)
        assert max(d["event_ts"] for d in docs) == newest[user]

    # State after a clean stop: exact counters per user and event type.
    expected = defaultdict(lambda: [0, 0, 0, 0])
    for ev in events:
        expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
    store = RocksDBStore(state_root(settings))
    got = {}
    for topic, p in store.on_disk():
        part = store.open_partition(topic, p)
        got.update({u: st.counts for u, st in part.items()})
    store.close()
    assert got == dict(expected)


def _rewind_group(settings, topic: str, partitions: int) -> None:
    c = Consumer(
        settings.kafka.client_config(
            **{"group.id": settings.worker.group, "enable.auto.commit": False}
        )
    )
    try:
        c.commit(
            offsets=[TopicPartition(topic, p, 0) for p in range(partitions)], asynchronous=False
        )
    finally:
        c.close()


def test_restart_resumes_after_the_stored_offset(kafka_bootstrap, unique_topics, tmp_path):
    """A second run neither reprocesses the first run's events nor misses new ones,
    even when the group's committed offsets are behind the state (a lost commit)."""
    topics = unique_topics(partitions=2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=100,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    first, second = make_events(400, 50, seed=2), make_events(300, 50, seed=3)
    for wave, expected in ((first, 400), (second, 300)):
        with Publisher(settings) as pub:
            pub.publish(wave)
        worker = Worker(settings, TinyPopularity())
        with running_worker(worker):
            wait_for(lambda w=worker, n=expected: w.stats.consumed >= n, 60, "wave consumed")
        assert worker.stats.consumed == worker.stats.applied == expected
        _rewind_group(settings, topics.events, 2)
    store = RocksDBStore(state_root(settings))
    total = sum(
        st.n_events for t, p in store.on_disk() for _, st in store.open_partition(t, p).items()
    )
    store.close()
    assert total == 700


def _counts_in(root) -> list[dict[str, list[int]]]:
    store = RocksDBStore(root)
    try:
        return [
            {u: st.counts for u, st in store.open_partition(t, p).items()}
            for t, p in store.on_disk()
        ]
    finally:
        store.close()


def test_rebalance_hands_partitions_over_without_loss_or_double_apply(
    kafka_bootstrap, unique_topics, tmp_path
):
    """A second worker joins mid-stream and leaves again: partitions move, stores open and
    close with them, state follows through the changelog, and every event is applied
    exactly once to the state of its partition's last owner."""
    topics = unique_topics(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = Worker(
        make_settings(kafka_bootstrap, topics, tmp_path / "a", group, batch_max_events=50),
        TinyPopularity(),
    )
    b = Worker(
        make_settings(kafka_bootstrap, topics, tmp_path / "b", group, batch_max_events=50),
        TinyPopularity(),
    )
    ensure_topics(a.settings.kafka, topic_specs(topics))
    first, second = make_events(1500, 150, seed=21), make_events(1500, 150, seed=22)
    with running_worker(a):
        with Publisher(a.settings) as pub:
            pub.publish(first)
        wait_for(lambda: a.stats.applied >= 1500, 60, "first wave on worker a")
        assert len(a.store.partitions()) == 4
        with running_worker(b):
            wait_for(
                lambda: len(b.store.partitions()) >= 1 and len(a.store.partitions()) < 4,
                60,
                "worker b to take partitions",
            )
            assert set(a.store.partitions()).isdisjoint(b.store.partitions())
            with Publisher(a.settings) as pub:
                pub.publish(second)
            wait_for(lambda: a.stats.applied + b.stats.applied >= 3000, 60, "second wave")
            moved_to_b = b.stats.applied
            # A forgets the gauges of the partitions it gave away.
            a_lag = {
                int(s.labels["partition"])
                for metric in a.metrics.registry.collect()
                if metric.name == "interest_consumer_lag_messages"
                for s in metric.samples
            }
            assert a_lag <= {p for _, p in a.store.partitions()}
        # B left: A takes its partitions back and restores what B did from the changelog.
        wait_for(
            lambda: len(a.store.partitions()) == 4 and not a.restoring, 60, "a to own all again"
        )
    assert moved_to_b > 0
    assert a.stats.consumed + b.stats.consumed == 3000

    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ev in first + second:
        expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
    got: dict[str, list[int]] = {}
    for part in _counts_in(state_root(a.settings)):
        assert not set(part) & set(got)  # a user lives in one partition
        got.update(part)
    assert got == dict(expected)


@pytest.mark.parametrize(
    "client",
    [
        {"partition.assignment.strategy": "range"},
        {"group.protocol": "consumer"},
    ],
    ids=["eager-range", "kip848-consumer-protocol"],
)
def test_other_group_protocols_resume_from_the_stored_offset(
    kafka_bootstrap, unique_topics, tmp_path, client
):
    topics = unique_topics(partitions=2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=50,
    )
    settings = replace(settings, kafka=replace(settings.kafka, client=client))
    ensure_topics(settings.kafka, topic_specs(topics))
    for n, seed in ((200, 31), (100, 32)):
        with Publisher(settings) as pub:
            pub.publish(make_events(n, 20, seed=seed))
        worker = Worker(settings, TinyPopularity())
        with running_worker(worker):
            wait_for(lambda w=worker, n=n: w.stats.applied >= n, 60, "events applied")
            assert worker.assigned.is_set()
        assert worker.stats.consumed == n


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_state_follows_the_partition_through_the_changelog(
    kafka_bootstrap, unique_topics, tmp_path, guarantee
):
    """A partition moves to a worker with no local state and comes back to a stale one:
    each restores from the changelog, never replays, and the state ends exact."""
    topics = unique_topics(partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    mode = {"processing_guarantee": guarantee}
    home = make_settings(kafka_bootstrap, topics, tmp_path / "home", group, **mode)
    away = make_settings(kafka_bootstrap, topics, tmp_path / "away", group, **mode)
    ensure_topics(home.kafka, topic_specs(topics))
    waves = [make_events(200, 30, seed=s) for s in (51, 52, 53)]
    for settings, wave in zip((home, away, home), waves, strict=True):
        with Publisher(settings) as pub:
            pub.publish(wave)
        worker = Worker(settings, TinyPopularity())
        with running_worker(worker):
            wait_for(lambda w=worker: w.stats.applied >= 200, 60, "wave applied")
        assert worker.stats.applied == worker.stats.consumed == 200  # only its own wave
    (away_counts,) = _counts_in(state_root(away))
    before_home_came_back: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ev in waves[0] + waves[1]:
        before_home_came_back[ev.user_id][EVENT_INDEX[ev.event]] += 1
    assert away_counts == dict(before_home_came_back)  # it started from home's state
    (home_counts,) = _counts_in(state_root(home))
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ev in waves[0] + waves[1] + waves[2]:
        expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
    assert home_counts == dict(expected)


@pytest.mark.parametrize("model_name", ["interest", "popular"])
def test_served_models_never_list_a_purchased_item(
    kafka_bootstrap, unique_topics, tmp_path, model_name
):
    """The same promise with the models the worker command serves (via the factory)."""
    from model.factory import create_serving_model

    topics = unique_topics(partitions=2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=100,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    # Few items and many purchases, so exclusion is exercised hard.
    events = make_events(1500, n_users=60, n_items=40, seed=61)
    events = [replace(ev, event="purchase") if i % 5 == 0 else ev for i, ev in enumerate(events)]
    with Publisher(settings) as pub:
        pub.publish(events)
    worker = Worker(settings, create_serving_model(model_name))
    with running_worker(worker):
        wait_for(lambda: worker.stats.applied >= len(events), 90, "all events applied")
    purchases = defaultdict(list)
    seen = defaultdict(set)
    for ev in events:
        seen[ev.user_id].add(ev.item_id)
        if ev.event == "purchase":
            purchases[ev.user_id].append((ev.ts, ev.item_id))
    users = set()
    for m in read_topic(settings.kafka, topics.recommendations):
        doc = decode_recommendation(m.value())
        if doc["user_id"] == NEWCOMERS_ID:
            continue  # no user: it excludes nothing and explains nothing
        users.add(doc["user_id"])
        bought = {item for ts, item in purchases[doc["user_id"]] if ts <= doc["event_ts"]}
        assert not bought & {it["item_id"] for it in doc["items"]}
        assert doc["items"], "an empty list"
        if model_name == "interest":  # it names the recent items behind each list
            assert doc["explanation"] and set(doc["explanation"]) <= seen[doc["user_id"]]
        else:
            assert "explanation" not in doc
    assert users == {ev.user_id for ev in events}
