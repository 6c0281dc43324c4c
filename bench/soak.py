"""A long run at a steady rate: does anything in the worker grow without bound?

One worker (``interest-stream worker`` in a process of its own, see
:class:`bench.field.WorkerProcess`) is fed the field workload
(:func:`bench.field.field_stream`, 100,000 users x 100,000 Zipf items) at
``--rate`` events/s for ``--minutes``. Every ``--sample-s`` seconds this
process notes, from outside the worker:

* ``rss_mib``, ``threads``, ``open_files``: the worker's resident size,
  threads and file descriptors (``/proc/PID/status``, ``/proc/PID/fd``);
* ``state_mib``: the state directory's size on disk (blocks, as ``du``);
* ``p50_ms``, ``p99_ms``: send-to-list latency of the events sent in the
  interval, read_committed by this process (:class:`bench.field.ListWatcher`);
* ``applied_per_s``: events the worker applied per second in the interval (its
  ``interest_events_applied_total``);
* ``cpu_pct``, ``cpu_ms_per_event``: the worker's CPU time in the interval, as a
  share of one core and per event applied: a cost per event that grows is a leak
  in time, and a worker behind with ``cpu_pct`` well under 100 was starved of
  CPU by other processes rather than too slow;
* ``lag``: the events topic's end offsets minus the group's committed offsets;
* ``waiting``: events sent whose list has not been seen yet;
* ``sent_per_s``, ``lists_per_s``: what was sent and seen in the interval.

At the end it prints, over the samples after ``--warmup-minutes``, the first
and last value and the least-squares slope per hour of each figure, and
writes every sample with ``--json`` / ``--csv``. Nothing is asserted: a
slope is read against the run's length and the machine's noise.

    python -m bench.soak --minutes 60 --json soak.json --csv soak.csv
    python -m bench.soak --minutes 0.3 --sample-s 5     # a smoke run

Uses ``$INTEREST_KAFKA_BOOTSTRAP`` when set, else starts the embedded broker.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.field import (
    ITEMS,
    USERS,
    ListWatcher,
    WorkerProcess,
    bench_settings,
    field_stream,
    paced_producer,
    percentiles,
)
from core.types import Event
from engine.events import encode_event
from stream.config import BOOTSTRAP_ENV, Settings
from stream.kafka.topics import ensure_topics, topic_specs

__all__ = [
    "Sender",
    "probe_process",
    "cpu_seconds",
    "dir_size_mib",
    "group_lag",
    "summarize",
    "soak",
    "main",
]

# Figures summarised (start, end, slope per hour) after the warm-up.
TRENDS = (
    "rss_mib",
    "open_files",
    "threads",
    "state_mib",
    "p99_ms",
    "lag",
    "waiting",
    "cpu_ms_per_event",
)


class Sender(threading.Thread):
    """Sends the stream at ``rate`` events/s until stopped, each event timed by ``watcher``.

    Paced against a fixed start: when the process falls behind it sends what is
    due at once, so the mean rate holds; ``sent`` counts what went out.
    """

    def __init__(
        self,
        settings: Settings,
        events: Iterator[Event],
        rate: float,
        watcher: ListWatcher,
        producer: Producer,
    ) -> None:
        super().__init__(name="soak-sender", daemon=True)
        self.settings, self.events, self.rate = settings, events, rate
        self.watcher, self.producer = watcher, producer
        self.sent = 0
        self._halt = threading.Event()

    def run(self) -> None:
        topic = self.settings.topics.events
        t0 = time.monotonic()
        base = int(time.time() * 1000)
        while not self._halt.is_set():
            ahead = t0 + self.sent / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(min(ahead, 0.1))
                continue
            ev = next(self.events)
            ev = Event(ev.user_id, ev.item_id, ev.event, base + self.sent, ev.category)
            key, value = encode_event(ev)
            self.watcher.sent(ev, time.monotonic())
            while True:
                try:
                    self.producer.produce(topic, value, key)
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.producer.poll(0)
            self.sent += 1
        self.producer.flush(30)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def probe_process(pid: int) -> dict[str, float | None]:
    """Resident size (MiB), threads and open file descriptors of a running process."""
    out: dict[str, float | None] = {"rss_mib": None, "threads": None, "open_files": None}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    out["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
        out["open_files"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a running process, seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_size_mib(path: Path) -> float:
    """Disk space taken by the files under ``path`` (allocated blocks, as ``du``), MiB."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass  # RocksDB deletes files while we walk
    return round(total / 2**20, 1)


def group_lag(consumer: Consumer, topic: str, partitions: int) -> int | None:
    """End offsets minus the group's committed offsets, summed over the partitions."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        committed = consumer.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
        return lag
    except Exception:  # noqa: BLE001 - a broker hiccup costs one sample's lag, not the run
        return None


def _trend(rows: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    pts = [(r["t_min"], r[key]) for r in rows if r.get(key) is not None]
    if not pts:
        return {"start": None, "end": None, "slope_per_hour": None}
    t = np.array([p[0] for p in pts], dtype=float) / 60.0
    v = np.array([p[1] for p in pts], dtype=float)
    slope = float(np.polyfit(t, v, 1)[0]) if len(pts) >= 2 and np.ptp(t) > 0 else None
    return {
        "start": round(float(v[0]), 1),
        "end": round(float(v[-1]), 1),
        "slope_per_hour": None if slope is None else round(slope, 2),
    }


def summarize(samples: list[dict[str, Any]], warmup_min: float) -> dict[str, Any]:
    """Start, end and slope per hour of each of :data:`TRENDS` over the samples after warm-up."""
    after = [s for s in samples if s["t_min"] >= warmup_min] or samples[-1:]
    return {
        "warmup_minutes": warmup_min,
        "samples_after_warmup": len(after),
        **{key: _trend(after, key) for key in TRENDS},
    }


def _line(s: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = "{:.0f}") -> str:
        return "-" if v is None else fmt.format(v)

    return (
        f"{s['t_min']:6.1f} min  rss {f(s['rss_mib'], '{:.1f}')} MiB  fds {f(s['open_files'])}"
        f"  threads {f(s['threads'])}  state {f(s['state_mib'], '{:.1f}')} MiB"
        f"  p50 {f(s['p50_ms'], '{:.1f}')} p99 {f(s['p99_ms'], '{:.1f}')} ms"
        f"  lag {f(s['lag'])}  waiting {s['waiting']}"
        f"  sent {s['sent_per_s']:.0f}/s applied {f(s['applied_per_s'])}/s"
        f" lists {s['lists_per_s']:.0f}/s  cpu {f(s['cpu_pct'])}%"
        f" {f(s['cpu_ms_per_event'], '{:.2f}')} ms/event"
    )


def soak(
    bootstrap: str,
    workdir: Path,
    minutes: float,
    rate: float = 1000.0,
    model: str = "interest",
    sample_s: float = 60.0,
    users: int = USERS,
    items: int = ITEMS,
    partitions: int = 4,
    snapshot_every_s: int = 60,
    out: Any = sys.stdout,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run the soak; return the samples and why it ended early (None: it ran to the end)."""
    settings = bench_settings(bootstrap, "soak", partitions)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    state_dir = workdir / "state"
    watcher = ListWatcher(settings.kafka, settings.topics.recommendations)
    worker = WorkerProcess(
        settings,
        state_dir,
        model,
        # Snapshots on, as a worker in production runs them (WorkerProcess turns them off).
        env={"INTEREST_SNAPSHOT_EVERY_S": str(snapshot_every_s)},
    )
    offsets = Consumer(
        settings.kafka.client_config(
            **{"group.id": settings.worker.group, "enable.auto.commit": False}
        )
    )
    sender = Sender(settings, field_stream(users, items), rate, watcher, paced_producer(settings))
    samples: list[dict[str, Any]] = []
    ended: str | None = None
    try:
        # As in production the worker is up before events come: wait for its metrics.
        deadline = time.monotonic() + 120
        while worker.metric("interest_batches_total") is None and worker.alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start (log: {worker.log.name})")
            time.sleep(0.5)
        t0 = time.monotonic()
        sender.start()
        last_sent, last_lists, last_at = 0, 0, t0
        last_cpu = cpu_seconds(worker.proc.pid)
        last_applied = worker.metric("interest_events_applied_total")
        n = max(1, round(minutes * 60 / sample_s))
        for i in range(1, n + 1):
            due = t0 + i * sample_s
            while time.monotonic() < due:
                if not worker.alive():
                    break
                time.sleep(min(1.0, max(0.0, due - time.monotonic())))
            if not worker.alive():
                ended = f"the worker exited with {worker.proc.returncode} (log: {worker.log.name})"
                break
            now = time.monotonic()
            with watcher.lock:
                lat, watcher.latencies = watcher.latencies, []
                lists = watcher.lists
            sent = sender.sent
            span = now - last_at
            cpu = cpu_seconds(worker.proc.pid)
            applied = worker.metric("interest_events_applied_total")
            used = None if cpu is None or last_cpu is None else cpu - last_cpu
            done = None if applied is None or last_applied is None else applied - last_applied
            sample: dict[str, Any] = {
                "t_min": round((now - t0) / 60, 2),
                **probe_process(worker.proc.pid),
                "state_mib": dir_size_mib(state_dir),
                **percentiles(lat),
                "answered": len(lat),
                "lag": group_lag(offsets, settings.topics.events, partitions),
                "waiting": watcher.waiting(),
                "sent_per_s": round((sent - last_sent) / span, 1),
                "lists_per_s": round((lists - last_lists) / span, 1),
                "applied_per_s": None if done is None else round(done / span, 1),
                "cpu_pct": None if used is None else round(100 * used / span, 1),
                "cpu_ms_per_event": (
                    round(1000 * used / done, 3) if used is not None and done else None
                ),
            }
            last_sent, last_lists, last_at = sent, lists, now
            last_cpu, last_applied = cpu, applied
            samples.append(sample)
            print(_line(sample), file=out, flush=True)
    finally:
        if sender.is_alive():
            sender.stop()
        worker.stop()
        watcher.close()
        offsets.close()
        admin = AdminClient(settings.kafka.client_config())
        t = settings.topics
        for future in admin.delete_topics([t.events, t.recommendations, t.dead_letter]).values():
            try:
                future.result(30)
            except Exception:  # noqa: BLE001 - leftover topics are only clutter
                pass
    return samples, ended


def _write_csv(path: Path, samples: list[dict[str, Any]]) -> None:
    if not samples:
        return
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="how long to send (default 60)")
    p.add_argument("--rate", type=float, default=1000.0, help="events/s (default 1000)")
    p.add_argument("--model", default="interest", help="the worker's --model (default interest)")
    p.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    p.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="samples before this are left out of the trends (default: 5, or a quarter of "
        "a run shorter than 20 minutes)",
    )
    p.add_argument("--users", type=int, default=USERS)
    p.add_argument("--items", type=int, default=ITEMS)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--snapshot-every-s", type=int, default=60, help="the worker's model snapshots (0: off)"
    )
    p.add_argument("--workdir", type=Path, default=None, help="state dir and worker log here")
    p.add_argument("--json", type=Path, default=None, help="write samples and summary here")
    p.add_argument("--csv", type=Path, default=None, help="write the samples here")
    args = p.parse_args(argv)
    warmup = args.warmup_minutes
    if warmup is None:
        warmup = 5.0 if args.minutes >= 20 else args.minutes / 4

    broker = None
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    with tempfile.TemporaryDirectory(prefix="interest-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        if not bootstrap:
            from stream.kafka.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=Path(tmp) / "kafka").start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            samples, ended = soak(
                bootstrap,
                workdir,
                args.minutes,
                rate=args.rate,
                model=args.model,
                sample_s=args.sample_s,
                users=args.users,
                items=args.items,
                partitions=args.partitions,
                snapshot_every_s=args.snapshot_every_s,
            )
        finally:
            if broker is not None:
                broker.stop()
    summary = summarize(samples, warmup) if samples else {}
    report = {
        "model": args.model,
        "rate": args.rate,
        "minutes": args.minutes,
        "workload": f"{args.users} users x {args.items} Zipf items",
        "partitions": args.partitions,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "broker": "embedded" if broker else bootstrap,
        "ended_early": ended,
        "summary": summary,
        "samples": samples,
    }
    print(f"after {warmup:g} min of warm-up (start -> end, slope per hour):")
    for key in TRENDS:
        tr = summary.get(key)
        if tr:
            print(f"  {key:11s} {tr['start']} -> {tr['end']}  ({tr['slope_per_hour']}/h)")
    if ended:
        print(f"ended early: {ended}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.csv:
        _write_csv(args.csv, samples)
    return 1 if ended or not samples else 0


if __name__ == "__main__":
    sys.exit(main())
