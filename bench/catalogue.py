"""Cost of one worker against catalogue size: events/s, event-to-list p99, peak RSS.

For each catalogue size (``--sizes``, default 10^4, 10^5, 10^6 items) and each
model (``--models``), on fresh topics of one broker:

1. the synthetic stream with ``--items`` = the size (``--users`` users,
   Zipf-like item popularity) is published: ``--events`` events as a backlog;
2. a worker starts in a child process of its own, so that its peak resident
   size is that size's alone, and drains the backlog: events/s = events /
   (last event applied - first batch consumed);
3. the stream goes on at ``--rate`` events/s for ``--seconds``; event-to-list
   latency = list delivered - the event's Kafka timestamp (p50, p99);
4. the child reports its peak RSS (``VmHWM``: everything it ever held, torch
   and the broker clients included) and its vocabulary size.

    python -m bench.catalogue [--sizes 10000,100000,1000000] [--models interest,popular]

Uses ``$INTEREST_KAFKA_BOOTSTRAP`` when set, else starts the embedded broker.
No assertions: it prints a table (and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _settings(bootstrap: str, state_dir: Path, tag: str, partitions: int) -> Any:
    from stream.config import KafkaConfig, Settings, TopicsConfig, WorkerConfig

    topics = TopicsConfig(
        events=f"cat{tag}.events",
        recommendations=f"cat{tag}.recommendations",
        dead_letter=f"cat{tag}.dead-letter",
        partitions=partitions,
    )
    worker = WorkerConfig(group=f"cat-{tag}", state_dir=state_dir, metrics_port=0)
    return Settings(kafka=KafkaConfig(bootstrap_servers=bootstrap), topics=topics, worker=worker)


def _stream(args: argparse.Namespace, size: int) -> Any:
    from model.data.synthetic import SyntheticStream

    return SyntheticStream(seed=args.seed, n_users=args.users, n_items=size)


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _peak_rss_mib() -> float:
    """This process's peak resident size, MiB.

    ``VmHWM`` belongs to the process's own memory map; ``getrusage``'s
    ``ru_maxrss`` also keeps the parent's peak across fork and exec on Linux,
    so it would charge a child with whatever the benchmark process held.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec: dict[str, Any]) -> int:
    """The worker process: drain, say so, serve the paced events, report, exit."""
    from prometheus_client import CollectorRegistry

    from model.factory import create_serving_model
    from stream.runtime.native import Worker

    state_dir = Path(spec["state_dir"])
    settings = _settings(spec["bootstrap"], state_dir, spec["tag"], spec["partitions"])
    model = create_serving_model(spec["model"])
    worker = Worker(settings, model, registry=CollectorRegistry())
    stop = threading.Event()
    th = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    th.start()
    backlog, paced, timeout = spec["events"], spec["paced"], spec["timeout"]
    _wait(lambda: worker.stats.consumed > 0, 180)
    t0 = time.monotonic()
    drained = _wait(lambda: worker.stats.applied >= backlog, timeout)
    elapsed = time.monotonic() - t0
    print(json.dumps({"drained": drained}), flush=True)  # the parent starts the paced run
    worker.stats.clear_latencies()
    served = _wait(lambda: worker.stats.applied >= backlog + paced, timeout)
    stats = worker.stats
    p50, p99 = stats.latency_ms(50), stats.latency_ms(99)
    report = {
        "completed": drained and served,
        "events_per_s": round(backlog / elapsed, 1) if drained and elapsed else None,
        "drain_s": round(elapsed, 1),
        "latency_events": len(stats.latency_samples()),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
        "vocabulary": len(getattr(model, "vocab", ())),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }
    print(json.dumps(report), flush=True)
    stop.set()
    th.join(60)
    return 0


def _measure(args: argparse.Namespace, bootstrap: str, tmp: Path, size: int, model: str) -> dict:
    from stream.cli.publish import Publisher
    from stream.kafka.topics import ensure_topics, topic_specs

    tag = uuid.uuid4().hex[:8]
    settings = _settings(bootstrap, tmp / tag, tag, args.partitions)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    events = iter(_stream(args, size))
    paced = int(args.rate * args.seconds)
    spec = {
        "bootstrap": bootstrap,
        "state_dir": str(tmp / tag),
        "tag": tag,
        "partitions": args.partitions,
        "model": model,
        "events": args.events,
        "paced": paced,
        "timeout": args.timeout,
    }
    # One producer for both phases: a fresh one would add its connection time to
    # the first paced events' latency.
    with Publisher(settings) as pub:
        pub.publish(itertools.islice(events, args.events))
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.catalogue", "--child", json.dumps(spec)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        try:
            first = json.loads(child.stdout.readline() or "{}")
            if first.get("drained"):
                pub.publish(events, rate=args.rate, limit=paced)
            report = json.loads(child.stdout.readline() or "{}")
            child.wait(120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return {"items": size, "model": model, "events": args.events, "rate": args.rate, **report}


def _fmt(row: dict, key: str, spec: str = ",.0f") -> str:
    value = row.get(key)
    return "-" if value is None else format(value, spec)


def _table(rows: list[dict]) -> str:
    head = (
        f"{'model':<10} {'items':>10} {'vocabulary':>10} {'events/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS MiB':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<10} {r['items']:>10,} {_fmt(r, 'vocabulary', ','):>10} "
            f"{_fmt(r, 'events_per_s'):>9} {_fmt(r, 'p50_ms', '.1f'):>7} "
            f"{_fmt(r, 'p99_ms', '.1f'):>7} {_fmt(r, 'peak_rss_mib'):>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.catalogue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes (items)")
    p.add_argument("--models", default="interest,popular", help="models, comma-separated")
    p.add_argument("--events", type=int, default=100_000, help="backlog events per size")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=500.0, help="events/s of the latency run")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1200.0, help="per phase, seconds")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the rows here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    from stream.config import BOOTSTRAP_ENV

    broker = None
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="interest-bench-") as tmp:
        if not bootstrap:
            from stream.kafka.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=Path(tmp) / "kafka").start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            for model in models:
                for size in sizes:
                    row = _measure(args, bootstrap, Path(tmp), size, model)
                    print(f"catalogue: {json.dumps(row)}", file=sys.stderr, flush=True)
                    rows.append(row)
        finally:
            if broker is not None:
                broker.stop()
    print(
        f"one worker, {args.events:,} backlog events over {args.users:,} users per size, "
        f"latency at {args.rate:,.0f} events/s for {args.seconds:.0f} s; "
        f"{platform.machine()}, {os.cpu_count()} cpu, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end"
    )
    print(_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
