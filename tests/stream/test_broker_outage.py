"""The broker goes away mid-stream and comes back: the worker waits, resumes, stays exact.

Uses its own broker (the session broker is shared and must stay up).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from core.types import EVENT_INDEX
from state.store import RocksDBStore
from stream.cli.publish import Publisher
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker, state_root
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    running_worker,
    wait_for,
)


@pytest.mark.kafka  # starts a broker of its own
def test_worker_rides_out_a_broker_restart(unique_topics, tmp_path):
    broker = EmbeddedBroker(data_dir=tmp_path / "kafka").start(timeout=120)
    try:
        topics = unique_topics(partitions=2)
        settings = make_settings(
            broker.bootstrap,
            topics,
            tmp_path / "state",
            batch_max_events=50,
        )
        ensure_topics(settings.kafka, topic_specs(topics))
        events = make_events(1500, n_users=80, seed=41)
        worker = Worker(settings, TinyPopularity())
        with running_worker(worker), Publisher(settings) as pub:
            wait_for(worker.assigned.is_set, 60, "assignment")
            sender = threading.Thread(
                target=pub.publish, args=(events,), kwargs={"rate": 300.0}, daemon=True
            )
            sender.start()
            wait_for(lambda: worker.stats.applied >= 300, 60, "first events applied")
            broker.stop()  # clean stop; the same port and log come back below
            down_at = worker.stats.applied
            time.sleep(3)
            restarted = EmbeddedBroker(data_dir=tmp_path / "kafka", port=broker.port)
            restarted.controller_port = broker.controller_port
            broker = restarted.start(timeout=120)
            sender.join(120)
            assert not sender.is_alive()
            wait_for(lambda: worker.stats.applied >= len(events), 120, "catch up after restart")
        assert down_at < len(events)
        assert worker.stats.consumed == worker.stats.applied == len(events)
    finally:
        broker.stop()

    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ev in events:
        expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
    store = RocksDBStore(state_root(settings))
    got = {u: st.counts for t, p in store.on_disk() for u, st in store.open_partition(t, p).items()}
    store.close()
    assert got == dict(expected)
