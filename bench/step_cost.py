"""Per-batch cost of the pure step by catalogue size, without Kafka.

Replays ``--events`` synthetic events (``--users`` users, ``--items`` sizes)
through :func:`model.step.process_batch` in worker-sized micro-batches and
prints the mean milliseconds per batch over the first and the last quarter of
the stream, of which (last quarter) the lists' part (the worker's list path:
everything but the gradient step, which runs while the batch commits), and
events/s over the last quarter. ``--exhaustive-rows`` moves
the interest model's switch between ranking every item and ranking candidates
(``0``: always candidates), which is how the default switch was chosen.
``--memory`` adds the model's bytes per item row by part (arrays and the
vocabulary's Python objects; the process around it is not counted).

    python -m bench.step_cost --items 2000,4000 --exhaustive-rows 0,100000
    python -m bench.step_cost --items 10000,1000000 --memory
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from model.data.synthetic import SyntheticStream
from model.factory import create_model
from model.step import process_batch
from state.views import MemoryStates

__all__ = ["main", "memory_per_row"]


def _nbytes(*arrays: Any) -> int:
    return sum(int(a.nbytes) for a in arrays)


def memory_per_row(model: Any) -> dict[str, float]:
    """Bytes per item row held by ``model``, by part (allocated capacity included)."""
    rows = max(model.vocab.n_rows, 1)
    vocab = model.vocab
    ids = sys.getsizeof(vocab.ids) + sys.getsizeof(vocab.index)
    ids += sum(sys.getsizeof(i) for i in vocab.ids if i is not None)
    parts = {
        "vocabulary": ids + _nbytes(vocab._item_cat, vocab._last_seen, vocab._live),
        "scratch": _nbytes(model.marks._stamp, model.marks._slot),
    }
    memories = getattr(model, "memories", None)
    if memories is not None:  # the interest model
        parts["tables"] = sum(
            _nbytes(t.weight, t.exp_avg, t.exp_avg_sq, t.steps)
            for name, t in model.tables.items()
            if not name.startswith("cat")
        )
        parts["cooc"] = memories.cooc.memory_bytes()
        parts["counts"] = sum(c._values.nbytes for c in memories._counts().values())
        parts["top lists"] = sum(
            _nbytes(ix._group, ix._members) for ix in memories._indexes().values()
        )
        parts["scratch"] += _nbytes(model.params.changed)
    elif hasattr(model, "top"):  # popular
        parts["counts"] = model.counts._values.nbytes
        parts["top lists"] = _nbytes(model.top._group, model.top._members)
    out = {k: round(v / rows) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / rows)
    return out


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
    p.add_argument("--memory", action="store_true", help="bytes per item row, by part")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    variants: list[dict] = [{}]
    if args.exhaustive_rows:
        variants = [{"exhaustive_rows": int(v)} for v in args.exhaustive_rows.split(",")]
    print(
        f"{'items':>10} {'variant':<24} {'vocabulary':>10} {'ms/batch first q.':>17} "
        f"{'last q.':>8} {'lists':>6} {'events/s last q.':>16}"
    )
    for size in (int(s) for s in args.items.split(",")):
        events = list(
            SyntheticStream(seed=1, n_users=args.users, n_items=size, n_events=args.events)
        )
        for kw in variants:
            model, view = create_model(args.model, **kw), MemoryStates()
            times, lists = [], []
            for i in range(0, len(events), args.batch):
                t0 = time.perf_counter()
                # As the worker: the hit rate from the held list, the step after the lists.
                res = process_batch(
                    events[i : i + args.batch], view, model, score="held", learn="later"
                )
                t1 = time.perf_counter()
                if res.finish_learning is not None:
                    res.finish_learning()
                times.append(time.perf_counter() - t0)
                lists.append(t1 - t0)
            t, lt = np.asarray(times), np.asarray(lists)
            q = max(len(t) // 4, 1)
            name = ",".join(f"{k}={v}" for k, v in kw.items()) or "default"
            items = len(getattr(model, "vocab", ()))
            print(
                f"{size:>10,} {name:<24} {items:>10,} {t[:q].mean() * 1000:>17.1f} "
                f"{t[-q:].mean() * 1000:>8.1f} {lt[-q:].mean() * 1000:>6.1f} "
                f"{args.batch / t[-q:].mean():>16,.0f}",
                flush=True,
            )
            if args.memory:
                print(f"{'':>10} bytes per item row: {memory_per_row(model)}", flush=True)


if __name__ == "__main__":
    main()
