"""A state directory that runs out of space: the worker stops, a restart with space loses nothing.

The worker is a real process on the real broker (``tests.stream.full_disk_worker``:
the CLI with RocksDB writes failing as on a full disk once a flag file exists).
With exactly-once, a batch's Kafka transaction (lists, changelog, offsets) commits
before its state is written, so the write that fails belongs to a batch Kafka
already has: the restarted worker must take it from the changelog, neither
losing it nor reading its events again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from core.types import EVENT_INDEX
from engine.events import decode_recommendation
from state.store import RocksDBStore
from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from tests.stream.helpers import (
    committed_all,
    coordinator_not_ready,
    make_events,
    make_settings,
    read_topic,
    wait_for,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]


def _stored(state_dir: Path, group: str) -> tuple[dict[str, list[int]], dict[int, int]]:
    """Counts per user, and the last input offset per partition, as stored on disk."""
    store = RocksDBStore(state_dir / group)
    counts: dict[str, list[int]] = {}
    offsets: dict[int, int] = {}
    try:
        for topic, p in store.on_disk():
            part = store.open_partition(topic, p)
            counts.update({u: list(st.counts) for u, st in part.items()})
            last = part.last_offset()
            if last is not None:
                offsets[p] = last
    finally:
        store.close()
    return counts, offsets


def _committed(kafka, group: str, topic: str, partitions: int) -> dict[int, int]:  # noqa: ANN001
    c = Consumer(kafka.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        for attempt in range(20):  # a coordinator still loading or moving answers "not yet"
            try:
                tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
                return {tp.partition: tp.offset for tp in tps}
            except KafkaException as exc:
                if attempt == 19 or not coordinator_not_ready(exc):
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        c.close()


def test_a_full_state_disk_stops_the_worker_and_a_restart_loses_nothing(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    group = f"full-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "state"
    settings = make_settings(kafka_bootstrap, topics, state_dir, group)
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(1200, n_users=80, seed=23)
    before, after = events[:600], events[600:]
    flag = tmp_path / "disk-is-full"
    env = worker_env(kafka_bootstrap, topics, group, state_dir) | {
        "FULL_DISK_FLAG": str(flag),
        # Only event batches write state (no idle refresh): the failing write is a batch's.
        "INTEREST_REFRESH_BUDGET_PERCENT": "0",
        "INTEREST_SNAPSHOT_EVERY_BATCHES": "1",
    }
    cmd = [sys.executable, "-m", "tests.stream.full_disk_worker", "worker"]

    def start_and_catch_up(what: str) -> subprocess.Popen[bytes]:
        """A worker process, once its group has committed every event sent so far."""
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_for(
                lambda: (
                    committed_all(settings.kafka, group, topics.events, 2)
                    or proc.poll() is not None
                ),
                90,
                what,
            )
            assert proc.poll() is None, proc.communicate()[1].decode()
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            raise
        return proc

    with Publisher(settings) as pub:
        pub.publish(before)
    proc = start_and_catch_up("the first events to be committed")
    try:
        flag.touch()  # the disk is full from now on
        with Publisher(settings) as pub:
            pub.publish(after)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = err.decode()
    print(text)
    assert proc.returncode != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("interest-stream: error:")]
    assert len(errors) == 1, text
    assert "the state directory is full" in errors[0] and "No space left" in errors[0]

    # What failed was a write after its transaction committed: Kafka is ahead of the disk.
    _, on_disk = _stored(state_dir, group)
    committed = _committed(settings.kafka, group, topics.events, 2)
    assert any(committed[p] > on_disk.get(p, -1) + 1 for p in committed), (committed, on_disk)

    flag.unlink()  # space is back
    proc = start_and_catch_up("the restarted worker to catch up")
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err.decode()

    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for ev in events:
        expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
    counts, _ = _stored(state_dir, group)
    assert counts == dict(expected)  # nothing lost, nothing applied twice

    # Exactly-once lists: each batch's list of a user once, and every user's newest event covered.
    seen: set[tuple[str, int]] = set()
    newest: dict[str, int] = {}
    for m in read_topic(settings.kafka, topics.recommendations):
        doc = decode_recommendation(m.value())
        key = (doc["user_id"], doc["event_ts"])
        assert key not in seen, f"a list published twice: {key}"
        seen.add(key)
        newest[doc["user_id"]] = max(newest.get(doc["user_id"], 0), doc["event_ts"])
    assert newest == {ev.user_id: ev.ts for ev in events}
