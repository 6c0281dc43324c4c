"""A worker's logs name partitions, offsets and reasons, never the user ids it was fed.

The worker gets a stream made to make it talk: malformed and mismatched
messages, events on the wrong partition (forwarded, a WARNING), a model that
fails on some users with their id in the exception (WARNINGs, dead letters),
erasures (INFO), then a state it cannot read (the error that stops it). Every
log record at INFO and above, and that error, are searched for every user id
published. With ``log_ids`` on, the same failure does name the user: the
search would find one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import replace

import pytest
from confluent_kafka import Producer

from core.errors import InterestStreamError
from core.partition import partition_for
from core.types import Event, UserState
from engine.events import encode_erasure, encode_event
from engine.isolation import ModelGuard
from engine.privacy import exception_text
from model.capabilities import capabilities
from state.store import RocksDBStore
from stream.cli.publish import Publisher
from stream.config import PrivacyConfig
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker, state_root
from tests.stream.helpers import TinyPopularity, make_settings, running_worker, wait_for


class _FailsOnSomeUsers(TinyPopularity):
    """Raises KeyError(user id), as a model bug would, for users whose id has "fail"."""

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        for ev in events:
            if "fail" in ev.user_id:
                raise KeyError(ev.user_id)
        super().learn_many(events, before)


def test_worker_logs_never_name_the_users_it_was_fed(
    kafka_bootstrap, unique_topics, tmp_path, caplog
):
    topics = unique_topics(partitions=2)
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "state", batch_max_events=20)
    ensure_topics(settings.kafka, topic_specs(topics))
    tag = uuid.uuid4().hex[:8]
    users = [f"ann-{tag}-{i}" for i in range(8)] + [f"fail-{tag}-{i}" for i in range(3)]
    now = 1_780_000_000_000
    events = [Event(u, f"i{i % 7}", "click", now + i) for i, u in enumerate(users * 6)]
    wrong = {u: 1 - partition_for(u.encode(), 2) for u in users}
    bad = [
        (users[0].encode(), json.dumps({"user_id": users[1], "item_id": "i", "event": "click"})),
        (users[2].encode(), json.dumps({"user_id": users[2], "item_id": "i", "event": "hover"})),
        (users[3].encode(), json.dumps({"user_id": users[3], "erase": "please"})),
        (users[4].encode(), "{not json " + users[4]),
    ]
    with Publisher(settings) as pub:
        for ev in events:
            pub.send(*encode_event(ev))
        for key, value in bad:
            pub.send(key, value.encode())
        pub.send(*encode_erasure(users[5]))
        pub.flush()
    # Events of every user on the partition their key does not hash to: forwarded.
    stray = Producer(settings.kafka.client_config())
    for i, u in enumerate(users):
        key, value = encode_event(Event(u, "i-wrong", "click", now + 100 + i))
        stray.produce(topics.events, value, key, partition=wrong[u])
    stray.flush(10)
    total = len(events) + len(bad) + 1 + len(users)

    worker = Worker(settings, _FailsOnSomeUsers())
    with caplog.at_level("INFO"), running_worker(worker):
        wait_for(lambda: worker.stats.consumed >= total + len(users), 90, "every message")
    assert worker.stats.dead_letters_by_reason.get("processing-error", 0) >= 3
    assert worker.stats.forwarded == len(users) and worker.stats.erasures == 1
    text = caplog.text
    assert "model failed on a batch" in text and "KeyError at test_log_privacy.py" in text
    assert "forwarded to the right one" in text and "erased 1 user(s)" in text

    # A state it cannot read stops the worker: the error names the partition only.
    victim = users[0]
    part_no = partition_for(victim.encode(), 2)
    store = RocksDBStore(state_root(settings))
    store.open_partition(topics.events, part_no).backend.write_atomic(
        {b"u" + victim.encode(): b"not a state"}
    )
    store.close()
    with Publisher(settings) as pub:
        pub.send(*encode_event(Event(victim, "i1", "click", now + 1000)))
        pub.flush()
    again = Worker(settings, TinyPopularity())
    with caplog.at_level("INFO"), pytest.raises(InterestStreamError) as stopped:
        with running_worker(again):
            wait_for(lambda: again.stats.finished_at is not None, 60, "the worker to stop")
    error = str(stopped.value)
    assert "unreadable" in error and f"{topics.events}[{part_no}]" in error

    logged = caplog.text + error
    for user in users:
        assert user not in logged, user
    assert tag not in logged


def test_with_log_ids_the_same_failure_names_the_user():
    try:
        raise KeyError("fail-user-7")
    except KeyError as exc:
        caught = exc
    assert "fail-user-7" not in exception_text(caught, log_ids=False)
    assert exception_text(caught, log_ids=True) == "KeyError: 'fail-user-7'"
    warned: list[tuple[str, BaseException | None]] = []
    from engine.batch import PartitionBatch, Source
    from state.store import MemoryStore

    part = MemoryStore().open_partition("ev", 0)
    for log_ids in (False, True):
        guard = ModelGuard(10, lambda kind, text, exc: warned.append((text, exc)), log_ids=log_ids)
        batch = PartitionBatch("ev", 0, 0, 0)
        batch.add(
            Event("fail-user-7", "i1", "click", 1_780_000_000_000), Source("ev", 0, 0, b"", b"")
        )
        guard.step(batch, part, capabilities(_FailsOnSomeUsers()))
    (quiet, no_trace), (loud, trace) = warned
    assert "fail-user-7" not in quiet and no_trace is None
    assert "fail-user-7" in loud and isinstance(trace, KeyError)


def test_log_ids_setting_reaches_the_worker():
    from stream.config import KafkaConfig, Settings

    settings = Settings(
        kafka=KafkaConfig(bootstrap_servers="unused:9092"), privacy=PrivacyConfig(log_ids=True)
    )
    assert Worker(settings, TinyPopularity()).driver.guard.log_ids is True
    assert (
        Worker(replace(settings, privacy=PrivacyConfig()), TinyPopularity()).driver.guard.log_ids
        is False
    )
