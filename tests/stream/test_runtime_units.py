"""Runtime rules that need no broker: offsets only move forward, state stays under its dir."""

from __future__ import annotations

import errno
import json
import os
import threading

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from core.errors import ConfigError
from engine.checkpoint import Checkpoint
from state.store import MemoryStore
from stream.config import KafkaConfig, Settings
from stream.runtime import identity
from stream.runtime.checkpoint import AtLeastOnceCheckpoint, Outputs
from stream.runtime.native import Worker
from tests.stream.helpers import TinyPopularity

TS = 1_780_000_000_000


def _msg(offset: int, user: str = "u1") -> Message:
    value = json.dumps(
        {"user_id": user, "item_id": f"i{offset}", "event": "click", "ts": TS + offset}
    ).encode()
    return Message(
        topic="ev",
        partition=0,
        offset=offset,
        key=user.encode(),
        value=value,
        timestamp=(TIMESTAMP_CREATE_TIME, TS + offset),
    )


class _Recorded:
    """Stands in for the producer: keeps what would have been produced."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, ...]] = []

    def produce(self, topic, value, key, headers=None, on_delivery=None) -> None:
        self.sent.append((topic, key, value, headers))


def _checkpoint() -> Checkpoint:
    outputs = Outputs(_Recorded(), threading.Event())
    return AtLeastOnceCheckpoint(outputs, Settings().output_topics(), lambda offsets: None)


def test_a_message_handed_out_twice_in_one_poll_is_applied_once():
    store = MemoryStore()
    part = store.open_partition("ev", 0)
    txn = part.begin()
    txn.set_offset(9)
    txn.commit()
    worker = Worker(
        Settings(kafka=KafkaConfig(bootstrap_servers="unused:9092")), TinyPopularity(), store=store
    )
    # Offsets 8-9 are already in state; 10-11 come twice, as after a re-seek mid-poll.
    plist = [_msg(o) for o in (8, 9, 10, 11, 10, 11, 12)]
    (sources,) = worker._group(plist).values()
    batch = worker.driver.decode(part, sources, _checkpoint())
    assert batch is not None
    assert [ev.item_id for ev in batch.events] == ["i10", "i11", "i12"]
    assert [src.offset for src in batch.sources] == [10, 11, 12]
    assert batch.last_offset == 12 and batch.messages == 3


def test_messages_of_a_partition_revoked_mid_poll_are_left_for_the_new_owner():
    worker = Worker(
        Settings(kafka=KafkaConfig(bootstrap_servers="unused:9092")),
        TinyPopularity(),
        store=MemoryStore(),
    )
    checkpoint = _checkpoint()
    polled = worker._group([_msg(0)])
    assert worker.driver.run(polled, worker._refreshable(), checkpoint) is None
    assert checkpoint.messages == 0 and not checkpoint.offsets


def test_group_name_cannot_escape_the_state_dir(tmp_path):
    from stream.config import WorkerConfig
    from stream.runtime.preflight import state_root

    for group in ("../../etc", "..", ".", "a/b", "interest-stream"):
        root = state_root(Settings(worker=WorkerConfig(group=group, state_dir=tmp_path)))
        assert root.parent == tmp_path and root.name not in ("", ".", "..")


def test_latency_percentiles_and_summary():
    from engine.stats import WorkerStats, percentile

    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    stats = WorkerStats()
    assert stats.summary()["consumed"] == 0
    stats.add_latencies([0.010, 0.020, 0.030])
    assert stats.latency_ms(50) == 20.0
    stats.clear_latencies()
    assert stats.summary()["latency_p50_ms"] is None


def test_repeated_client_errors_are_logged_once_per_window(caplog):
    from confluent_kafka import KafkaError

    worker = Worker(
        Settings(kafka=KafkaConfig(bootstrap_servers="unused:9092")),
        TinyPopularity(),
        store=MemoryStore(),
    )
    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        for i in range(50):
            worker._on_client_error(KafkaError(KafkaError._TRANSPORT, f"refused after {i}ms"))
        worker._on_client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["Kafka client: refused after 0ms", "Kafka client: 1/1 brokers are down"]


def test_the_worker_applies_the_id_byte_limit_from_its_settings():
    from stream.config import WorkerConfig

    store = MemoryStore()
    part = store.open_partition("ev", 0)
    settings = Settings(
        kafka=KafkaConfig(bootstrap_servers="unused:9092"), worker=WorkerConfig(max_id_bytes=2)
    )
    worker = Worker(settings, TinyPopularity(), store=store)
    checkpoint = _checkpoint()
    (sources,) = worker._group([_msg(o) for o in (8, 9, 10)]).values()
    batch = worker.driver.decode(part, sources, checkpoint)
    assert batch is not None
    assert [ev.item_id for ev in batch.events] == ["i8", "i9"]
    assert [(src.offset, r.reason, r.detail) for src, r in checkpoint.dead_letters] == [
        (10, "bad-id", "item_id: longer than 2 bytes")
    ]


def test_the_partition_count_read_at_start_is_no_change_but_a_later_one_is(caplog):
    from engine.placement import Placement

    placement = Placement(4)  # the configured count of new topics
    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        placement.resize(2)  # the topic as the worker finds it at start
        assert placement.partitions == 2 and not caplog.records
        placement.resize(2)
        assert not caplog.records
        placement.resize(3)
    assert placement.partitions == 3
    assert [r.getMessage()[:45] for r in caplog.records] == [
        "the events topic now has 3 partitions (was 2)"
    ]


def test_a_worker_id_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(identity.os, "fsync", full)
    with pytest.raises(ConfigError, match="cannot write .*worker-id: No space left on device"):
        identity.WorkerIdentity(tmp_path).acquire()
