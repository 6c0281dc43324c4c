"""What a chaos run checks, through Kafka only, as a subscriber and an operator see it.

:func:`verify` reads the committed lists (read_committed), the events as
published and every user's state from the changelog (``state dump``), and
measures duplicates, wrong or missing states, stale lists, events neither
applied nor dead-lettered, and how long events waited for a list covering
them. :func:`group_lag` says when the group has processed everything.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from core.types import EVENT_INDEX, Event
from engine.events import decode_recommendation
from stream.cli.state import read_states
from stream.config import KafkaConfig, Settings

__all__ = ["group_lag", "committed_messages", "verify"]


_NO_COORDINATOR = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
)


def group_lag(settings: Settings) -> int | None:
    """Events not yet processed by the group (None while it has no committed offsets)."""
    topic, group = settings.topics.events, settings.worker.group
    conf = {"group.id": group, "enable.auto.commit": False}
    c = Consumer(settings.kafka.client_config(**conf))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        try:
            committed = c.committed(tps, timeout=20)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and (err.retriable() or err.code() in _NO_COORDINATOR):
                return None  # e.g. a new broker's offsets topic is still loading: ask again

            raise
        lag = 0
        for tp in committed:
            low, high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            if high > low and tp.offset < 0:
                return None
            lag += max(0, high - max(tp.offset, low))
        return lag
    finally:
        c.close()


def committed_messages(kafka: KafkaConfig, topic: str) -> list[tuple[int, bytes]]:
    """(Kafka timestamp ms, value) of every message a read_committed reader sees on ``topic``."""
    c = Consumer(
        kafka.client_config(
            **{
                "group.id": f"chaos-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    marks = Consumer(
        kafka.client_config(
            **{"group.id": f"chaos-{uuid.uuid4().hex[:8]}", "isolation.level": "read_uncommitted"}
        )
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: marks.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in parts
        }
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[tuple[int, bytes]] = []
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for msg in c.consume(5000, timeout=0.2):
                value = msg.value()
                if msg.error() is None and value is not None:
                    out.append((msg.timestamp()[1], value))
            pos = c.position([TopicPartition(topic, p) for p in pending])
            pending = {tp.partition for tp in pos if tp.offset < ends[tp.partition]}
        return out
    finally:
        c.close()
        marks.close()


def verify(
    settings: Settings, events: list[Event], kill_times: list[float] | None = None
) -> dict[str, Any]:
    """The three properties, measured: duplicates, users with wrong counts, stale lists."""
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    last_ts: dict[str, int] = {}
    for ev in events:
        expected[ev.user_id][EVENT_INDEX[ev.event]] += 1
        last_ts[ev.user_id] = ev.ts
    raw = committed_messages(settings.kafka, settings.topics.recommendations)
    lists = [decode_recommendation(value) for _, value in raw]
    published = {}  # (user, event ts) -> when the event was produced (its Kafka timestamp)
    for at, value in committed_messages(settings.kafka, settings.topics.events):
        doc = json.loads(value)
        published[(doc["user_id"], doc["ts"])] = at
    # A list answers the user's own events; one refreshed later for other reasons may
    # carry the same event_ts and is not a duplicate.
    by_events = [d for d in lists if d.get("trigger", "events") == "events"]
    seen = Counter((d["user_id"], d["event_ts"]) for d in by_events)
    latest: dict[str, int] = {}
    for d in lists:
        latest[d["user_id"]] = d["event_ts"]
    states = {uid: st.counts for uid, st in read_states(settings)}
    dead_letters = len(committed_messages(settings.kafka, settings.topics.dead_letter))
    applied = sum(sum(counts) for counts in states.values())
    # How long each event waited for a visible list covering it: the worst case is a
    # killed worker's partition, waiting for its next owner.
    covered: dict[str, list[tuple[int, int]]] = defaultdict(list)  # user -> (event_ts, list at)
    for (at, _), d in zip(raw, lists, strict=True):
        covered[d["user_id"]].append((d["event_ts"], at))
    waits = []
    sent_waits = []
    for ev in events:
        sent = published.get((ev.user_id, ev.ts))
        firsts = [at for ts, at in covered.get(ev.user_id, []) if ts >= ev.ts]
        if sent is not None and firsts:
            waits.append((min(firsts) - sent) / 1000.0)
            sent_waits.append((sent / 1000.0, waits[-1]))
    # Takeover after a kill: the longest wait of an event sent within a second after it
    # (events of the killed worker's partitions wait for the next owner).
    takeover = [
        max((w for at, w in sent_waits if k <= at < k + 1.0), default=None)
        for k in kill_times or []
    ]
    waits.sort()
    return {
        "lists_committed": len(lists),
        "duplicate_lists": sum(n - 1 for n in seen.values() if n > 1),
        "users": len(expected),
        "users_wrong_counts": sum(
            1 for u in set(expected) | set(states) if states.get(u) != expected.get(u)
        ),
        "users_missing_state": sum(1 for u in expected if u not in states),
        "stale_lists": sum(1 for u, ts in last_ts.items() if latest.get(u) != ts),
        "events_applied": applied,
        "events_dead_lettered": dead_letters,
        # Neither in a user's state nor dead-lettered (negative: applied twice).
        "events_unaccounted": len(events) - applied - dead_letters,
        "event_to_visible_list_p50_s": round(waits[len(waits) // 2], 3) if waits else None,
        "event_to_visible_list_p99_s": round(waits[int(len(waits) * 0.99)], 3) if waits else None,
        "event_to_visible_list_max_s": round(waits[-1], 3) if waits else None,
        "takeover_s": [None if t is None else round(t, 1) for t in takeover],
    }
