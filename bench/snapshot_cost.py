"""What a model snapshot costs the worker, on a model trained on synthetic events.

    python -m bench.snapshot_cost [--events 50000] [--items-per-category 40] [--users 400]

Trains the interest model through the pure step (batches of 500, one torch
thread, as the worker runs), then times what :mod:`stream.runtime.snapshots` does: the
copy on the worker's thread (the only pause on the hot path), the write of that
copy (on a background thread in the worker: safetensors, fsync, rename) and a
load on start. No Kafka involved. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from model.data.synthetic import SyntheticStream
from model.factory import create_model
from model.step import process_batch
from state.store import MemoryStore
from stream.runtime.snapshots import ModelSnapshots, SnapshotPolicy

__all__ = ["main"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--items-per-category", type=int, default=40)
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--new-item-prob", type=float, default=0.004)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = create_model("interest")
    part = MemoryStore().open_partition("events", 0)
    stream = SyntheticStream(
        seed=7,
        n_events=args.events,
        n_users=args.users,
        items_per_category=args.items_per_category,
        new_item_prob=args.new_item_prob,
    )
    batch = []
    t0 = time.perf_counter()
    for ev in stream:
        batch.append(ev)
        if len(batch) == 500:
            txn = part.begin()
            process_batch(batch, txn, model)
            txn.commit()
            batch = []
    train_s = time.perf_counter() - t0
    copies, writes, loads = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        snaps = ModelSnapshots(Path(tmp) / "model", SnapshotPolicy())
        for _ in range(args.repeat):
            snaps.save(model)
            copies.append(snaps.copy_seconds)
            writes.append(snaps.write_seconds)
            t = time.perf_counter()
            snaps.restore(create_model("interest"))
            loads.append(time.perf_counter() - t)
        size = snaps.path.stat().st_size
    print(
        json.dumps(
            {
                "events": args.events,
                "items": len(getattr(model, "vocab", ())),
                "train_s": round(train_s, 1),
                "snapshot_mb": round(size / 1e6, 1),
                "copy_ms_on_worker_thread": [round(x * 1000, 1) for x in copies],
                "write_ms_background": [round(x * 1000, 1) for x in writes],
                "load_ms": [round(x * 1000, 1) for x in loads],
            }
        )
    )


if __name__ == "__main__":
    main()
