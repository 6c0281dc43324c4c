"""Broker kills for ``bench.chaos``: kill -9 a node of the local cluster under load.

A :class:`BrokerKiller` thread kills one node of the 3-node cluster at a time
(SIGKILL, no clean shutdown), alternating between the node that leads the most
partitions of the events topic (read from the cluster's metadata) and the node
leading the controller quorum, and starts it again with its data after a
moment. Before each kill it waits until every partition of every topic is
fully replicated again, so that each kill is a single broker's loss, the
failure the topics' 3 copies with ``min.insync.replicas=2`` are made to survive.

A :class:`ListWatcher` reads the lists as a subscriber does (read_committed)
and notes when each became visible; :func:`pauses` turns that into how long
lists stopped flowing after each kill.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.chaos_verify import committed_messages
from core.types import Event
from engine.events import decode_recommendation
from stream.config import KafkaConfig, Settings
from stream.kafka.cluster import LocalCluster

__all__ = ["BrokerKill", "BrokerKiller", "ListWatcher", "pauses", "events_leader"]

log = logging.getLogger("interest_stream.chaos")

_HEALTHY_WAIT_S = 120.0  # at most, for every partition to be fully replicated again
_WINDOW_S = 60.0  # lists are followed for at most this long after a kill
_SETTLE_S = 3.0  # lists flow this long between a node's return and the next kill


@dataclass
class BrokerKill:
    """One broker killed: which node, why it was chosen, when (wall clock, seconds)."""

    node: int
    role: str  # "events leader" or "controller"
    at: float
    back_after_s: float | None = None  # from the kill until the node was registered again
    replicated_before: bool = True  # every partition had all its copies when it was killed


def events_leader(admin: AdminClient, topic: str) -> int | None:
    """The broker leading the most partitions of ``topic`` (the lowest id on a tie)."""
    parts = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    leaders = Counter(p.leader for p in parts if p.leader >= 0)
    if not leaders:
        return None
    return min(leaders, key=lambda b: (-leaders[b], b))


def fully_replicated(admin: AdminClient, brokers: int) -> bool:
    """Every broker registered, and every partition of every topic led, with all its
    replicas in sync."""
    try:
        md = admin.list_topics(timeout=10)
    except Exception:
        return False
    if len(md.brokers) < brokers:
        return False
    return all(
        p.leader >= 0 and len(p.isrs) == len(p.replicas)
        for t in md.topics.values()
        for p in t.partitions.values()
    )


class BrokerKiller:
    """Kills a node of ``cluster`` ``count`` times, one at a time, once ``flowing()``.

    Each kill waits until every partition has all its copies again and lists have
    flowed for ``settle_s`` since the previous node came back.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        settings: Settings,
        count: int,
        down_s: float,
        flowing: Callable[[], bool],
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.topic = settings.topics.events
        self.admin = AdminClient(settings.kafka.client_config())
        self.count = count
        self.down_s = down_s
        self.flowing = flowing
        self.rng = rng
        self.kills: list[BrokerKill] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-killer", daemon=True)

    def start(self) -> BrokerKiller:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self.flowing():
                if self._stop.wait(0.2):
                    return
            for i in range(self.count):
                if self._stop.wait(_SETTLE_S):
                    return
                self._kill_one(i)
        except BaseException as exc:  # handed to the run through .error
            self.error = exc

    def _kill_one(self, i: int) -> None:
        deadline = time.monotonic() + _HEALTHY_WAIT_S
        healthy = False
        while not self._stop.is_set() and time.monotonic() < deadline:
            if fully_replicated(self.admin, self.cluster.size):
                healthy = True
                break
            self._stop.wait(0.5)
        if self._stop.is_set():
            return
        role = "events leader" if i % 2 == 0 else "controller"
        node = (
            events_leader(self.admin, self.topic)
            if role == "events leader"
            else self.cluster.active_controller()
        )
        if node is None:
            node = self.rng.choice(self.cluster.node_ids)
        self.cluster.kill(node)
        kill = BrokerKill(node, role, time.time(), replicated_before=healthy)
        self.kills.append(kill)
        log.info("killed broker %d (%s)", node, role)
        t0 = time.monotonic()
        self._stop.wait(self.down_s)
        self.cluster.start_node(node)
        kill.back_after_s = round(time.monotonic() - t0, 1)

    def stop(self) -> None:
        self._stop.set()


class ListWatcher:
    """A subscriber of the lists (read_committed) that notes when each became visible."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.arrivals: list[tuple[float, str, int]] = []  # (wall clock s, user, event_ts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="list-watcher", daemon=True)

    def start(self) -> ListWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        conf: dict[str, Any] = {
            "group.id": f"chaos-watcher-{uuid.uuid4().hex[:8]}",  # assigned, never joins
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
        c = Consumer(self.kafka.client_config(**conf))
        try:
            parts = c.list_topics(self.topic, timeout=30).topics[self.topic].partitions
            c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                for msg in c.consume(1000, timeout=0.2):
                    value = msg.value()
                    if msg.error() is None and value is not None:
                        doc = decode_recommendation(value)
                        self.arrivals.append((time.time(), doc["user_id"], doc["event_ts"]))
        finally:
            c.close()

    def flowing(self) -> bool:
        """Has a list become visible yet (the workers are up)?"""
        return bool(self.arrivals)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def pauses(
    settings: Settings, events: list[Event], kills: list[BrokerKill], watcher: ListWatcher
) -> list[dict[str, Any]]:
    """Per kill: the longest gap between lists becoming visible after it (``lists_gap_s``)
    and the longest wait, from being sent to a visible list covering it, of the events
    sent in the second after it (``event_wait_s``), as the watcher saw them."""
    arrivals = sorted(watcher.arrivals)
    seen: dict[str, list[tuple[int, float]]] = defaultdict(list)  # user -> (event_ts, at)
    for at, user, ts in arrivals:
        seen[user].append((ts, at))
    sent_at = {  # (user, event ts) -> when it was produced (its Kafka timestamp)
        _event_key(value): at_ms / 1000.0
        for at_ms, value in committed_messages(settings.kafka, settings.topics.events)
    }
    last_sent = max(sent_at.values(), default=0.0)
    out = []
    for i, kill in enumerate(kills):
        end = min(kill.at + _WINDOW_S, kills[i + 1].at if i + 1 < len(kills) else float("inf"))
        # From the last list before the kill, each list after it within the window, and
        # the first one after the kill even if it came later: nothing at all for a while
        # is the longest gap.
        prev = max((at for at, _, _ in arrivals if at <= kill.at), default=kill.at)
        after = [at for at, _, _ in arrivals if at > kill.at]
        gap = 0.0
        for n, at in enumerate(after):
            if n > 0 and at > end:
                break
            gap, prev = max(gap, at - prev), at
        waits = []
        for ev in events:
            sent = sent_at.get((ev.user_id, ev.ts))
            if sent is None or not kill.at <= sent < kill.at + 1.0:
                continue
            firsts = [at for ts, at in seen.get(ev.user_id, []) if ts >= ev.ts]
            waits.append(min(firsts) - sent if firsts else float("inf"))
        out.append(
            {
                "node": kill.node,
                "role": kill.role,
                "replicated_before": kill.replicated_before,
                "while_publishing": kill.at < last_sent,
                "back_after_s": kill.back_after_s,
                "lists_gap_s": round(gap, 1),
                "event_wait_s": round(max(waits), 1) if waits else None,
            }
        )
    return out


def _event_key(value: bytes) -> tuple[str, int]:
    doc = json.loads(value)
    return doc["user_id"], doc["ts"]
