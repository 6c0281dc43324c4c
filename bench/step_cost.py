"""Per-batch cost of the pure step by catalogue size, without Kafka.

Replays ``--events`` synthetic events (``--users`` users, ``--items`` sizes)
through :func:`model.step.process_batch` in worker-sized micro-batches and
prints the mean milliseconds per batch over the first and the last quarter of
the stream, and events/s over the last quarter. ``--exhaustive-rows`` moves
the interest model's switch between ranking every item and ranking candidates
(``0``: always candidates), which is how the default switch was chosen.

    python -m bench.step_cost --items 2000,4000 --exhaustive-rows 0,100000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from model.evaluate import MemoryStates
from model.factory import create_model
from model.step import process_batch
from model.synthetic import SyntheticStream

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="10000,1000000", help="catalogue sizes")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--model", default="interest")
    p.add_argument(
        "--exhaustive-rows", default="", help="interest only: values to try (default: the model's)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    variants: list[dict] = [{}]
    if args.exhaustive_rows:
        variants = [{"exhaustive_rows": int(v)} for v in args.exhaustive_rows.split(",")]
    print(
        f"{'items':>10} {'variant':<24} {'vocabulary':>10} {'ms/batch first q.':>17} "
        f"{'last q.':>8} {'events/s last q.':>16}"
    )
    for size in (int(s) for s in args.items.split(",")):
        events = list(
            SyntheticStream(seed=1, n_users=args.users, n_items=size, n_events=args.events)
        )
        for kw in variants:
            model, view = create_model(args.model, **kw), MemoryStates()
            times = []
            for i in range(0, len(events), args.batch):
                t0 = time.perf_counter()
                process_batch(events[i : i + args.batch], view, model)
                times.append(time.perf_counter() - t0)
            t = np.asarray(times)
            q = max(len(t) // 4, 1)
            name = ",".join(f"{k}={v}" for k, v in kw.items()) or "default"
            print(
                f"{size:>10,} {name:<24} {len(model.vocab):>10,} {t[:q].mean() * 1000:>17.1f} "
                f"{t[-q:].mean() * 1000:>8.1f} {args.batch / t[-q:].mean():>16,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
