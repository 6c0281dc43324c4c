"""Recall of the item-kNN baseline with bounded sparse co-occurrence vs the dense matrix.

Replays a data set through :class:`model.baselines.classic.SequentialItemKNN` once with
an exact dense item x item matrix (:class:`DenseCoOccurrence`, the reference)
and once per ``--neighbours`` value with :class:`model.cooc.SparseCoOccurrence`. Recall@K is
printed for the first 30% of the scored events (where parameters may be
chosen) and for the remaining 70% (held out).

    python -m bench.cooc_quality --format synthetic --events 20000
    python -m bench.cooc_quality --data data/movielens-100k --format recbole --protocol flurs
"""

from __future__ import annotations

import argparse
import time
from typing import Any, cast

import numpy as np

from engine.replay.pull import evaluate_models
from model.baselines.classic import SequentialItemKNN
from model.eval.metrics import split_flurs
from stream.cli.evaluate import _load

__all__ = ["main", "DenseCoOccurrence"]

TUNE_SHARE = 0.3


class DenseCoOccurrence:
    """Exact, undecayed float32[n, n] pair counts: the reference the sparse memory is held to."""

    def __init__(self, size: int) -> None:
        self._m = np.zeros((size, size), dtype=np.float32)

    @property
    def n_pairs(self) -> int:
        return int((self._m > 0).sum())

    def add(self, src: np.ndarray, dst: np.ndarray, weights: np.ndarray, n_events: int) -> None:
        np.add.at(self._m, (src, dst), np.asarray(weights, dtype=np.float32))

    def forget(self, rows: np.ndarray) -> None:
        self._m[rows, :] = 0.0
        self._m[:, rows] = 0.0

    def weighted_sum(self, rows: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
        """float32[B, K, n]: ``sum_l weights[b, k, l] * M[rows[b, l], :n]`` (-1 rows skipped)."""
        safe = np.where(rows >= 0, rows, 0)
        w = np.where(rows[:, None, :] >= 0, weights, 0.0).astype(np.float32)
        return w @ self._m[safe][:, :, :n]


def _variants(neighbours: list[int], exclude_seen: bool) -> dict[str, SequentialItemKNN]:
    dense = SequentialItemKNN(exclude_seen=exclude_seen)
    # The dense reference has the same reading and learning methods (duck-typed).
    cast(Any, dense).cooc = DenseCoOccurrence(1 << 14)  # big enough for the data sets here
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
    # stream.cli.evaluate's loader wants its CSV flags too.
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
        pairs = model.cooc.n_pairs
        print(
            f"{name:<12} {hits[:cut].mean():>17.4f} {hits[cut:].mean():>16.4f} "
            f"{hits.mean():>7.4f} {pairs:>8} {time.perf_counter() - t0:>8.1f}"
        )


if __name__ == "__main__":
    main()
