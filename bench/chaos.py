"""Fault injection anyone can repeat: kill -9 workers mid-stream, check nothing was lost or doubled.

    python -m bench.chaos [--workers 3] [--events 30000] [--kills 20] [--wipes 3]
    python -m bench.chaos --broker-kills 4 --events 60000 --kills 6

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
- events neither in a user's state nor dead-lettered;
- the seconds from the last kill until the group had processed every event.

``--broker-kills K`` runs the workers against a local 3-node cluster instead
(``interest-stream broker start --nodes 3``) and, mixed with the worker kills,
kills -9 a node K times, alternately the leader of most events partitions and
the active controller, starting it again after ``--broker-down`` seconds
(:mod:`bench.broker_kills`). Each kill is reported with how long lists stopped
becoming visible after it, as a subscriber saw it.

It prints those figures (JSON on stdout) and asserts nothing; the tests run a
small version and assert on it (``tests/stream/test_exactly_once.py``,
``tests/stream/test_broker_kills.py``).
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.broker_kills import BrokerKiller, ListWatcher, pauses
from bench.chaos_verify import committed_messages, group_lag, verify
from core.types import Event
from stream.cli.publish import Publisher
from stream.config import BOOTSTRAP_ENV, KafkaConfig, Settings, TopicsConfig, WorkerConfig
from stream.kafka.cluster import LocalCluster
from stream.kafka.topics import ensure_topics, topic_specs

__all__ = [
    "ChaosConfig",
    "WorkerPool",
    "chaos_events",
    "chaos_settings",
    "local_cluster",
    "committed_messages",
    "group_lag",
    "run_chaos",
    "verify",
    "main",
]

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
    broker_kills: int = 0  # > 0: a local 3-node cluster, and this many kill -9 of a node
    broker_down_s: float = 3.0  # how long a killed node stays down


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


@contextmanager
def local_cluster(workdir: Path, nodes: int = 3) -> Iterator[LocalCluster]:
    """A local cluster of ``nodes`` nodes with its data in ``workdir``, stopped at the end."""
    cluster = LocalCluster.create(workdir / "kafka", nodes)
    cluster.start(timeout=180)
    try:
        yield cluster
    finally:
        cluster.stop()


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


def run_chaos(
    cfg: ChaosConfig, bootstrap: str, workdir: Path, cluster: LocalCluster | None = None
) -> dict[str, Any]:
    """One chaos run against the broker at ``bootstrap``; returns the figures.

    ``cfg.broker_kills`` needs ``cluster``, the local cluster whose nodes are killed.
    """
    if cfg.broker_kills and cluster is None:
        raise ValueError("broker kills need the local cluster whose nodes they kill")
    settings = chaos_settings(bootstrap, cfg)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    events = chaos_events(cfg)
    rng = random.Random(cfg.seed + 1)
    pool = WorkerPool(settings, workdir, cfg.model)
    run = _Run()
    done = threading.Event()
    watcher = killer = None

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
        if cluster is not None and cfg.broker_kills:
            watcher = ListWatcher(settings.kafka, settings.topics.recommendations).start()
            killer = BrokerKiller(
                cluster, settings, cfg.broker_kills, cfg.broker_down_s, watcher.flowing, rng
            ).start()
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
        if killer is not None:
            killer.join()  # each node is back before the drain is measured
            if killer.error is not None:
                raise killer.error
            run.last_kill = time.monotonic()
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
        if killer is not None and watcher is not None:
            watcher.stop()
            figures["broker_kills"] = pauses(settings, events, killer.kills, watcher)
    finally:
        try:
            if killer is not None:
                killer.stop()
                killer.join(180)
            if watcher is not None:
                watcher.stop()
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
    p.add_argument(
        "--broker-kills",
        dest="broker_kills",
        type=int,
        default=d.broker_kills,
        help="run a local 3-node cluster and kill -9 one of its nodes this many times "
        "(publishing should last about 20 s per kill: --events / --rate)",
    )
    p.add_argument(
        "--broker-down",
        dest="broker_down_s",
        type=float,
        default=d.broker_down_s,
        help="seconds a killed node stays down",
    )
    args = p.parse_args(argv)
    cfg = replace(d, **{k: v for k, v in vars(args).items()})
    if cfg.broker_kills and os.environ.get(BOOTSTRAP_ENV):
        print(
            f"python -m bench.chaos: --broker-kills kills nodes of a local cluster it starts; "
            f"unset {BOOTSTRAP_ENV}",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="interest-chaos-") as tmp:
        if cfg.broker_kills:
            with local_cluster(Path(tmp)) as cluster:
                report = run_chaos(cfg, cluster.bootstrap, Path(tmp), cluster)
        else:
            with _broker(Path(tmp)) as b:
                report = run_chaos(cfg, b, Path(tmp))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
