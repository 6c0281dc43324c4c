"""What sharing one model across workers costs: backlog events/s with sharing on and off.

    python -m bench.model_sync [--events 20000] [--workers 1,3]

For each worker count, the same synthetic backlog is published onto fresh
topics and drained by that many workers of one group (threads of this
process, the interest model, exactly-once), once with model sharing off (each
worker trains alone) and once on (count deltas in every batch's transaction,
parameter deltas every ``--sync-every`` seconds, every worker adding every
delta). Events/s = events applied by the group / (last applied - first
consumed). Also prints the bytes of deltas per event and the size of the
model's snapshot as it goes onto the model topic (chunks of 512 KiB). Prints
figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from model.data.synthetic import SyntheticStream
from model.factory import create_serving_model
from model.persist import Persistent, model_to_bytes
from stream.cli.publish import Publisher
from stream.config import BOOTSTRAP_ENV, KafkaConfig, Settings, TopicsConfig, WorkerConfig
from stream.kafka.modeltopic import CHUNK_BYTES
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker

__all__ = ["main"]


def _settings(bootstrap: str, args: argparse.Namespace, sharing: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    topics = TopicsConfig(
        events=f"sync{tag}.events",
        recommendations=f"sync{tag}.recommendations",
        dead_letter=f"sync{tag}.dead-letter",
        partitions=args.partitions,
    )
    worker = WorkerConfig(
        group=f"sync-{tag}",
        metrics_port=0,
        batch_max_events=500,
        batch_max_ms=50,
        model_sharing=sharing,
        sync_every_s=args.sync_every,
    )
    return Settings(kafka=KafkaConfig(bootstrap_servers=bootstrap), topics=topics, worker=worker)


def drain(bootstrap: str, state_dir: Path, args: argparse.Namespace, n: int, sharing: str) -> dict:
    """``n`` workers drain one backlog; their group's events/s and what sharing sent."""
    settings = _settings(bootstrap, args, sharing)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    with Publisher(settings) as pub:
        pub.publish(SyntheticStream(seed=1), limit=args.events)
    workers = []
    for i in range(n):
        own = replace(settings, worker=replace(settings.worker, state_dir=state_dir / str(i)))
        workers.append(Worker(own, create_serving_model("interest"), registry=CollectorRegistry()))
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for th in threads:
        th.start()
    while sum(w.stats.consumed for w in workers) == 0:
        time.sleep(0.01)
    t0 = time.monotonic()
    while sum(w.stats.applied for w in workers) < args.events:
        if time.monotonic() - t0 > args.timeout:
            break
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    sent = sum(
        w.metrics.registry.get_sample_value("interest_model_update_bytes_total", {"kind": k}) or 0
        for w in workers
        for k in ("counts", "params")
    )
    merges = sum(
        w.metrics.registry.get_sample_value("interest_model_merges_total") or 0 for w in workers
    )
    stop.set()
    for th in threads:
        th.join(60)
    applied = sum(w.stats.applied for w in workers)
    model = workers[0].model
    assert isinstance(model, Persistent), "the interest model saves itself"
    snapshot = len(model_to_bytes(model))
    return {
        "workers": n,
        "sharing": sharing,
        "events": applied,
        "seconds": round(elapsed, 2),
        "events_per_s": round(applied / elapsed, 1) if elapsed else None,
        "delta_bytes_per_event": round(sent / applied, 1) if applied else None,
        "merges": int(merges),
        "snapshot_bytes": snapshot,
        "snapshot_chunks": -(-snapshot // CHUNK_BYTES),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.model_sync",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--workers", default="1,3", help="worker counts, comma-separated")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--sync-every", type=int, default=WorkerConfig.sync_every_s)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    broker = None
    runs = []
    with tempfile.TemporaryDirectory(prefix="interest-bench-") as tmp:
        if not bootstrap:
            from stream.kafka.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=Path(tmp) / "kafka").start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            for n in counts:
                for sharing in ("off", "on"):
                    state = Path(tmp) / f"{n}-{sharing}"
                    runs.append(drain(bootstrap, state, args, n, sharing))
        finally:
            if broker is not None:
                broker.stop()
    print(json.dumps({"sync_every_s": args.sync_every, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
