"""What refresh passes cost a worker draining a backlog: events/s with refresh off and on.

One embedded broker and a warm-up drain; then for each refresh budget (``--budgets``, percent of the
worker's time, 0 = off) fresh topics get the same ``--events`` synthetic events
(seed 1), then one native worker drains them (:func:`bench.throughput.measure_throughput`).
Printed per budget: events/s, its ratio to refresh off, lists refreshed, and the
share of the drain spent in refresh passes. A backlog is the worst case: every
batch moves the model, so tracked lists keep going stale and passes use their
whole budget.

    python -m bench.refresh_cost [--events 20000] [--budgets 0,10] [--model interest]

Uses ``$INTEREST_KAFKA_BOOTSTRAP`` when set, else starts the embedded broker.
No assertions: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.throughput import measure_throughput
from stream.config import BOOTSTRAP_ENV, EXACTLY_ONCE, WorkerConfig

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.refresh_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="interest")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--budgets", default="0,10", help="refresh budgets in percent (0 = off)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--guarantee", default=EXACTLY_ONCE)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    args.batch_max_events, args.batch_max_ms = WorkerConfig.batch_max_events, 50
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    broker = None
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    rows = []
    with tempfile.TemporaryDirectory(prefix="interest-bench-") as tmp:
        if not bootstrap:
            from stream.kafka.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=Path(tmp) / "kafka").start(timeout=120)
            bootstrap = broker.bootstrap
        try:
            # Not reported: the first worker of a process pays for compiling the model's
            # kernels (a 20,000-event drain measured 2x slower first).
            args.refresh_budget_percent, events = 0, args.events
            args.events = max(1000, events // 5)
            measure_throughput(bootstrap, Path(tmp) / "warm-up", args)
            args.events = events
            for budget in budgets:
                args.refresh_budget_percent = budget
                run = measure_throughput(bootstrap, Path(tmp) / f"b{budget}", args)
                rows.append((budget, run))
                print(f"budget {budget}%: {run}", file=sys.stderr, flush=True)
        finally:
            if broker is not None:
                broker.stop()
    base = next((r["events_per_s"] for b, r in rows if b == 0), None)
    print(f"{args.model}, {args.guarantee}, {args.events} events, {args.partitions} partitions")
    print(f"{'budget':>7} {'events/s':>9} {'vs off':>7} {'refreshed':>9} {'in refresh':>10}")
    for budget, r in rows:
        eps = r["events_per_s"] or 0.0
        ratio = f"{eps / base:.2f}" if base else "-"
        share = r["refresh_seconds"] / r["seconds"] if r["seconds"] else 0.0
        print(
            f"{budget:>6}% {eps:>9.0f} {ratio:>7} {r['lists_refreshed']:>9} {share:>10.1%}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
