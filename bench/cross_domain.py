"""Cross-domain transfer: do interests learnt on one kind of item carry to another?

Two domains by genre group (an item's first genre): ``A`` = action, adventure,
sci-fi, thriller, war, crime, western, horror, fantasy; ``B`` = every other
genre. Users are split in two halves at random (seeded): the ``full`` half
keeps all its events; of the ``transfer`` half only the domain-A events are
learnt. Then the transfer users' domain-B events are replayed test-then-learn
(time order, seen items excluded) and scored: Recall@10 on each transfer
user's first domain-B event (nothing of theirs in B was ever seen: pure
transfer), and on all their domain-B events.

    python -m bench.cross_domain --data movielens-100k --format recbole [--ratings 4]

Only ratings of at least ``--ratings`` count as events (default 4; 5 as in the
flurs protocol leaves few first-B events per user).

With ``--format unisrec`` (e.g. Amazon Scientific, whose items carry a category
path such as ``Industrial & Scientific Lab & Scientific Products ...``) the two
domains are two halves of the category tree: the top-level branches (the first
word after the root every path shares) sorted by events and dealt alternately
to A and B, so both halves hold about as many events (:func:`tree_halves`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np
import torch

from engine.replay.pull import evaluate_models
from model.data.datasets import load_events
from model.factory import create_model
from model.interest.content import encode_texts
from model.items import load_items
from stream.kafka.broker import cache_dir

__all__ = ["main", "DOMAIN_A", "tree_halves"]

DOMAIN_A = frozenset(
    {
        "Action",
        "Adventure",
        "Sci-Fi",
        "Thriller",
        "War",
        "Crime",
        "Western",
        "Horror",
        "Fantasy",
    }
)
MODELS = ("interest", "interest-nocontent", "popular")


def tree_halves(categories: dict[str, str | None], counts: dict[str, int]) -> dict[str, str]:
    """item -> "A" or "B": two halves of a category tree (see the module docstring).

    ``categories``: item -> category path; ``counts``: item -> events.

    >>> cats = {"1": "Root Lab Glass", "2": "Root Lab Tubes", "3": "Root Tape Duct", "4": None}
    >>> tree_halves(cats, {"1": 5, "2": 1, "3": 4, "4": 1})
    {'1': 'A', '2': 'A', '3': 'B', '4': 'A'}
    """
    # The root: the longest first words at least 90% of the paths share.
    paths = [c.split() for c in categories.values() if c]
    root: list[str] = []
    while True:
        heads: dict[tuple[str, ...], int] = {}
        for words in paths:
            if len(words) > len(root) and words[: len(root)] == root:
                key = tuple(words[: len(root) + 1])
                heads[key] = heads.get(key, 0) + 1
        best = max(heads.items(), key=lambda kv: kv[1], default=None)
        if best is None or best[1] < 0.9 * len(paths):
            break
        root = list(best[0])

    def branch(path: str | None) -> str:
        words = (path or "").split()
        inside = len(words) > len(root) and words[: len(root)] == root
        return words[len(root)] if inside else ""

    size: dict[str, int] = {}
    for item, path in categories.items():
        size[branch(path)] = size.get(branch(path), 0) + counts.get(item, 0)
    order = sorted(size, key=lambda b: (-size[b], b))
    half = {b: "AB"[i % 2] for i, b in enumerate(order)}
    return {item: half[branch(path)] for item, path in categories.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cross_domain", description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--format", default="recbole", choices=("recbole", "movielens", "unisrec"))
    p.add_argument("--ratings", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    loaded = load_events(args.data, args.format)
    ratings = loaded.ratings or [5.0] * len(loaded.events)
    events = [ev for ev, r in zip(loaded.events, ratings, strict=True) if r >= args.ratings]
    items = load_items(args.data, args.format).items
    if args.format == "unisrec":
        counts: dict[str, int] = {}
        for ev in events:
            counts[ev.item_id] = counts.get(ev.item_id, 0) + 1
        domain = tree_halves({m.item_id: m.category for m in items}, counts)
    else:
        domain = {m.item_id: ("A" if m.category in DOMAIN_A else "B") for m in items}
    t0 = time.perf_counter()
    encode_texts([m.content_text() for m in items], cache=cache_dir() / "content-vectors")
    encode_s = time.perf_counter() - t0
    users = sorted({ev.user_id for ev in events})
    rng = random.Random(args.seed)
    transfer = set(rng.sample(users, len(users) // 2))
    warmup = [ev for ev in events if ev.user_id not in transfer or domain[ev.item_id] == "A"]
    test = [ev for ev in events if ev.user_id in transfer and domain[ev.item_id] == "B"]
    first, seen = [], set()
    for ev in test:
        first.append(ev.user_id not in seen)
        seen.add(ev.user_id)
    is_first = np.array(first)
    models = {n: create_model(n, seed=args.seed, exclude_seen=True) for n in MODELS}
    reports = evaluate_models(models, warmup, test, k=args.k, items=items)
    print(
        f"{len(warmup)} events learnt, {len(test)} domain-B events of {len(seen)} transfer "
        f"users tested; {len(items)} item texts encoded in {encode_s:.1f}s",
        file=sys.stderr,
    )
    print(f"| model | Recall@{args.k}, first B event | Recall@{args.k}, all B events |")
    print("|---|---|---|")
    for name, rep in reports.items():
        hits = np.array(rep.hits, dtype=float)
        print(f"| {name} | {hits[is_first].mean():.4f} | {hits.mean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
