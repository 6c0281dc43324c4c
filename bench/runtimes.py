"""Every runtime beside the Kafka ceiling, on the same events and broker, in one run.

    python -m bench.runtimes [--events 30000] [--rates 1000,2000] [--seconds 15]

(a) the raw ceiling: a bare confluent-kafka loop that consumes, parses and
re-produces every event, with an offset commit per batch; (b) the native worker
at-least-once and (c) exactly-once, (d) the Faust runtime (at-least-once, a
worker process of its own: Faust needs its process's main thread), each with
the ``popular`` and the ``interest`` model. For each: backlog events/s (a
published backlog drained by one worker), its ratio to (a), and event-to-list
latency p50/p99 at fixed publish rates. The ceiling and the native backlogs
are each the median of ``--repeat`` drains (a 30,000-event drain at the
ceiling's rate lasts ~0.2 s: single runs spread 112,000-180,000 events/s).
Prints a table (and JSON), asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from bench.throughput import (
    _settings,
    add_batch_options,
    measure_latency,
    measure_throughput,
)
from model.data.synthetic import SyntheticStream
from stream.cli.publish import Publisher
from stream.config import BOOTSTRAP_ENV, KafkaConfig, Settings, TopicsConfig
from stream.kafka.broker import free_port
from stream.kafka.topics import TopicSpec, ensure_topics, topic_specs

__all__ = ["ceiling", "main"]

MODELS = ("popular", "interest")
GUARANTEES = ("at-least-once", "exactly-once")


def ceiling(bootstrap: str, events: int, partitions: int, batch: int) -> dict[str, Any]:
    """Backlog events/s of a bare loop: consume, parse, re-produce, commit per batch."""
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    tag = uuid.uuid4().hex[:8]
    source, sink = f"ceiling{tag}.in", f"ceiling{tag}.out"
    ensure_topics(kafka, [TopicSpec(source, partitions, 1), TopicSpec(sink, partitions, 1)])
    pub_settings = Settings(kafka=kafka, topics=TopicsConfig(events=source))
    with Publisher(pub_settings) as pub:
        pub.publish(SyntheticStream(seed=1), limit=events)
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
    while done < events and time.monotonic() < deadline:
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


def _applied(url: str) -> float:
    """``interest_events_applied_total`` read from a worker's metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "interest_events_applied_total":
                return float(sample.value)
    return 0.0


def faust_run(
    bootstrap: str, workdir: Path, args: argparse.Namespace, rate: float | None
) -> dict[str, Any]:
    """The Faust runtime in a process of its own: a backlog (``rate`` None) or a paced run."""
    settings = _settings(bootstrap, workdir, _args(args, guarantee="at-least-once"))
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    t, w = settings.topics, settings.worker
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env.update(
        {
            "INTEREST_TOPIC_EVENTS": t.events,
            "INTEREST_TOPIC_RECOMMENDATIONS": t.recommendations,
            "INTEREST_TOPIC_DEAD_LETTER": t.dead_letter,
            "INTEREST_TOPIC_PARTITIONS": str(t.partitions),
            "INTEREST_BATCH_MAX_EVENTS": str(w.batch_max_events),
            "INTEREST_BATCH_MAX_MS": str(w.batch_max_ms),
            "INTEREST_MODEL": args.model,
            "INTEREST_SNAPSHOT_EVERY_S": "0",
        }
    )
    url = f"http://127.0.0.1:{port}/metrics"
    n = args.events if rate is None else int(rate * args.seconds)
    warm = 0 if rate is None else 200
    if rate is None:
        with Publisher(settings) as pub:
            pub.publish(SyntheticStream(seed=1), limit=n)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "worker",
            "--runtime",
            "faust",
            "--bootstrap-servers",
            bootstrap,
            "--group",
            w.group,
            "--state-dir",
            str(workdir / "state"),
            "--metrics-port",
            str(port),
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = None
    try:
        deadline = time.monotonic() + args.timeout
        if rate is not None:
            _until(lambda: _reachable(url), deadline)
            with Publisher(settings) as pub:
                pub.publish(SyntheticStream(seed=2), limit=warm)
                _until(lambda: _applied(url) >= warm, deadline)
                pub.publish(SyntheticStream(seed=3), rate=rate, limit=n)
        while time.monotonic() < deadline:
            done = _applied(url) if _reachable(url) else 0.0
            if done > 0 and t0 is None:
                t0 = time.monotonic()
            if done >= n + warm:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - (t0 or time.monotonic())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    summary = json.loads(err.split("worker stopped: ", 1)[1].splitlines()[0])
    if rate is None:
        return {
            "events": n,
            "seconds": round(elapsed, 2),
            "events_per_s": round(n / elapsed, 1) if elapsed else None,
        }
    return {"p50_ms": summary["latency_p50_ms"], "p99_ms": summary["latency_p99_ms"]}


def _reachable(url: str) -> bool:
    try:
        _applied(url)
        return True
    except OSError:
        return False


def _until(cond: Any, deadline: float) -> None:
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s, and every run's figure beside it."""
    rates = [r.get("events_per_s") or 0.0 for r in runs]
    mid = sorted(range(len(runs)), key=lambda i: rates[i])[len(runs) // 2]
    return {**runs[mid], "runs_events_per_s": rates, "median_of": len(runs)}


def _args(base: argparse.Namespace, **kw: Any) -> argparse.Namespace:
    out = argparse.Namespace(**vars(base))
    for k, v in kw.items():
        setattr(out, k, v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.runtimes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=30_000, help="backlog size")
    p.add_argument("--rates", default="1000,2000", help="publish rates of the latency runs")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each latency run")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--guarantees", default=",".join(GUARANTEES))
    add_batch_options(p)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument(
        "--repeat", type=int, default=3, help="drains per ceiling and native backlog (median)"
    )
    p.add_argument(
        "--no-faust", dest="faust", action="store_false", help="leave the Faust runtime out"
    )
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
            top = _median_run(
                [
                    ceiling(bootstrap, args.events, args.partitions, args.batch_max_events)
                    for _ in range(max(1, args.repeat))
                ]
            )
            rows.append({"runtime": "raw confluent-kafka loop", "model": "-", **top})
            print(f"ceiling: {top}", file=sys.stderr, flush=True)
            for guarantee in [g for g in args.guarantees.split(",") if g]:
                for model in [m for m in args.models.split(",") if m]:
                    run = _args(args, model=model, guarantee=guarantee)
                    where = Path(tmp) / f"{guarantee}-{model}"
                    row: dict[str, Any] = {"runtime": f"native {guarantee}", "model": model}
                    row.update(
                        _median_run(
                            [
                                measure_throughput(bootstrap, where / f"b{i}", run)
                                for i in range(max(1, args.repeat))
                            ]
                        )
                    )
                    row.pop("stage_seconds", None)
                    for rate in rates:
                        lat = measure_latency(
                            bootstrap, where / f"r{int(rate)}", _args(run, rate=rate)
                        )
                        row[f"p50_ms@{int(rate)}"] = lat["p50_ms"]
                        row[f"p99_ms@{int(rate)}"] = lat["p99_ms"]
                    rows.append(row)
                    print(f"{row}", file=sys.stderr, flush=True)
            if args.faust:
                for model in [m for m in args.models.split(",") if m]:
                    run = _args(args, model=model)
                    where = Path(tmp) / f"faust-{model}"
                    row = {"runtime": "faust at-least-once", "model": model}
                    row.update(faust_run(bootstrap, where / "backlog", run, None))
                    for rate in rates:
                        lat = faust_run(bootstrap, where / f"r{int(rate)}", run, rate)
                        row[f"p50_ms@{int(rate)}"] = lat["p50_ms"]
                        row[f"p99_ms@{int(rate)}"] = lat["p99_ms"]
                    rows.append(row)
                    print(f"{row}", file=sys.stderr, flush=True)
        finally:
            if broker is not None:
                broker.stop()
    base = rows[0]["events_per_s"] or 1.0
    for row in rows:
        row["ratio_to_ceiling"] = round((row.get("events_per_s") or 0.0) / base, 3)
    print(json.dumps(rows, indent=2))
    print(_table(rows, rates), file=sys.stderr)
    return 0


def _table(rows: list[dict[str, Any]], rates: list[float]) -> str:
    lat = "".join(f" p50/p99 @{int(r)} ev/s |" for r in rates)
    lines = [
        f"| runtime | model | backlog events/s | ratio to ceiling |{lat}",
        "| --- | --- | --- | --- |" + " --- |" * len(rates),
    ]
    for row in rows:
        cells = "".join(
            f" {row.get(f'p50_ms@{int(r)}', '-')} / {row.get(f'p99_ms@{int(r)}', '-')} ms |"
            for r in rates
        )
        lines.append(
            f"| {row['runtime']} | {row['model']} | {row.get('events_per_s')} | "
            f"{row['ratio_to_ceiling']:.1%} |{cells}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
