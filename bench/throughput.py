"""End-to-end throughput and freshness of one worker on a real broker, as users meet them.

On the field workload (``--users`` users, ``--items`` Zipf items; see
:mod:`bench.field`) or the small synthetic stream (``--workload small``), on
fresh topics, with the worker in a process of its own (``interest-stream worker``):

1. **throughput**: ``--events`` events are published first, then the worker
   drains the backlog (once per processing guarantee, ``--guarantees``);
   events/s = events / (the first list seen -> every event's list seen),
   read_committed, by this process;
2. **latency**: this process sends ``--rate`` events/s for ``--seconds`` (after
   a warm-up at the rate); each event's latency runs from its send to the
   first read_committed list that covers it; p50/p99.

    python -m bench.throughput [--model interest] [--users 100000 --items 100000] [--rate 2000]

:func:`measure_throughput` and :func:`measure_latency` run a worker in this
process instead, for the studies that read its per-stage metrics
(``bench.refresh_cost``). Uses ``$INTEREST_KAFKA_BOOTSTRAP`` when set, else
starts the embedded broker. No assertions: it prints figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.field import (
    ITEMS,
    USERS,
    bench_settings,
    field_stream,
    measure_backlog,
    small_stream,
)
from bench.field import measure_latency as field_latency
from core.types import Event
from engine.metrics import STAGES
from model.data.synthetic import SyntheticStream
from model.factory import create_serving_model
from stream.cli.publish import Publisher
from stream.config import BOOTSTRAP_ENV, KafkaConfig, Settings, TopicsConfig, WorkerConfig
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker

__all__ = ["main"]


_WARM_UP = 2000  # events before the latency run, not measured (at least)
_WARM_UP_S = 3.0  # seconds of the rate before the latency run, not measured (at least)


def _settings(bootstrap: str, state_dir: Path, args: argparse.Namespace) -> Settings:
    tag = uuid.uuid4().hex[:8]
    topics = TopicsConfig(
        events=f"bench{tag}.events",
        recommendations=f"bench{tag}.recommendations",
        dead_letter=f"bench{tag}.dead-letter",
        partitions=args.partitions,
    )
    worker = WorkerConfig(
        group=f"bench-{tag}",
        state_dir=state_dir,
        metrics_port=0,
        batch_max_events=args.batch_max_events,
        batch_max_ms=args.batch_max_ms,
        batch_catch_up_events=getattr(
            args, "batch_catch_up_events", WorkerConfig.batch_catch_up_events
        ),
        processing_guarantee=args.guarantee,
        refresh_budget_percent=getattr(
            args, "refresh_budget_percent", WorkerConfig.refresh_budget_percent
        ),
    )
    return Settings(kafka=KafkaConfig(bootstrap_servers=bootstrap), topics=topics, worker=worker)


def _start_worker(
    settings: Settings, model_name: str
) -> tuple[Worker, threading.Thread, threading.Event]:
    worker = Worker(settings, create_serving_model(model_name), registry=CollectorRegistry())
    stop = threading.Event()
    th = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    th.start()
    return worker, th, stop


def _wait(cond, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def measure_throughput(bootstrap: str, state_dir: Path, args: argparse.Namespace) -> dict:
    settings = _settings(bootstrap, state_dir / "throughput", args)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    with Publisher(settings) as pub:
        pub.publish(SyntheticStream(seed=1), limit=args.events)
    worker, th, stop = _start_worker(settings, args.model)
    _wait(lambda: worker.stats.consumed > 0, 120)
    t0 = time.monotonic()
    done = _wait(lambda: worker.stats.applied >= args.events, args.timeout)
    elapsed = time.monotonic() - t0
    stop.set()
    th.join(60)
    s = worker.stats.summary()
    return {
        "events": s["applied"],
        "completed": done,
        "seconds": round(elapsed, 2),
        "events_per_s": round(worker.stats.applied / elapsed, 1) if elapsed else None,
        "batches": s["batches"],
        "lists": s["lists_published"],
        "lists_refreshed": worker.stats.lists_refreshed,
        "refresh_seconds": round(
            worker.metrics.registry.get_sample_value("interest_refresh_seconds_sum") or 0.0, 3
        ),
        "stage_seconds": _stage_seconds(worker),
    }


def _stage_seconds(worker: Worker) -> dict[str, float]:
    """Total seconds spent per stage (where the time goes)."""
    reg = worker.metrics.registry
    return {
        stage: round(reg.get_sample_value("interest_stage_seconds_sum", {"stage": stage}) or 0.0, 3)
        for stage in (*STAGES, "learn")  # learn: alongside commit, on its own thread
    }


def _load(settings: Settings, rate: float, counts: tuple[int, ...], conn: Any) -> None:
    """The publisher's process: each count of events at ``rate`` when told, then "sent"."""
    events = iter(SyntheticStream(seed=3))
    with Publisher(settings) as pub:
        for count in counts:
            conn.recv()
            pub.publish(events, rate=rate, limit=count)
            conn.send("sent")


def _step(conn: Any, load: Any) -> None:
    """Let the publisher's process send its next count of events; wait until it has."""
    conn.send("go")
    while not conn.poll(1.0):
        if not load.is_alive():
            raise RuntimeError(f"the publisher's process stopped (exit code {load.exitcode})")
    conn.recv()


def measure_latency(bootstrap: str, state_dir: Path, args: argparse.Namespace) -> dict:
    settings = _settings(bootstrap, state_dir / "latency", args)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    worker, th, stop = _start_worker(settings, args.model)
    # Warm up on the stream's first events, at the rate: the first batches pay for
    # imports, lazy allocations and the catalogue's first rows, and a new producer's
    # first transactions commit several times slower (the first half second or so);
    # the steady state is what is measured.
    warm = max(_WARM_UP, int(args.rate * _WARM_UP_S))
    n = int(args.rate * args.seconds)
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    load = ctx.Process(target=_load, args=(settings, args.rate, (warm, n), there), daemon=True)
    load.start()
    try:
        _wait(worker.assigned.is_set, 120)
        _step(here, load)  # the warm-up events are out
        # Every warm-up event's latency is in before they are dropped (``applied`` counts
        # a batch's partitions one by one, each before its latencies).
        _wait(lambda: len(worker.stats.latency_samples()) >= warm, 120)
        worker.stats.clear_latencies()
        _step(here, load)  # the measured ones are out
        _wait(lambda: worker.stats.applied >= warm + n, args.timeout)
    finally:
        load.join(10)
        if load.is_alive():
            load.kill()
    stop.set()
    th.join(60)
    stats = worker.stats
    samples = stats.latency_samples()
    p50, p90, p99 = stats.latency_ms(50), stats.latency_ms(90), stats.latency_ms(99)
    return {
        "rate": args.rate,
        "events": len(samples),
        "p50_ms": round(p50, 1) if p50 else None,
        "p90_ms": round(p90, 1) if p90 else None,
        "p99_ms": round(p99, 1) if p99 else None,
        "max_ms": round(max(samples) * 1000, 1) if samples else None,
        "batches": stats.summary()["batches"],
        "stage_seconds": _stage_seconds(worker),
    }


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """The worker's micro-batch settings, as ``_settings`` reads them."""
    p.add_argument("--batch-max-events", type=int, default=WorkerConfig.batch_max_events)
    p.add_argument("--batch-max-ms", type=int, default=WorkerConfig.batch_max_ms)
    p.add_argument(
        "--batch-catch-up-events",
        type=int,
        default=WorkerConfig.batch_catch_up_events,
        help="the native worker's cap while catching up (at most --batch-max-events: off)",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="interest", help="model name for the factory")
    p.add_argument("--users", type=int, default=USERS, help="field workload: users")
    p.add_argument("--items", type=int, default=ITEMS, help="field workload: items (Zipf)")
    p.add_argument(
        "--workload",
        choices=("field", "small"),
        default="field",
        help="the field workload (default) or the small synthetic stream",
    )
    p.add_argument("--events", type=int, default=100_000, help="backlog size for throughput")
    p.add_argument("--rate", type=float, default=2000.0, help="events/s for the latency run")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    p.add_argument("--partitions", type=int, default=4)
    add_batch_options(p)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--only", choices=("throughput", "latency"))
    p.add_argument(
        "--guarantees",
        default="exactly-once,at-least-once",
        help="processing guarantees to measure, in one run (default: both)",
    )
    args = p.parse_args(argv)
    guarantees = [g.strip() for g in args.guarantees.split(",") if g.strip()]

    def stream(seed: int) -> Iterator[Event]:
        if args.workload == "field":
            return field_stream(args.users, args.items, seed=seed)
        return small_stream(seed=seed)

    broker = None
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    with tempfile.TemporaryDirectory(prefix="interest-bench-") as tmp:
        if not bootstrap:
            from stream.kafka.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=Path(tmp) / "kafka").start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            report: dict = {
                "model": args.model,
                "workload": (
                    f"{args.users} users x {args.items} Zipf items"
                    if args.workload == "field"
                    else "small synthetic stream"
                ),
                "partitions": args.partitions,
                "batch_max_events": args.batch_max_events,
                "batch_max_ms": args.batch_max_ms,
                "batch_catch_up_events": args.batch_catch_up_events,
                "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                "broker": "embedded" if broker else bootstrap,
            }
            backlog = list(itertools.islice(stream(1), args.events))
            for guarantee in guarantees:
                runs: dict = report.setdefault(guarantee, {})
                where = Path(tmp) / guarantee

                def settings(guarantee: str = guarantee) -> Settings:
                    return bench_settings(
                        bootstrap,
                        "tp",
                        args.partitions,
                        processing_guarantee=guarantee,
                        batch_max_events=args.batch_max_events,
                        batch_max_ms=args.batch_max_ms,
                        batch_catch_up_events=args.batch_catch_up_events,
                    )

                if args.only in (None, "throughput"):
                    runs["throughput"] = measure_backlog(
                        settings(), where / "backlog", args.model, backlog, timeout=args.timeout
                    )
                    print(
                        f"{guarantee} throughput: {runs['throughput']}", file=sys.stderr, flush=True
                    )
                if args.only in (None, "latency"):
                    runs["latency"] = field_latency(
                        settings(),
                        where / "latency",
                        args.model,
                        stream(3),
                        args.rate,
                        args.seconds,
                        timeout=args.timeout,
                    )
                    print(f"{guarantee} latency: {runs['latency']}", file=sys.stderr, flush=True)
        finally:
            if broker is not None:
                broker.stop()
    print(json.dumps(report, indent=2))
    print(_table(report, guarantees), file=sys.stderr)
    return 0


def _table(report: dict, guarantees: list[str]) -> str:
    rows = [
        "| guarantee | backlog events/s | p50 ms | p99 ms | at events/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for g in guarantees:
        t, lat = report[g].get("throughput", {}), report[g].get("latency", {})
        rows.append(
            f"| {g} | {t.get('events_per_s', '-')} | {lat.get('p50_ms', '-')} | "
            f"{lat.get('p99_ms', '-')} | {lat.get('rate', '-')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
