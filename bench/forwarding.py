"""What forwarding mis-partitioned events costs: backlog events/s with 0% and 100% of them.

    python -m bench.forwarding [--events 30000] [--model popular]

The same synthetic events are published twice onto fresh topics: once where
their key belongs (murmur2, as ``interest-stream publish`` does), once every
event onto the next partition (as a producer with another partitioner would
for most users). One worker drains each backlog; events/s counts events
applied (the second run reads every event twice: once where it arrived, once
where it was forwarded to). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from bench.throughput import _settings
from core.partition import partition_for
from engine.events import encode_event
from model.data.synthetic import SyntheticStream
from model.factory import create_serving_model
from stream.config import BOOTSTRAP_ENV, Settings
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker

__all__ = ["main"]


def _publish(settings: Settings, events: list, shift: int) -> None:
    """Every event onto (its murmur2 partition + ``shift``) mod partitions."""
    n = settings.topics.partitions
    producer = Producer(settings.kafka.client_config(**{"linger.ms": 5}))
    for ev in events:
        key, value = encode_event(ev)
        while True:
            try:
                producer.produce(
                    settings.topics.events,
                    value,
                    key,
                    partition=(partition_for(key, n) + shift) % n,
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def drain(bootstrap: str, state_dir: Path, args: argparse.Namespace, shift: int) -> dict:
    settings = _settings(bootstrap, state_dir, args)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    events = list(SyntheticStream(seed=1, n_events=args.events))
    _publish(settings, events, shift)
    worker = Worker(settings, create_serving_model(args.model), registry=CollectorRegistry())
    stop = threading.Event()
    th = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    th.start()
    while worker.stats.consumed == 0:
        time.sleep(0.01)
    t0 = time.monotonic()
    while worker.stats.applied < len(events) and time.monotonic() - t0 < args.timeout:
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    stop.set()
    th.join(60)
    s = worker.stats
    return {
        "mis_partitioned": f"{100 if shift else 0}%",
        "events": s.applied,
        "forwarded": s.forwarded,
        "consumed": s.consumed,
        "seconds": round(elapsed, 2),
        "events_per_s": round(s.applied / elapsed, 1) if elapsed else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.forwarding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--model", default="popular")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--guarantee", default="exactly-once", choices=("exactly-once", "at-least-once"))
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    args.batch_max_events, args.batch_max_ms = 500, 50
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    broker = None
    with tempfile.TemporaryDirectory(prefix="interest-bench-") as tmp:
        if not bootstrap:
            from stream.kafka.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=Path(tmp) / "kafka").start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            runs = [drain(bootstrap, Path(tmp) / f"s{shift}", args, shift) for shift in (0, 1)]
        finally:
            if broker is not None:
                broker.stop()
    print(json.dumps({"model": args.model, "guarantee": args.guarantee, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
