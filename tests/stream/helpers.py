"""Shared helpers for the pipeline tests: events, a tiny model, topic readers, a worker thread."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from core.types import Event, UserState
from stream.config import KafkaConfig, Settings, TopicsConfig, WorkerConfig
from stream.runtime.native import Worker

__all__ = [
    "coordinator_not_ready",
    "make_events",
    "TinyPopularity",
    "make_settings",
    "read_topic",
    "running_worker",
    "wait_for",
    "worker_env",
    "committed_all",
]


def make_events(
    n: int, n_users: int, n_items: int = 120, seed: int = 1, start_ms: int | None = None
) -> list[Event]:
    """``n`` events, ts strictly increasing, about 6% purchases."""
    rng = random.Random(seed)
    t = start_ms if start_ms is not None else int(time.time() * 1000) - 3_600_000
    kinds = ["click"] * 80 + ["favourite"] * 6 + ["cart"] * 8 + ["purchase"] * 6
    out = []
    for i in range(n):
        out.append(
            Event(
                f"u{rng.randrange(n_users)}",
                f"i{rng.randrange(n_items)}",
                rng.choice(kinds),
                t + i,
                None,
            )
        )
    return out


class TinyPopularity:
    """Counts per item; ranks the most frequent items the user has not purchased."""

    name = "tiny-pop"
    version = "tiny-pop-1"

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        for ev in events:
            self.counts[ev.item_id] = self.counts.get(ev.item_id, 0) + 1

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        bought = set(state.purchased)
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(item, float(c)) for item, c in ranked if item not in bought][:k]


def make_settings(
    bootstrap: str,
    topics: TopicsConfig,
    state_dir: object,
    group: str | None = None,
    **worker: object,
) -> Settings:
    """Settings for a test worker; ``group`` None: a consumer group no other test uses."""
    group = group or f"g-{uuid.uuid4().hex[:8]}"
    w = replace(WorkerConfig(group=group, state_dir=state_dir, metrics_port=0), **worker)
    return Settings(kafka=KafkaConfig(bootstrap_servers=bootstrap), topics=topics, worker=w)


def read_topic(kafka: KafkaConfig, topic: str, timeout: float = 20.0) -> list[Message]:
    """Every committed message now in ``topic`` (read_committed, all partitions).

    Reads each partition up to its last stable offset; transaction markers and
    aborted records are skipped by the client, so the position (not the last
    message's offset) says when a partition is done.
    """
    c = Consumer(
        kafka.client_config(
            **{
                "group.id": "reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            # Queried (not cached) by a read_committed consumer: the last stable offset.
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        pos = {p: -1 for p in ends}
        while any(pos[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read_topic {topic}: {pos} of {ends}")
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(msg)
            for tp in c.position([TopicPartition(topic, p) for p in ends]):
                pos[tp.partition] = tp.offset
        return out
    finally:
        c.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def running_worker(worker: Worker) -> Iterator[Worker]:
    """Run ``worker`` in a thread; stop it (cleanly) on exit and re-raise its error."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    th = threading.Thread(target=target, name="worker", daemon=True)
    th.start()
    try:
        yield worker
    finally:
        stop.set()
        th.join(60)
        if th.is_alive():
            frame = sys._current_frames().get(th.ident or 0)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "?"
            raise AssertionError(f"worker did not stop within 60s; it was at:\n{where}")
        if errors:
            raise errors[0]


def worker_env(bootstrap: str, topics: TopicsConfig, group: str, state_dir: Path) -> dict:
    """The environment of an ``interest-stream worker`` process on these topics (popular model,
    batches of 40, static membership so that a restart takes its partitions back at once)."""
    env = dict(os.environ)
    env.update(
        {
            "INTEREST_KAFKA_BOOTSTRAP": bootstrap,
            "INTEREST_TOPIC_EVENTS": topics.events,
            "INTEREST_TOPIC_RECOMMENDATIONS": topics.recommendations,
            "INTEREST_TOPIC_DEAD_LETTER": topics.dead_letter,
            "INTEREST_TOPIC_PARTITIONS": str(topics.partitions),
            "INTEREST_GROUP": group,
            "INTEREST_STATE_DIR": str(state_dir),
            "INTEREST_METRICS_PORT": "0",
            "INTEREST_BATCH_MAX_EVENTS": "40",
            "INTEREST_MODEL": "popular",
            # Static membership: a restarted worker takes its partitions back at once
            # instead of waiting for the killed member's session to expire.
            "INTEREST_KAFKA_CLIENT_GROUP_INSTANCE_ID": f"{group}-w1",
            "INTEREST_KAFKA_CLIENT_SESSION_TIMEOUT_MS": "6000",
        }
    )
    return env


# What a group coordinator that is still being created, loading or moving answers
# (librdkafka does not mark all of them retriable).
_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


def coordinator_not_ready(exc: KafkaException) -> bool:
    """Whether ``exc`` means "ask the group coordinator again in a moment"."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (err.retriable() or err.code() in _NOT_READY)


def committed_all(kafka: KafkaConfig, group: str, topic: str, partitions: int) -> bool:
    """Whether ``group`` has committed every partition of ``topic`` up to its end.

    A coordinator that is still loading or moving (a retriable error) is "not yet".
    """
    c = Consumer(kafka.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        try:
            committed = c.committed(tps, timeout=10)
        except KafkaException as exc:
            if coordinator_not_ready(exc):
                return False
            raise
        for tp in committed:
            high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            if tp.offset < high:
                return False
        return True
    finally:
        c.close()
