"""How well the interest model lists after a catch-up in bigger batches.

A worker that is behind takes batches of up to ``batch_catch_up_events``; the
model learns them in steps of at most ``step_events``. This learns the first
half of the synthetic stream (the backlog) in batches of each ``--batches``
size, then replays the second half test-then-learn in ``--live-batch`` batches
and prints its Recall@10: the model a catch-up leaves behind, beside one that
kept up. ``--one-step`` adds the same batches learnt in one step each.

    python -m bench.catch_up [--events 60000] [--batches 500,2000,4000] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from engine.replay.pull import evaluate_models
from model.data.synthetic import SyntheticStream
from model.factory import create_model
from model.interest.model import STEP_EVENTS
from model.step import process_batch
from state.views import MemoryStates

__all__ = ["main"]


def after_catch_up(seed: int, events: int, batch: int, step_events: int, live: int) -> float:
    """Recall@10 of the stream's second half after learning its first half in ``batch``es."""
    stream = list(itertools.islice(SyntheticStream(seed=seed), events))
    backlog, rest = stream[: events // 2], stream[events // 2 :]
    model = create_model("interest", seed=0, step_events=step_events)
    view = MemoryStates()
    for i in range(0, len(backlog), batch):
        process_batch(backlog[i : i + batch], view, model, score=False)
    report = evaluate_models(
        {"interest": model}, [], rest, k=10, batch_size=live, states=lambda: view
    )["interest"]
    return float(np.mean(report.hits))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.catch_up",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--batches", default="500,2000,4000", help="backlog batch sizes")
    p.add_argument("--seeds", default="0,1", help="synthetic stream seeds")
    p.add_argument("--live-batch", type=int, default=STEP_EVENTS)
    p.add_argument("--one-step", action="store_true", help="also one step per backlog batch")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print("| backlog batches | learnt in steps of | " + " | ".join(f"seed {s}" for s in seeds))
    print("| --- | --- | " + " | ".join("---" for _ in seeds))
    for batch in (int(b) for b in args.batches.split(",") if b.strip()):
        steps = [STEP_EVENTS] + ([batch] if args.one_step and batch > STEP_EVENTS else [])
        for step in steps:
            recall = [after_catch_up(s, args.events, batch, step, args.live_batch) for s in seeds]
            cells = " | ".join(f"{r:.4f}" for r in recall)
            print(f"| {batch:,} | {step:,} | {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
