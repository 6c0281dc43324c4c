"""Every runtime beside the Kafka ceiling, on the field workload and the small stream, in one run.

    python -m bench.runtimes [--users 100000 --items 100000] [--events 100000] [--rates 2000]

Two workloads (:mod:`bench.field`): the field workload (``--users`` users,
``--items`` Zipf(1.3) items) and the small synthetic stream (400 users, ~700
items; ``--small-events``). For each: (a) the raw ceiling, a bare
confluent-kafka loop that consumes, parses and re-produces every event with an
offset commit per batch; (b) the native worker exactly-once and (c)
at-least-once, (d) the Faust runtime (at-least-once), each with the ``popular``
and the ``interest`` model, every worker a process of its own. For each:
backlog events/s (a published backlog drained by one worker, until a
read_committed reader has seen every event's list), its ratio to (a), and
event-to-list latency p50/p99 at fixed publish rates, from each event's send
to the first read_committed list that covers it, both measured by this
process. The ceiling and the native backlogs are each the median of
``--repeat`` drains. Prints a table (and JSON), asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from bench.field import (
    ITEMS,
    USERS,
    bench_settings,
    field_stream,
    measure_backlog,
    measure_latency,
    small_stream,
)
from bench.throughput import add_batch_options
from core.types import Event
from stream.cli.publish import Publisher
from stream.config import BOOTSTRAP_ENV, KafkaConfig, Settings, TopicsConfig
from stream.kafka.topics import TopicSpec, ensure_topics

__all__ = ["ceiling", "main"]

MODELS = ("popular", "interest")
GUARANTEES = ("exactly-once", "at-least-once")


def ceiling(bootstrap: str, events: list[Event], partitions: int, batch: int) -> dict[str, Any]:
    """Backlog events/s of a bare loop: consume, parse, re-produce, commit per batch."""
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    tag = uuid.uuid4().hex[:8]
    source, sink = f"ceiling{tag}.in", f"ceiling{tag}.out"
    ensure_topics(kafka, [TopicSpec(source, partitions, 1), TopicSpec(sink, partitions, 1)])
    with Publisher(Settings(kafka=kafka, topics=TopicsConfig(events=source))) as pub:
        pub.publish(events)
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"ceiling-{tag}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
    )
    producer = Producer(kafka.client_config(**{"linger.ms": 2, "enable.idempotence": True}))
    consumer.subscribe([source])
    done = 0
    t0 = None
    deadline = time.monotonic() + 300
    while done < len(events) and time.monotonic() < deadline:
        msgs = consumer.consume(batch, timeout=0.5)
        if not msgs:
            continue
        if t0 is None:
            t0 = time.monotonic()
        for msg in msgs:
            value = msg.value()
            if msg.error() is not None or value is None:
                continue
            doc = json.loads(value)
            while True:
                try:
                    producer.produce(sink, json.dumps(doc).encode(), msg.key())
                    break
                except BufferError:
                    producer.poll(0.05)
            done += 1
        producer.poll(0)
        consumer.commit(asynchronous=True)
    producer.flush(60)
    elapsed = time.monotonic() - (t0 or time.monotonic())
    consumer.close()
    return {
        "events": done,
        "seconds": round(elapsed, 2),
        "events_per_s": round(done / elapsed, 1) if elapsed else None,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s, and every run's figure beside it."""
    rates = [r.get("events_per_s") or 0.0 for r in runs]
    mid = sorted(range(len(runs)), key=lambda i: rates[i])[len(runs) // 2]
    return {**runs[mid], "runs_events_per_s": rates, "median_of": len(runs)}


def _stream(workload: str, args: argparse.Namespace, seed: int) -> Any:
    if workload == "field":
        return field_stream(args.users, args.items, seed=seed)
    return small_stream(seed=seed)


def _worker_settings(
    bootstrap: str, args: argparse.Namespace, guarantee: str, prefix: str
) -> Settings:
    return bench_settings(
        bootstrap,
        prefix,
        args.partitions,
        processing_guarantee=guarantee,
        batch_max_events=args.batch_max_events,
        batch_max_ms=args.batch_max_ms,
        batch_catch_up_events=args.batch_catch_up_events,
    )


def run_workload(
    workload: str, args: argparse.Namespace, bootstrap: str, tmp: Path, rates: list[float]
) -> list[dict[str, Any]]:
    """The rows of one workload: the ceiling first, then every runtime and model."""
    n = args.events if workload == "field" else args.small_events
    backlog = list(itertools.islice(_stream(workload, args, seed=1), n))
    rows: list[dict[str, Any]] = []
    top = _median_run(
        [
            ceiling(bootstrap, backlog, args.partitions, args.batch_max_events)
            for _ in range(max(1, args.repeat))
        ]
    )
    rows.append({"workload": workload, "runtime": "raw confluent-kafka loop", "model": "-", **top})
    print(f"{workload} ceiling: {top}", file=sys.stderr, flush=True)
    runs: list[tuple[str, str, str, int]] = [
        (f"native {g}", g, "native", max(1, args.repeat)) for g in args.guarantees.split(",") if g
    ]
    if args.faust:
        runs.append(("faust at-least-once", "at-least-once", "faust", 1))
    for label, guarantee, runtime, repeat in runs:
        for model in [m for m in args.models.split(",") if m]:
            where = tmp / f"{workload}-{runtime}-{guarantee}-{model}"
            row: dict[str, Any] = {"workload": workload, "runtime": label, "model": model}
            drains = []
            for i in range(repeat):
                settings = _worker_settings(bootstrap, args, guarantee, "rt")
                drains.append(
                    measure_backlog(
                        settings, where / f"b{i}", model, backlog, runtime, args.timeout
                    )
                )
            row.update(_median_run(drains))
            for rate in rates:
                settings = _worker_settings(bootstrap, args, guarantee, "rl")
                lat = measure_latency(
                    settings,
                    where / f"r{int(rate)}",
                    model,
                    _stream(workload, args, seed=3),
                    rate,
                    args.seconds,
                    runtime,
                    args.timeout,
                )
                row[f"p50_ms@{int(rate)}"] = lat["p50_ms"]
                row[f"p99_ms@{int(rate)}"] = lat["p99_ms"]
            rows.append(row)
            print(f"{row}", file=sys.stderr, flush=True)
    base = rows[0]["events_per_s"] or 1.0
    for row in rows:
        row["ratio_to_ceiling"] = round((row.get("events_per_s") or 0.0) / base, 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.runtimes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--users", type=int, default=USERS, help="field workload: users")
    p.add_argument("--items", type=int, default=ITEMS, help="field workload: items (Zipf)")
    p.add_argument("--events", type=int, default=100_000, help="field workload: backlog size")
    p.add_argument("--small-events", type=int, default=30_000, help="small stream: backlog size")
    p.add_argument(
        "--workloads", default="field,small", help="field, small or both (comma-separated)"
    )
    p.add_argument("--rates", default="2000", help="publish rates of the latency runs")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each latency run")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--guarantees", default=",".join(GUARANTEES))
    add_batch_options(p)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument(
        "--repeat", type=int, default=3, help="drains per ceiling and native backlog (median)"
    )
    p.add_argument(
        "--no-faust", dest="faust", action="store_false", help="leave the Faust runtime out"
    )
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    broker = None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="interest-bench-") as tmp:
        if not bootstrap:
            from stream.kafka.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=Path(tmp) / "kafka").start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
                rows += run_workload(workload, args, bootstrap, Path(tmp), rates)
        finally:
            if broker is not None:
                broker.stop()
    print(json.dumps(rows, indent=2))
    print(_table(rows, rates, args), file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _table(rows: list[dict[str, Any]], rates: list[float], args: argparse.Namespace) -> str:
    lat = "".join(f" p50/p99 @{int(r)} ev/s |" for r in rates)
    lines = [
        f"field: {args.users:,} users x {args.items:,} Zipf items, {args.events:,} backlog "
        f"events; small: the synthetic stream, {args.small_events:,} events",
        f"| workload | runtime | model | backlog events/s | ratio to ceiling |{lat}",
        "| --- | --- | --- | --- | --- |" + " --- |" * len(rates),
    ]
    for row in rows:
        cells = "".join(
            f" {row.get(f'p50_ms@{int(r)}', '-')} / {row.get(f'p99_ms@{int(r)}', '-')} ms |"
            for r in rates
        )
        lines.append(
            f"| {row['workload']} | {row['runtime']} | {row['model']} | "
            f"{row.get('events_per_s')} | {row['ratio_to_ceiling']:.1%} |{cells}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
