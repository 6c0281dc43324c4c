"""Erasure and pseudonymised ids through decode -> step -> checkpoint, without a broker.

What a batch's checkpoint would produce is recorded in place of a producer;
the broker-level proofs (state show, restart, restore) are in test_erasure.py.
"""

from __future__ import annotations

import json
import threading

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from core.types import Event
from engine.config import OutputTopics
from engine.privacy import UserIds
from state.store import MemoryStore
from stream.config import KafkaConfig, PrivacyConfig, Settings, TopicsConfig
from stream.runtime.checkpoint import AtLeastOnceCheckpoint, Outputs
from stream.runtime.native import Worker
from tests.stream.helpers import TinyPopularity

TS = 1_780_000_000_000
KEY = b"k" * 32


class _Recorded:
    """Stands in for the producer: keeps what would have been produced, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(self, topic, value, key, headers=None, on_delivery=None, **kw) -> None:
        self.sent.append((topic, key, value))


def _event(offset: int, user: str, item: str) -> Message:
    doc = {"user_id": user, "item_id": item, "event": "click", "ts": TS + offset}
    return _message(offset, user, doc)


def _erase(offset: int, user: str) -> Message:
    return _message(offset, user, {"user_id": user, "erase": True})


def _message(offset: int, user: str, doc: dict) -> Message:
    return Message(
        topic="ev",
        partition=0,
        offset=offset,
        key=user.encode(),
        value=json.dumps(doc).encode(),
        timestamp=(TIMESTAMP_CREATE_TIME, TS + offset),
    )


def _run(worker: Worker, msgs: list[Message]) -> tuple[list, object]:
    """Decode, step and checkpoint one batch; what it produced, and its outcome."""
    producer = _Recorded()
    checkpoint = AtLeastOnceCheckpoint(
        Outputs(producer, threading.Event()), _topics(worker), lambda offsets: None
    )
    assert worker.model is not None
    worker.driver.model = worker.model
    (part,) = worker.store.partitions().values()
    (sources,) = worker._group(msgs).values()
    batch = worker.driver.decode(part, sources, checkpoint)
    assert batch is not None
    outcome = worker.driver.guard.step(batch, part, worker.driver.caps)
    checkpoint.add(part, outcome, TS)
    checkpoint._produce_all()
    checkpoint.commit_state()
    return producer.sent, outcome


def _topics(worker: Worker) -> OutputTopics:
    t = worker.settings.topics
    return OutputTopics(t.recommendations, t.dead_letter, "changelog")


def _worker(store: MemoryStore, model: object, key: bytes | None = None) -> Worker:
    settings = Settings(
        kafka=KafkaConfig(bootstrap_servers="unused:9092"),
        topics=TopicsConfig(events="ev", partitions=1),
        privacy=PrivacyConfig(id_key=key),
    )
    store.open_partition("ev", 0)  # assigned
    return Worker(settings, model, store=store)


def test_an_erasure_deletes_the_user_before_the_batch_and_is_never_learnt_from():
    store, model = MemoryStore(), TinyPopularity()
    worker = _worker(store, model)
    _run(worker, [_event(0, "u1", "old"), _event(1, "u2", "x")])
    assert model.counts == {"old": 1, "x": 1}

    sent, outcome = _run(
        worker,
        [
            _event(2, "u1", "gone"),  # before u1's erasure in the same batch: dropped
            _event(3, "u2", "x"),
            _erase(4, "u1"),
            _event(5, "u1", "new"),  # after it: a new state
            _erase(6, "ghost"),  # unknown: not an error
        ],
    )
    assert outcome.erased == [("u1", True), ("ghost", False)]
    assert model.counts == {"old": 1, "x": 2, "new": 1}  # "gone" never learnt
    recs = [(key, value) for topic, key, value in sent if topic == "interest.recommendations"]
    # Tombstones first (the compacted topic drops the old list for every subscriber),
    # then the lists of the batch: u1's new one made only from "new".
    assert recs[:2] == [(b"u1", None), (b"ghost", None)]
    lists = {key: json.loads(value) for key, value in recs[2:]}
    assert set(lists) == {b"u1", b"u2"} and lists[b"u1"]["user_id"] == "u1"
    changelog = {key: value for topic, key, value in sent if topic == "changelog"}
    assert changelog[b"ughost"] is None and changelog[b"uu1"] is not None
    part = store.open_partition("ev", 0)
    st = part.get("u1")
    assert st is not None and st.recent_items == ["new"] and st.n_events == 1
    assert part.get("ghost") is None and part.user_count() == 2


def test_an_erased_user_without_later_events_gets_only_a_tombstone():
    store = MemoryStore()
    worker = _worker(store, TinyPopularity())
    _run(worker, [_event(0, "u1", "a"), _event(1, "u2", "b")])
    sent, _ = _run(worker, [_event(2, "u1", "c"), _erase(3, "u1"), _erase(4, "u1")])
    recs = [(key, value) for topic, key, value in sent if topic == "interest.recommendations"]
    assert recs == [(b"u1", None)]  # one tombstone, no list made from the dropped event
    changelog = [(key, value) for topic, key, value in sent if topic == "changelog"]
    assert (b"uu1", None) in changelog
    part = store.open_partition("ev", 0)
    assert part.get("u1") is None and part.user_count() == 1


def test_pseudonymised_ids_are_all_that_is_stored_and_lists_keep_the_producers_id():
    store = MemoryStore()
    worker = _worker(store, TinyPopularity(), key=KEY)
    ids = UserIds(KEY)
    sent, outcome = _run(worker, [_event(0, "alice", "i1"), _event(1, "bob", "i2")])
    part = store.open_partition("ev", 0)
    assert sorted(u for u, _ in part.items()) == sorted([ids.of("alice"), ids.of("bob")])
    assert part.ids() == ids.scheme and part.ids() != b"plain"
    for topic, key, value in sent:
        if topic == "changelog":  # keys, states and the ids record: never a raw id
            assert b"alice" not in key and b"alice" not in (value or b"")
    lists = {k: json.loads(v) for t, k, v in sent if t == "interest.recommendations"}
    assert lists[b"alice"]["user_id"] == "alice" and lists[b"bob"]["user_id"] == "bob"
    assert {rec.user_id for rec in outcome.recommendations} == {"alice", "bob"}

    sent, _ = _run(worker, [_erase(2, "alice")])
    recs = [(k, v) for t, k, v in sent if t == "interest.recommendations"]
    assert recs == [(b"alice", None)]  # under the key the producer used
    assert (b"u" + ids.of("alice").encode(), None) in [(k, v) for t, k, v in sent]
    assert part.get(ids.of("alice")) is None and part.user_count() == 1


def test_the_stored_ids_scheme_stops_a_worker_with_another_key():
    store = MemoryStore()
    _run(_worker(store, TinyPopularity(), key=KEY), [_event(0, "alice", "i1")])
    for other in (b"x" * 32, None):
        worker = _worker(store, TinyPopularity(), key=other)
        try:
            _run(worker, [_event(1, "alice", "i2")])
        except Exception as exc:  # noqa: BLE001 - the type is checked below
            assert type(exc).__name__ == "ConfigError" and "new consumer group" in str(exc)
            assert "alice" not in str(exc)
        else:
            raise AssertionError("a worker with another key applied the event")


def test_models_that_keep_users_forget_them():
    from model.baselines.classic import IncrementalMF

    store, model = MemoryStore(), IncrementalMF(seed=1)
    worker = _worker(store, model)
    _run(worker, [_event(0, "u1", "i1"), _event(1, "u2", "i2")])
    assert set(model._p) == {"u1", "u2"}
    _run(worker, [_erase(2, "u1")])
    assert set(model._p) == {"u2"}
    assert "u1" not in model.state_dict().meta["users"]


def test_pseudonymised_events_decode_to_pseudonyms():
    worker = _worker(MemoryStore(), TinyPopularity(), key=KEY)
    producer = _Recorded()
    checkpoint = AtLeastOnceCheckpoint(
        Outputs(producer, threading.Event()), _topics(worker), lambda o: None
    )
    (part,) = worker.store.partitions().values()
    (sources,) = worker._group([_event(0, "carol", "i1")]).values()
    batch = worker.driver.decode(part, sources, checkpoint)
    assert batch is not None
    assert batch.events == [Event(UserIds(KEY).of("carol"), "i1", "click", TS)]
    assert batch.keys == {UserIds(KEY).of("carol"): b"carol"}
