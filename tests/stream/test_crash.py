"""SIGKILL the worker process mid-stream, again and again: state stays exact."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, KafkaException, TopicPartition

from core.types import EVENT_INDEX
from engine.events import NEWCOMERS_ID, decode_recommendation, encode_event
from state.store import RocksDBStore
from stream.cli.publish import Publisher
from stream.config import KafkaConfig
from stream.kafka.topics import ensure_topics, topic_specs
from tests.stream.helpers import (
    committed_all,
    make_events,
    make_settings,
    read_topic,
    wait_for,
    worker_env,
)

KILLS = 4


def _watermark_sum(kafka: KafkaConfig, topic: str, partitions: int) -> int:
    c = Consumer(kafka.client_config(**{"group.id": "watermarks"}))
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    except KafkaException:
        return -1  # a fresh topic's leaders are still being elected
    finally:
        c.close()


def test_sigkill_mid_stream_never_loses_or_doubles_an_event(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=4)
    group = f"crash-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "state"
    settings = make_settings(kafka_bootstrap, topics, state_dir, group)
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(5000, n_users=200, seed=11)
    env = worker_env(kafka_bootstrap, topics, group, state_dir)
    cmd = [sys.executable, "-m", "stream.cli", "worker"]
    rng = random.Random(7)

    stop_pub = threading.Event()

    # Paced in a thread so every kill lands while events are still arriving.
    def paced() -> None:
        with Publisher(settings) as pub:
            for i, ev in enumerate(events):
                if stop_pub.wait(1 / 400):
                    return
                pub.send(*encode_event(ev))
                if i % 50 == 49:
                    pub.send(b"junk", b"not json at all")
            pub.flush()

    publisher = threading.Thread(target=paced, daemon=True)
    publisher.start()
    kills = 0
    mid_stream = 0
    try:
        for _ in range(KILLS):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                base = max(0, _watermark_sum(settings.kafka, topics.recommendations, 4))
                target = base + rng.randint(1, 120)
                wait_for(
                    lambda t=target: _watermark_sum(settings.kafka, topics.recommendations, 4) >= t,
                    60,
                    "worker progress before the kill",
                )
            finally:
                mid_stream += publisher.is_alive()
                proc.kill()
                proc.wait(30)
            kills += 1
        print(f"{kills} kills, {mid_stream} while events were still arriving")
        assert mid_stream >= 2
        publisher.join(60)
        assert not publisher.is_alive()

        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(
                lambda: committed_all(settings.kafka, group, topics.events, 4),
                90,
                "final worker to catch up",
            )
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    finally:
        stop_pub.set()

    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ev in events:
        expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
    store = RocksDBStore(state_dir / group)
    got = {}
    for topic, p in store.on_disk():
        part = store.open_partition(topic, p)
        got.update({u: st.counts for u, st in part.items()})
    store.close()
    assert got == dict(expected)

    # Outputs are at-least-once: nothing lost, duplicates allowed.
    newest = {ev.user_id: ev.ts for ev in events}
    latest_list: dict[str, int] = {}
    for m in read_topic(settings.kafka, topics.recommendations):
        doc = decode_recommendation(m.value())
        latest_list[doc["user_id"]] = max(latest_list.get(doc["user_id"], 0), doc["event_ts"])
    latest_list.pop(NEWCOMERS_ID, None)  # the list for unknown users
    assert latest_list == newest
    sources = {dict(m.headers())["source"] for m in read_topic(settings.kafka, topics.dead_letter)}
    assert len(sources) == len(events) // 50
