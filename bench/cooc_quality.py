"""Recall of the item-kNN baseline with bounded sparse co-occurrence vs the dense matrix.

Replays a data set through :class:`model.baselines.SequentialItemKNN` once with
the old dense :class:`model.signals.CoOccurrence` (exact counts) and once per
``--neighbours`` value with :class:`model.cooc.SparseCoOccurrence`. Recall@K is
printed for the first 30% of the scored events (where parameters may be
chosen) and for the remaining 70% (held out).

    python -m bench.cooc_quality --format synthetic --events 20000
    python -m bench.cooc_quality --data data/movielens-100k --format recbole --protocol flurs
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from model.baselines import SequentialItemKNN
from model.cli import _load
from model.cooc import SparseCoOccurrence
from model.evaluate import evaluate_models, split_flurs
from model.signals import CoOccurrence

__all__ = ["main"]

TUNE_SHARE = 0.3


def _variants(neighbours: list[int], exclude_seen: bool) -> dict[str, SequentialItemKNN]:
    dense = SequentialItemKNN(exclude_seen=exclude_seen)
    dense.cooc = CoOccurrence(None, max_items=1 << 14)  # the old exact matrix, big enough
    out = {"dense": dense}
    for m in neighbours:
        out[f"sparse-{m}"] = SequentialItemKNN(exclude_seen=exclude_seen, max_neighbours=m)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--format", default="synthetic")
    p.add_argument("--protocol", default="prequential", choices=("flurs", "prequential"))
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--neighbours", default="16,32,64,128")
    args = p.parse_args(argv)
    # model.cli's loader wants its CSV flags too.
    args.strict, args.columns, args.event_map = False, None, None
    events, ratings, stream = _load(args)
    flurs = args.protocol == "flurs"
    if flurs:
        train, update, test = split_flurs(events, ratings)
        warmup = [*train, *update]
    else:
        warmup, test = [], events
    models = _variants([int(m) for m in args.neighbours.split(",")], flurs)
    print(
        f"{args.format} {args.protocol}: {len(warmup)} warm-up + {len(test)} scored events, "
        f"{len({e.item_id for e in events})} items, K={args.k}"
    )
    print(
        f"{'model':<12} {'recall first 30%':>17} {'recall last 70%':>16} {'all':>7} "
        f"{'pairs':>8} {'seconds':>8}"
    )
    for name, model in models.items():
        t0 = time.perf_counter()
        report = evaluate_models({name: model}, warmup, test, k=args.k)[name]
        hits = np.asarray(report.hits, dtype=np.float64)
        cut = int(len(hits) * TUNE_SHARE)
        cooc = model.cooc
        pairs = cooc.n_pairs if isinstance(cooc, SparseCoOccurrence) else int((cooc._m > 0).sum())
        print(
            f"{name:<12} {hits[:cut].mean():>17.4f} {hits[cut:].mean():>16.4f} "
            f"{hits.mean():>7.4f} {pairs:>8} {time.perf_counter() - t0:>8.1f}"
        )


if __name__ == "__main__":
    main()
