"""Subscriber Recall@K under several refresh policies, in one replay per model.

The model's path does not depend on the refresh policy (a refresh only
re-ranks), so every policy is scored in the same user-distinct replay
(:func:`engine.replay.subscriber.subscriber_replay`). Recall is printed for the first
30% of the scored events (where the policy's thresholds are chosen) and for the
remaining 70% (held out), with the refresh count and the time passes took.

    python -m bench.refresh_quality --data data/movielens-100k --format recbole --protocol flurs \
        --models interest
    python -m bench.refresh_quality --format synthetic --events 20000

A policy is ``stale_events:max_users:interval_ms`` (``--policies``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from engine.replay.subscriber import subscriber_replay
from model.eval.metrics import split_flurs
from model.factory import create_model
from model.refresh import RefreshPolicy
from stream.cli.evaluate import _item_metadata, _load

__all__ = ["main"]

TUNE_SHARE = 0.3


def _parse(spec: str) -> RefreshPolicy:
    stale, users, interval = (int(x) for x in spec.split(":"))
    return RefreshPolicy(stale_events=stale, max_users=users, interval_ms=interval)


def _split(hits: list[int]) -> str:
    h = np.asarray(hits, dtype=np.float64)
    cut = int(len(h) * TUNE_SHARE)
    return f"{h[:cut].mean():>9.4f} {h[cut:].mean():>9.4f} {h.mean():>7.4f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--format", default="synthetic")
    p.add_argument("--protocol", default="prequential", choices=("flurs", "prequential"))
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--models", default="interest,popular")
    p.add_argument("--policies", default="250:256:1000,500:256:1000,1000:256:1000,2000:256:1000")
    p.add_argument("--threads", type=int, default=1, help="torch threads (as evaluate)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    torch.use_deterministic_algorithms(True)
    args.strict, args.columns, args.event_map, args.items = False, None, None, None
    events, ratings, _ = _load(args)
    args.item_data = None
    items, _ = _item_metadata(args, {ev.item_id for ev in events})  # as evaluate
    flurs = args.protocol == "flurs"
    if flurs:
        train, update, test = split_flurs(events, ratings)
        warmup = [*train, *update]
    else:
        warmup, test = [], events
    policies = {"off": RefreshPolicy(enabled=False)}
    policies.update({spec: _parse(spec) for spec in args.policies.split(",")})
    print(f"{args.format} {args.protocol}: {len(warmup)} warm-up + {len(test)} scored events")
    print(
        f"{'model':<9} {'view':<16} {'first 30%':>9} {'last 70%':>9} {'all':>7} "
        f"{'refreshed':>9} {'seconds':>8}"
    )
    for name in args.models.split(","):
        model = create_model(name, seed=args.seed, exclude_seen=flurs)
        t0 = time.perf_counter()
        rep = subscriber_replay({name: model}, warmup, test, policies, k=args.k, items=items)[name]
        print(
            f"{name:<9} {'pull':<16} {_split(rep.pull.hits)} {'':>9} "
            f"{time.perf_counter() - t0:>8.1f}"
        )
        for view_name, view in rep.views.items():
            label = "no refresh" if view_name == "off" else view_name
            print(
                f"{'':<9} {label:<16} {_split(view.report.hits)} {view.refreshed:>9} "
                f"{view.report.seconds:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
