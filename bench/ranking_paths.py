"""Quality of the interest model's two ranking paths on the same events.

Small catalogues are ranked over every item (the exhaustive path, full-softmax
training); large ones over bounded candidate lists (candidates + sampled
negatives). This replays a data set through both, test-then-learn, and prints
Recall@K for the first 30% of the scored events (where parameters may be
chosen), the remaining 70% and all, plus the candidate path's candidate recall
(share of scored events whose item was among the user's candidates) and mean
list size.

    python -m bench.ranking_paths --data data/movielens-100k --format recbole --protocol flurs
    python -m bench.ranking_paths --format synthetic --events 50000
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from core.types import Event, UserState
from model.eval.metrics import split_flurs
from model.interest.model import EXHAUSTIVE_ROWS, InterestModel
from model.step import apply_event, process_batch
from state.views import MemoryStates
from stream.cli.evaluate import _load

__all__ = ["main"]

TUNE_SHARE = 0.3


def _candidate_hits(
    model: InterestModel, view: MemoryStates, batch: Sequence[Event]
) -> tuple[int, int]:
    """(events whose item is a candidate, candidates listed) for the states before ``batch``."""
    states = view.get_many(list(dict.fromkeys(ev.user_id for ev in batch)))
    before = []
    for ev in batch:
        st = states.setdefault(ev.user_id, UserState())
        before.append(st.copy())
        apply_event(st, ev)
    cand = model.memories.candidates(model._context(before), model.vocab, model.marks)
    rows = np.array([model.vocab.index.get(ev.item_id, -2) for ev in batch])
    return int((cand == rows[:, None]).any(axis=1).sum()), int((cand >= 0).sum())


def _replay(
    model: InterestModel, warmup: list[Event], test: list[Event], k: int, batch: int, probe: bool
) -> tuple[np.ndarray, float, float]:
    view = MemoryStates()
    for i in range(0, len(warmup), batch):
        process_batch(warmup[i : i + batch], view, model, k=k, score=False)
    hits: list[int] = []
    found = listed = 0
    for i in range(0, len(test), batch):
        part = test[i : i + batch]
        if probe and len(model.vocab):
            f, n = _candidate_hits(model, view, part)
            found, listed = found + f, listed + n
        res = process_batch(part, view, model, k=k)
        hits += [0 if r is None else 1 for r in res.ranks]
    n = max(len(test), 1)
    return np.asarray(hits, dtype=np.float64), found / n, listed / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--format", default="synthetic")
    p.add_argument("--protocol", default="prequential", choices=("flurs", "prequential"))
    p.add_argument("--events", type=int, default=50000)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.strict, args.columns, args.event_map = False, None, None  # the loader wants them
    events, ratings, _ = _load(args)
    flurs = args.protocol == "flurs"
    if flurs:
        train, update, test = split_flurs(events, ratings)
        warmup = [*train, *update]
    else:
        warmup, test = [], events
    print(
        f"{args.format} {args.protocol}: {len(warmup)} warm-up + {len(test)} scored events, "
        f"{len({e.item_id for e in events})} items, K={args.k}, seed {args.seed}"
    )
    print(
        f"{'path':<12} {'first 30%':>9} {'last 70%':>9} {'all':>7} "
        f"{'cand. recall':>12} {'candidates':>10}"
    )
    for name, rows in (("exhaustive", 10**9), ("candidates", 0)):
        model = InterestModel(seed=args.seed, exclude_seen=flurs, exhaustive_rows=rows)
        hits, found, listed = _replay(
            model, warmup, test, args.k, args.batch_size, name == "candidates"
        )
        cut = int(len(hits) * TUNE_SHARE)
        extra = f"{found:>12.4f} {listed:>10.0f}" if name == "candidates" else f"{'':>12} {'':>10}"
        print(
            f"{name:<12} {hits[:cut].mean():>9.4f} {hits[cut:].mean():>9.4f} "
            f"{hits.mean():>7.4f} {extra}",
            flush=True,
        )
    print(f"(the model's default switches to candidates above {EXHAUSTIVE_ROWS:,} item rows)")


if __name__ == "__main__":
    main()
