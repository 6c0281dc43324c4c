"""What compact storage saves and what it costs in quality.

    python -m bench.compact_storage [--data DIR --format recbole] [--restart-every 50]

Replays a data set under the FluRS protocol (MovieLens-100K in RecBole's
format with ``--data``; the synthetic drift stream, prequential, without)
through the interest model four times, as the evaluator does:

* user states kept as the worker's codec bytes, long-term vectors stored as
  float32 and then as float16 (``evaluate --state-codec``);
* the model also taken through a snapshot and rebuilt from it every
  ``--restart-every`` batches, as a worker restarting, with exact and with
  compact (float16 item embeddings) snapshots.

It prints one JSON object: Recall@10 and NDCG@10 of each run, bytes per user
state (mean over the users at the end) with float32 and float16 vectors, and
bytes per item row of a snapshot, exact and compact (the whole file, and the
embedding tables alone). No Kafka involved.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.types import Event
from engine.replay.pull import evaluate_models
from model.data.datasets import load_events
from model.data.synthetic import SyntheticStream
from model.eval.metrics import split_flurs
from model.factory import create_model
from model.persist import model_to_bytes
from model.snapshot import model_from_bytes
from state.codec import Precision, decode_state, encode_state
from state.views import CodecStates

__all__ = ["main"]


class _Restarting:
    """The model, rebuilt from its own snapshot every ``every`` learning calls."""

    def __init__(self, model: Any, every: int, compact: bool) -> None:
        self.model, self.every, self.compact = model, every, compact
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def learn_many(self, events: Sequence[Event], before: Sequence[Any]) -> None:
        self.model.learn_many(events, before)
        self.calls += 1
        if self.calls % self.every == 0:
            self.model = model_from_bytes(model_to_bytes(self.model, compact=self.compact))


def _run(
    warmup: list[Event], test: list[Event], precision: Precision, restart: tuple[int, bool] | None
) -> tuple[dict[str, Any], Any, CodecStates]:
    model: Any = create_model("interest", seed=0, exclude_seen=bool(warmup))
    if restart is not None:
        model = _Restarting(model, *restart)
    views = CodecStates(precision)
    t0 = time.perf_counter()
    report = evaluate_models({"interest": model}, warmup, test, states=lambda: views)["interest"]
    summary = report.summary(1, False)
    out = {"recall": summary["recall"], "ndcg": summary["ndcg"]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    inner = model.model if isinstance(model, _Restarting) else model
    return out, inner, views


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="MovieLens-100K directory (default: synthetic)")
    p.add_argument("--format", default="recbole")
    p.add_argument("--events", type=int, default=20_000, help="synthetic stream length")
    p.add_argument("--restart-every", type=int, default=50, help="batches between snapshots")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.data is not None:
        loaded = load_events(args.data, args.format)
        train, update, test = split_flurs(loaded.events, loaded.ratings)
        warmup, data = [*train, *update], f"{args.data} (flurs)"
    else:
        warmup, test = [], list(SyntheticStream(seed=0, n_events=args.events))
        data = f"synthetic, {args.events} events (prequential)"
    runs: dict[str, Any] = {}
    runs["states_float32"], _, _ = _run(warmup, test, "float32", None)
    runs["states_float16"], model, views = _run(warmup, test, "float16", None)
    every = args.restart_every
    runs[f"snapshot_every_{every}_exact"], _, _ = _run(warmup, test, "float16", (every, False))
    runs[f"snapshot_every_{every}_compact"], _, _ = _run(warmup, test, "float16", (every, True))

    states = [decode_state(raw) for raw in views.raw.values()]
    per_state = {
        precision: round(sum(len(encode_state(st, precision)) for st in states) / len(states), 1)
        for precision in ("float32", "float16")
    }
    rows = model.vocab.n_rows
    exact, compact = model_to_bytes(model, compact=False), model_to_bytes(model)
    state = model.state_dict()
    tables = [k for k in state.arrays if k.split(".")[0] in model.tables]
    table_bytes = {
        "exact": sum(state.arrays[k].nbytes for k in tables),
        "compact": sum(state.arrays[k].nbytes // (2 if k in state.half else 1) for k in tables),
    }
    print(
        json.dumps(
            {
                "data": data,
                "users": len(states),
                "item_rows": rows,
                "bytes_per_user_state": per_state,
                "snapshot_bytes_per_item": {
                    "exact": round(len(exact) / rows),
                    "compact": round(len(compact) / rows),
                },
                "embedding_table_bytes_per_item": {
                    k: round(v / rows) for k, v in table_bytes.items()
                },
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
