"""The field workload and measurements made the way users meet the service.

A shop's stream: ``users`` users (default 100,000), each event's user drawn
uniformly, and ``items`` items (default 100,000) drawn from a Zipf(1.3)
popularity over their ranks, in categories of 1,000 ranks; event types 80%
click, 6% favourite, 8% cart, 6% purchase; timestamps 1 ms apart. A batch of
500 events then touches about 500 distinct users, each a state read, a fold,
a list and a changelog record: the per-user cost the small synthetic stream
(400 users) hides. :func:`small_stream` is that small stream, kept as the
second row of every table.

Measured from outside the worker (:class:`WorkerProcess` is ``interest-stream
worker`` in a process of its own; :class:`ListWatcher` reads the
recommendations topic read_committed, as a subscriber does):

* **backlog**: the events are published first, the worker is started, and
  events/s = events / (the first list seen -> every event's list seen);
* **latency**: events are sent at a rate by this process; each event's
  latency runs from its send to the first read_committed list of its user
  that covers it (``event_ts`` at least its ``ts``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from core.types import EVENT_TYPES, Event
from engine.events import encode_event
from stream.cli.publish import PRODUCER_DEFAULTS
from stream.config import KafkaConfig, Settings, TopicsConfig, WorkerConfig

__all__ = [
    "USERS",
    "ITEMS",
    "ZIPF",
    "field_stream",
    "small_stream",
    "bench_settings",
    "WorkerProcess",
    "ListWatcher",
    "send_paced",
    "percentiles",
]

USERS = 100_000
ITEMS = 100_000
ZIPF = 1.3
CATEGORY_ITEMS = 1_000
_KIND_WEIGHTS = {"click": 0.80, "favourite": 0.06, "cart": 0.08, "purchase": 0.06}


def field_stream(
    users: int = USERS, items: int = ITEMS, seed: int = 1, start_ms: int | None = None
) -> Iterator[Event]:
    """The field workload (module docstring), endless; draws in chunks of 10,000."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, items + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-ZIPF)
    cdf /= cdf[-1]
    # Item ids are not their popularity ranks: a rank is a fixed random id.
    ids = rng.permutation(items)
    kinds = list(_KIND_WEIGHTS)
    p = np.array([_KIND_WEIGHTS[k] for k in kinds])
    assert set(kinds) == set(EVENT_TYPES)
    t = int(time.time() * 1000) - 3_600_000 if start_ms is None else start_ms
    while True:
        n = 10_000
        u = rng.integers(0, users, n)
        r = np.minimum(np.searchsorted(cdf, rng.random(n)), items - 1)
        k = rng.choice(len(kinds), n, p=p)
        for user, rank, kind in zip(u.tolist(), r.tolist(), k.tolist(), strict=True):
            yield Event(f"u{user}", f"i{ids[rank]}", kinds[kind], t, f"c{rank // CATEGORY_ITEMS}")
            t += 1


def small_stream(seed: int = 1) -> Iterator[Event]:
    """The built-in synthetic drift stream (400 users, ~700 items): the lab's stream."""
    from model.data.synthetic import SyntheticStream

    return iter(SyntheticStream(seed=seed))


def bench_settings(bootstrap: str, prefix: str, partitions: int = 4, **worker: Any) -> Settings:
    """Fresh topics and a consumer group of their own."""
    tag = f"{prefix}{uuid.uuid4().hex[:8]}"
    topics = TopicsConfig(
        events=f"{tag}.events",
        recommendations=f"{tag}.recommendations",
        dead_letter=f"{tag}.dead-letter",
        partitions=partitions,
    )
    return Settings(
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        topics=topics,
        worker=WorkerConfig(group=tag, metrics_port=0, **worker),
    )


class WorkerProcess:
    """``interest-stream worker`` in a process of its own, with the bench's settings."""

    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        model: str,
        runtime: str = "native",
        env: dict[str, str] | None = None,
    ) -> None:
        from stream.kafka.broker import free_port

        t, w = settings.topics, settings.worker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
        environ.update(
            {
                "INTEREST_TOPIC_EVENTS": t.events,
                "INTEREST_TOPIC_RECOMMENDATIONS": t.recommendations,
                "INTEREST_TOPIC_DEAD_LETTER": t.dead_letter,
                "INTEREST_TOPIC_PARTITIONS": str(t.partitions),
                "INTEREST_PROCESSING_GUARANTEE": w.processing_guarantee,
                "INTEREST_BATCH_MAX_EVENTS": str(w.batch_max_events),
                "INTEREST_BATCH_MAX_MS": str(w.batch_max_ms),
                "INTEREST_BATCH_CATCH_UP_EVENTS": str(w.batch_catch_up_events),
                "INTEREST_REFRESH_BUDGET_PERCENT": str(w.refresh_budget_percent),
                "INTEREST_MODEL_SHARING": w.model_sharing,
                "INTEREST_MODEL": model,
                "INTEREST_SNAPSHOT_EVERY_S": "0",
                "INTEREST_LOG_LEVEL": "WARNING",
            }
        )
        environ.update(env or {})
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = (state_dir.parent / f"{state_dir.name}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "worker",
                "--runtime",
                runtime,
                "--bootstrap-servers",
                str(settings.kafka.bootstrap_servers),
                "--group",
                w.group,
                "--state-dir",
                str(state_dir),
                "--metrics-port",
                str(self.port),
            ],
            env=environ,
            cwd=Path(__file__).resolve().parents[1],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def metric(self, name: str) -> float | None:
        """A sample's value from the worker's metrics endpoint (None: not reachable yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        return 0.0

    def peak_rss_mib(self) -> float | None:
        """The worker's peak resident size (``VmHWM``), MiB."""
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class ListWatcher:
    """The recommendations topic read as a subscriber reads it (read_committed).

    Keeps per user the newest ``event_ts`` a list covered, and for events
    registered with :meth:`sent`, the seconds from their send to the first
    list that covers them.
    """

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": f"watch-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 5,
                }
            )
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.lock = threading.Lock()
        self.covered: dict[str, int] = {}  # user -> newest event_ts a list covered
        self.lists = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._pending: dict[str, list[tuple[int, float]]] = {}  # user -> (ts, sent at)
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="list-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self.consumer.poll(0.05)
            if first is None:
                continue
            msgs = [first, *self.consumer.consume(5000, timeout=0)]
            now = time.monotonic()
            with self.lock:
                for msg in msgs:
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    doc = json.loads(value)
                    user, ts = doc["user_id"], int(doc["event_ts"])
                    self.lists += 1
                    if self.first_at is None:
                        self.first_at = now
                    self.last_at = now
                    if ts > self.covered.get(user, -1):
                        self.covered[user] = ts
                    waiting = self._pending.get(user)
                    if waiting:
                        keep = []
                        for event_ts, at in waiting:
                            if event_ts <= ts:
                                self.latencies.append(now - at)
                            else:
                                keep.append((event_ts, at))
                        if keep:
                            self._pending[user] = keep
                        else:
                            del self._pending[user]

    def sent(self, ev: Event, at: float) -> None:
        with self.lock:
            self._pending.setdefault(ev.user_id, []).append((ev.ts, at))

    def covers(self, last: dict[str, int]) -> int:
        """How many of the users in ``last`` (user -> ts) have a list covering that ts."""
        with self.lock:
            return sum(1 for u, ts in last.items() if self.covered.get(u, -1) >= ts)

    def waiting(self) -> int:
        with self.lock:
            return sum(len(v) for v in self._pending.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.consumer.close()


def paced_producer(settings: Settings) -> Producer:
    """The producer of :func:`send_paced` (one for the warm-up and the measured run)."""
    return Producer(settings.kafka.client_config(**(PRODUCER_DEFAULTS | {"linger.ms": 1})))


def send_paced(
    settings: Settings,
    events: Iterator[Event],
    rate: float,
    n: int,
    watcher: ListWatcher | None,
    producer: Producer | None = None,
) -> None:
    """Send ``n`` events at ``rate`` per second, now-stamped; ``watcher`` times each.

    Pass the same ``producer`` to every call of one run: a new producer's first
    sends wait for its connections and metadata, which would count as the
    worker's latency.
    """
    if producer is None:
        producer = paced_producer(settings)
    t0 = time.monotonic()
    base = int(time.time() * 1000)
    for i in range(n):
        ev = next(events)
        due = t0 + i / rate
        ahead = due - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        ev = Event(ev.user_id, ev.item_id, ev.event, base + i, ev.category)
        key, value = encode_event(ev)
        if watcher is not None:
            watcher.sent(ev, time.monotonic())
        while True:
            try:
                producer.produce(settings.topics.events, value, key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(30)


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    """p50 / p99 in milliseconds."""
    if not seconds:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def _wait(cond: Any, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def measure_backlog(
    settings: Settings,
    workdir: Path,
    model: str,
    events: list[Event],
    runtime: str = "native",
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Publish ``events`` as a backlog, start a worker, time until every event's list is seen."""
    from stream.cli.publish import Publisher
    from stream.kafka.topics import ensure_topics, topic_specs

    ensure_topics(settings.kafka, topic_specs(settings.topics))
    last: dict[str, int] = {}
    for ev in events:
        last[ev.user_id] = ev.ts
    with Publisher(settings) as pub:
        pub.publish(events)
    watcher = ListWatcher(settings.kafka, settings.topics.recommendations)
    worker = WorkerProcess(settings, workdir / "state", model, runtime)
    try:
        done_at: list[float] = []

        def drained() -> bool:
            if not worker.alive():
                raise RuntimeError(f"the worker exited (log: {worker.log.name})")
            if watcher.covers(last) == len(last):
                done_at.append(time.monotonic())
                return True
            return False

        completed = _wait(drained, timeout)
        rss = worker.peak_rss_mib()
        first = watcher.first_at
        elapsed = (done_at[0] if done_at else time.monotonic()) - (first or time.monotonic())
    finally:
        worker.stop()
        watcher.close()
    return {
        "events": len(events),
        "users": len(last),
        "completed": completed,
        "seconds": round(elapsed, 2),
        "events_per_s": round(len(events) / elapsed, 1) if completed and elapsed > 0 else None,
        "peak_rss_mib": None if rss is None else round(rss),
    }


def measure_latency(
    settings: Settings,
    workdir: Path,
    model: str,
    events: Iterator[Event],
    rate: float,
    seconds: float,
    runtime: str = "native",
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Send at ``rate`` for ``seconds`` (after a warm-up at the rate); send-to-list p50/p99."""
    from stream.kafka.topics import ensure_topics, topic_specs

    ensure_topics(settings.kafka, topic_specs(settings.topics))
    watcher = ListWatcher(settings.kafka, settings.topics.recommendations)
    worker = WorkerProcess(settings, workdir / "state", model, runtime)
    try:
        # The first batches pay for imports and first allocations, a new producer's
        # first transactions are slower: warm up at the rate, then measure.
        warm = max(2000, int(rate * 3))
        producer = paced_producer(settings)
        send_paced(settings, events, rate, warm, watcher, producer)
        if not _wait(lambda: watcher.waiting() == 0 or not worker.alive(), timeout, 0.05):
            raise RuntimeError("the warm-up events were not all answered")
        with watcher.lock:
            watcher.latencies.clear()
        n = int(rate * seconds)
        send_paced(settings, events, rate, n, watcher, producer)
        completed = _wait(lambda: watcher.waiting() == 0 or not worker.alive(), timeout, 0.05)
        if not worker.alive():
            raise RuntimeError(f"the worker exited (log: {worker.log.name})")
        rss = worker.peak_rss_mib()
        with watcher.lock:
            lat = list(watcher.latencies)
    finally:
        worker.stop()
        watcher.close()
    return {
        "rate": rate,
        "events": len(lat),
        "completed": completed,
        **percentiles(lat),
        "peak_rss_mib": None if rss is None else round(rss),
    }
