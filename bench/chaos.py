"""Fault injection anyone can repeat: kill -9 workers mid-stream, check nothing was lost or doubled.

    python -m bench.chaos [--workers 3] [--events 30000] [--kills 20] [--wipes 3]

Starts the embedded Kafka broker (or uses ``$INTEREST_KAFKA_BOOTSTRAP``) and N
worker processes (``interest-stream worker``) in one consumer group, each with
its own state dir. A publisher sends ``--events`` events at ``--rate`` per
second with strictly increasing timestamps per user. Meanwhile random workers
are killed with SIGKILL and started again after a moment, ``--wipes`` of them
with their state dir deleted first (a lost disk). When the last event is
published and the last kill done, it waits until the group has processed
everything, then reads, as any subscriber would (read_committed):

- lists committed, and duplicate lists: one user's list for the same event
  timestamp committed twice (a batch published twice);
- users whose counts in ``interest-stream state dump`` differ from the events
  published for them (an event lost or applied twice);
- users whose latest list does not cover their last event (a stale list);
- the seconds from the last kill until the group had processed every event.

It prints those figures (JSON on stdout) and asserts nothing; the tests run a
small version and assert on it (``tests/stream/test_exactly_once.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from core.types import EVENT_INDEX, Event
from engine.events import decode_recommendation
from stream.cli.publish import Publisher
from stream.cli.state import read_states
from stream.config import BOOTSTRAP_ENV, KafkaConfig, Settings, TopicsConfig, WorkerConfig
from stream.kafka.topics import ensure_topics, topic_specs

__all__ = ["ChaosConfig", "WorkerPool", "run_chaos", "main"]

_KINDS = ["click"] * 80 + ["favourite"] * 6 + ["cart"] * 8 + ["purchase"] * 6


@dataclass(frozen=True)
class ChaosConfig:
    workers: int = 3
    events: int = 30_000
    kills: int = 20
    wipes: int = 3
    users: int = 800
    items: int = 400
    rate: float = 1000.0
    partitions: int = 6
    guarantee: str = "exactly-once"
    model: str = "popular"
    seed: int = 0
    drain_timeout: float = 300.0
    restart_after: float | None = None  # seconds; None: 0.2-2 s at random
    batch_catch_up_events: int = WorkerConfig.batch_catch_up_events


def chaos_events(cfg: ChaosConfig) -> list[Event]:
    """``cfg.events`` events; timestamps strictly increase, so per user too."""
    rng = random.Random(cfg.seed)
    start = int(time.time() * 1000) - 3_600_000
    return [
        Event(
            f"u{rng.randrange(cfg.users)}",
            f"i{rng.randrange(cfg.items)}",
            rng.choice(_KINDS),
            start + i,
        )
        for i in range(cfg.events)
    ]


class WorkerPool:
    """Worker processes of one consumer group, each with its own state dir and log."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        model: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.model = model
        self.extra_env = dict(extra_env or {})
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.logs: dict[int, Any] = {}
        self.starts = 0

    def state_dir(self, slot: int) -> Path:
        return self.workdir / f"worker{slot}"

    def _env(self) -> dict[str, str]:
        t, w = self.settings.topics, self.settings.worker
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
        env.update(
            {
                "INTEREST_TOPIC_EVENTS": t.events,
                "INTEREST_TOPIC_RECOMMENDATIONS": t.recommendations,
                "INTEREST_TOPIC_DEAD_LETTER": t.dead_letter,
                "INTEREST_TOPIC_PARTITIONS": str(t.partitions),
                "INTEREST_PROCESSING_GUARANTEE": w.processing_guarantee,
                "INTEREST_BATCH_MAX_EVENTS": str(w.batch_max_events),
                "INTEREST_BATCH_CATCH_UP_EVENTS": str(w.batch_catch_up_events),
                "INTEREST_MODEL": self.model,
                "INTEREST_LOG_LEVEL": "INFO",
                "INTEREST_SNAPSHOT_EVERY_S": "0",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, slot: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "stream.cli",
            "worker",
            "--bootstrap-servers",
            str(self.settings.kafka.bootstrap_servers),
            "--group",
            self.settings.worker.group,
            "--state-dir",
            str(self.state_dir(slot)),
            "--metrics-port",
            "0",
        ]
        log = self.logs.get(slot)
        if log is None:
            log = self.logs[slot] = open(self.workdir / f"worker{slot}.log", "ab")  # noqa: SIM115
        self.procs[slot] = subprocess.Popen(
            cmd,
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.started[slot] = time.monotonic()
        self.starts += 1

    def victim(self, rng: random.Random, settled_s: float = 5.0) -> int:
        """A random live worker, preferring those up long enough to own partitions."""
        now = time.monotonic()
        settled = [s for s in sorted(self.procs) if now - self.started[s] >= settled_s]
        return rng.choice(settled or sorted(self.procs))

    def kill(self, slot: int, wipe: bool = False) -> None:
        proc = self.procs.pop(slot)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if wipe:
            shutil.rmtree(self.state_dir(slot), ignore_errors=True)

    def stop(self, slot: int) -> None:
        proc = self.procs.pop(slot)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def crashed(self) -> list[int]:
        """Slots whose worker exited by itself (it should not)."""
        return [slot for slot, p in self.procs.items() if p.poll() is not None]

    def close(self) -> None:
        for slot in list(self.procs):
            self.stop(slot)
        for log in self.logs.values():
            log.close()


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
        "event_to_visible_list_p50_s": round(waits[len(waits) // 2], 3) if waits else None,
        "event_to_visible_list_p99_s": round(waits[int(len(waits) * 0.99)], 3) if waits else None,
        "event_to_visible_list_max_s": round(waits[-1], 3) if waits else None,
        "takeover_s": [None if t is None else round(t, 1) for t in takeover],
    }


@contextmanager
def _broker(workdir: Path) -> Iterator[str]:
    existing = os.environ.get(BOOTSTRAP_ENV)
    if existing:
        yield existing
        return
    from stream.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker(data_dir=workdir / "kafka").start(timeout=120)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def chaos_settings(bootstrap: str, cfg: ChaosConfig) -> Settings:
    tag = uuid.uuid4().hex[:8]
    topics = TopicsConfig(
        events=f"chaos{tag}.events",
        recommendations=f"chaos{tag}.recommendations",
        dead_letter=f"chaos{tag}.dead-letter",
        partitions=cfg.partitions,
    )
    worker = WorkerConfig(
        group=f"chaos-{tag}",
        processing_guarantee=cfg.guarantee,
        batch_max_events=200,
        batch_catch_up_events=cfg.batch_catch_up_events,
        metrics_port=0,
    )
    return Settings(kafka=KafkaConfig(bootstrap_servers=bootstrap), topics=topics, worker=worker)


@dataclass
class _Run:
    published: int = 0
    kills: int = 0
    wipes: int = 0
    last_kill: float = 0.0
    kill_times: list[float] = field(default_factory=list)  # wall clock
    crashed: list[int] = field(default_factory=list)


def run_chaos(cfg: ChaosConfig, bootstrap: str, workdir: Path) -> dict[str, Any]:
    """One chaos run against the broker at ``bootstrap``; returns the figures."""
    settings = chaos_settings(bootstrap, cfg)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    events = chaos_events(cfg)
    rng = random.Random(cfg.seed + 1)
    pool = WorkerPool(settings, workdir, cfg.model)
    run = _Run()
    done = threading.Event()

    def publish() -> None:
        with Publisher(settings) as pub:
            pub.publish(events, rate=cfg.rate)
            run.published = pub.stats.delivered
        done.set()

    t0 = time.monotonic()
    try:
        for slot in range(cfg.workers):
            pool.start(slot)
        sender = threading.Thread(target=publish, daemon=True)
        sender.start()
        publish_s = cfg.events / cfg.rate
        gap = publish_s / (cfg.kills + 1) if cfg.kills else 0.0
        kill_at = [t0 + gap * (k + 1) for k in range(cfg.kills)]
        restarts: list[tuple[float, int]] = []  # (when, slot)
        wipes_left = cfg.wipes
        while kill_at or restarts:
            now = time.monotonic()
            for due, slot in [r for r in restarts if r[0] <= now]:
                restarts.remove((due, slot))
                pool.start(slot)
            if kill_at and kill_at[0] <= now and pool.procs:
                kill_at.pop(0)
                run.crashed += pool.crashed()
                slot = pool.victim(rng)
                left = len(kill_at) + 1
                wipe = wipes_left > 0 and rng.random() < wipes_left / left
                wipes_left -= wipe
                pool.kill(slot, wipe)
                run.kill_times.append(time.time())
                run.kills += 1
                run.wipes += wipe
                run.last_kill = time.monotonic()
                delay = rng.uniform(0.2, 2.0) if cfg.restart_after is None else cfg.restart_after
                restarts.append((time.monotonic() + delay, slot))
            time.sleep(0.05)
        sender.join()
        if not run.last_kill:
            run.last_kill = time.monotonic()
        deadline = time.monotonic() + cfg.drain_timeout
        drained_at = None
        while time.monotonic() < deadline:
            run.crashed += pool.crashed()
            if group_lag(settings) == 0:
                drained_at = time.monotonic()
                break
            time.sleep(0.5)
        figures = verify(settings, events, run.kill_times)
    finally:
        pool.close()
    return {
        "workers": cfg.workers,
        "guarantee": cfg.guarantee,
        "model": cfg.model,
        "events_published": run.published,
        "kills": run.kills,
        "state_dirs_wiped": run.wipes,
        "worker_starts": pool.starts,
        "workers_that_crashed": sorted(set(run.crashed)),
        **figures,
        "drain_s_after_last_kill": (
            round(drained_at - run.last_kill, 1) if drained_at is not None else None
        ),
        "seconds": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ChaosConfig()
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--events", type=int, default=d.events)
    p.add_argument("--kills", type=int, default=d.kills)
    p.add_argument("--wipes", type=int, default=d.wipes)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--rate", type=float, default=d.rate, help="events/s published")
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--guarantee", choices=("exactly-once", "at-least-once"), default=d.guarantee)
    p.add_argument("--model", default=d.model, help="the model the workers serve")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--batch-catch-up-events",
        type=int,
        default=d.batch_catch_up_events,
        help="the workers' batch cap while catching up (at most 200, their usual cap: off)",
    )
    p.add_argument(
        "--restart-after",
        dest="restart_after",
        type=float,
        default=None,
        help="seconds before a killed worker starts again (default 0.2-2 at random; "
        "longer shows the takeover by the other workers)",
    )
    args = p.parse_args(argv)
    cfg = replace(d, **{k: v for k, v in vars(args).items()})
    with tempfile.TemporaryDirectory(prefix="interest-chaos-") as tmp, _broker(Path(tmp)) as b:
        report = run_chaos(cfg, b, Path(tmp))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
