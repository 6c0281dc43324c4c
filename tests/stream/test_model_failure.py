"""A model that fails on some valid events: those are dead-lettered, the rest flow on."""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
import torch

from core.types import EVENT_INDEX
from engine.events import decode_recommendation
from state.store import MemoryStore, RocksDBStore, StateStoreError
from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import ModelError, Worker, state_root
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    read_topic,
    running_worker,
    wait_for,
)


class FragileModel(TinyPopularity):
    """Raises whenever it meets the item ``boom`` (or every item, when ``always``)."""

    name = "fragile"
    version = "fragile-1"

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.always = always

    def learn_many(self, events, before) -> None:  # noqa: ANN001
        if self.always or any(ev.item_id == "boom" for ev in events):
            raise RuntimeError("cannot learn this")
        super().learn_many(events, before)


def test_events_the_model_fails_on_are_dead_lettered(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=100,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(600, n_users=40, seed=71)
    events = [replace(ev, item_id="boom") if i % 97 == 13 else ev for i, ev in enumerate(events)]
    booms = sum(ev.item_id == "boom" for ev in events)
    with Publisher(settings) as pub:
        pub.publish(events)
    worker = Worker(settings, FragileModel())
    with running_worker(worker):
        wait_for(lambda: worker.stats.consumed >= len(events), 60, "all consumed")
    s = worker.stats
    assert s.dead_lettered == booms and s.applied == len(events) - booms
    assert s.dead_letters_by_reason == Counter({"processing-error": booms})

    dead = read_topic(settings.kafka, topics.dead_letter)
    assert {dict(m.headers())["detail"] for m in dead} == {b"RuntimeError"}
    assert all(b'"boom"' in m.value() for m in dead)

    lists = [
        decode_recommendation(m.value()) for m in read_topic(settings.kafka, topics.recommendations)
    ]
    assert max(Counter((d["user_id"], d["generated_at"]) for d in lists).values()) == 1
    assert {d["user_id"] for d in lists} == {ev.user_id for ev in events if ev.item_id != "boom"}

    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ev in events:
        if ev.item_id != "boom":
            expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
    store = RocksDBStore(state_root(settings))
    got = {u: st.counts for t, p in store.on_disk() for u, st in store.open_partition(t, p).items()}
    store.close()
    assert got == dict(expected)


def test_a_model_that_always_fails_stops_the_worker(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=1)
    settings = make_settings(
        kafka_bootstrap, topics, tmp_path / "state", f"g-{uuid.uuid4().hex[:8]}"
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    with Publisher(settings) as pub:
        pub.publish(make_events(200, n_users=10, seed=72))
    worker = Worker(settings, FragileModel(always=True))
    with pytest.raises(ModelError, match="failed on 50 events in a row"):
        worker.run(threading.Event())  # returns only by giving up
    assert worker.stats.applied == 0
    store = RocksDBStore(state_root(settings))
    assert store.open_partition(topics.events, 0).last_offset() is None  # nothing committed
    store.close()


def test_an_unreadable_user_state_stops_the_worker_instead_of_dead_lettering(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=1)
    settings = make_settings(
        kafka_bootstrap, topics, tmp_path / "state", f"g-{uuid.uuid4().hex[:8]}"
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(200, n_users=10, seed=73)
    with Publisher(settings) as pub:
        pub.publish(events)
    store = MemoryStore()
    store.open_partition(topics.events, 0)
    store._data[(topics.events, 0)][b"u" + events[0].user_id.encode()] = b"not a state"
    worker = Worker(settings, TinyPopularity(), store=store)
    stop = threading.Event()
    guard = threading.Timer(30, stop.set)  # before the fix the worker ran on
    guard.start()
    try:
        with pytest.raises(StateStoreError, match="unreadable"):
            worker.run(stop)
    finally:
        guard.cancel()
    assert worker.stats.dead_lettered == 0
    assert read_topic(settings.kafka, topics.dead_letter) == []


class StepsThenFails(TinyPopularity):
    """Takes a torch optimiser step on every batch, then fails on batches holding ``boom``."""

    name = "steps-then-fails"
    version = "steps-then-fails-1"

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self._opt = torch.optim.SGD([self.weight], lr=0.1)
        self.learnt: Counter = Counter()

    def learn_many(self, events, before) -> None:  # noqa: ANN001
        self._opt.zero_grad()
        (self.weight * len(events)).sum().backward()
        self._opt.step()
        self.learnt.update((ev.user_id, ev.ts) for ev in events)
        super().learn_many(events, before)
        if len(events) > 1 and any(ev.item_id == "boom" for ev in events):
            raise RuntimeError("failed after the optimiser step")


def test_a_batch_that_failed_after_learning_is_not_learnt_again(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=1)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=50,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(400, n_users=30, seed=74)
    events = [replace(ev, item_id="boom") if i % 61 == 7 else ev for i, ev in enumerate(events)]
    with Publisher(settings) as pub:
        pub.publish(events)
    model = StepsThenFails()
    worker = Worker(settings, model)
    with running_worker(worker):
        wait_for(lambda: worker.stats.consumed >= len(events), 60, "all consumed")
    assert worker.stats.applied == len(events) and worker.stats.dead_lettered == 0
    assert max(model.learnt.values()) == 1  # never learnt twice
