"""``interest-stream worker | publish | publish-items | tail``: the pipeline's commands.

Registered by :mod:`stream.cli.main`. Every failure a user can cause ends in one
line on stderr and a non-zero exit; SIGINT/SIGTERM stop a worker cleanly
(batch finished, outputs flushed, offsets committed, stores closed, exit 0).
A worker prints a start line, a status line every 10 s and a summary on exit;
``INTEREST_LOG_LEVEL=INFO`` adds partition assignments and revocations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from core.cliargs import (
    add_csv_flags,
    add_items_flag,
    add_kafka_flags,
    check_items,
    log_level,
)
from core.errors import ConfigError, DataError, KafkaClientError
from core.types import Event
from model.factory import MODEL_ENV, THREADS_ENV
from stream.config import GUARANTEES, RUNTIMES, settings_from_args

__all__ = ["register"]

_STATUS_EVERY_S = 10.0


def _install_stop_handlers(stop: threading.Event, doing: str = "finishing the batch") -> None:
    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # second signal: give up waiting
        print(f"interest-stream: {signal.Signals(signum).name} received, {doing}", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _status_loop(worker: Any, stop: threading.Event) -> None:
    while not stop.wait(_STATUS_EVERY_S):
        s = worker.stats.summary()
        print(
            f"interest-stream: consumed={s['consumed']} applied={s['applied']} "
            f"dead_lettered={s['dead_lettered']} lists={s['lists_published']} "
            f"latency_p50_ms={s['latency_p50_ms']} p99_ms={s['latency_p99_ms']}",
            file=sys.stderr,
            flush=True,
        )


def _worker(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException
    from prometheus_client import CollectorRegistry

    from model.factory import create_serving_model
    from stream.runtime.native import Worker

    logging.basicConfig(
        level=log_level(),
        format="interest-stream: %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = settings_from_args(args)
    if settings.worker.runtime == "faust":
        return _faust_worker(args, settings)
    stop = threading.Event()
    _install_stop_handlers(stop)
    # The worker checks the state dir and the broker before it builds the model:
    # a mistake shows in a second, not ten.
    worker = Worker(settings, build_model=create_serving_model, registry=CollectorRegistry())
    # Status lines once the worker runs: none before an error that stops it at start.
    status = threading.Thread(target=_status_loop, args=(worker, stop), daemon=True)

    def started(info: dict[str, Any]) -> None:
        print(f"interest-stream: worker starting: {json.dumps(info)}", file=sys.stderr, flush=True)
        status.start()

    worker.on_start = started
    try:
        stats = worker.run(stop)
    except KafkaException as exc:
        err = exc.args[0]
        raise KafkaClientError(f"Kafka operation failed: {err.str()}", err.name()) from None
    finally:
        stop.set()
    print(f"interest-stream: worker stopped: {json.dumps(stats.summary())}", file=sys.stderr)
    return 0


def _faust_worker(args: argparse.Namespace, settings: Any) -> int:
    """The same worker on faust-streaming: at-least-once, said at start."""
    from prometheus_client import CollectorRegistry

    from model.factory import create_serving_model
    from stream.config import GUARANTEE_ENV
    from stream.runtime.faust_runtime import FaustRuntime

    if args.processing_guarantee == "exactly-once" or (
        os.environ.get(GUARANTEE_ENV) == "exactly-once"
    ):
        raise ConfigError(
            "the Faust runtime is at-least-once only (Faust's own exactly-once mode has open "
            "duplicate and fencing issues); use --runtime native for exactly-once"
        )
    runtime = FaustRuntime(settings, build_model=create_serving_model, registry=CollectorRegistry())
    runtime.prepare()
    print(
        f"interest-stream: worker starting: {json.dumps(runtime.describe())}",
        file=sys.stderr,
        flush=True,
    )
    print(
        "interest-stream: the Faust runtime is at-least-once: after a crash a batch's lists "
        "may be published again (state stays exact)",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    status = threading.Thread(target=_status_loop, args=(runtime, stop), daemon=True)
    status.start()
    try:
        stats = runtime.run()
    finally:
        stop.set()
    print(f"interest-stream: worker stopped: {json.dumps(stats.summary())}", file=sys.stderr)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from stream.cli.publish import Publisher, event_source

    settings = settings_from_args(args)
    settings.kafka.client_config()
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must not be negative")
    if args.rate is not None and not args.rate > 0:
        raise ConfigError("--rate must be a positive number of events per second")
    from model.data.datasets import DEFAULT_COLUMNS, parse_mapping

    events = event_source(
        args.format,
        args.data,
        column_map=parse_mapping(args.columns, "--columns", tuple(DEFAULT_COLUMNS)),
        event_map=parse_mapping(args.event_map, "--event-map"),
        n_items=check_items(args.items, args.format),
    )
    if args.retime and args.format == "synthetic":
        raise ConfigError("--retime is for files (the synthetic stream's times are now)")
    if args.format != "synthetic":
        events = _in_time_range(list(events), args.retime)
    stop = threading.Event()
    _install_stop_handlers(stop, "stopping after the events sent so far")
    with Publisher(settings) as pub:
        pub.check_connection(stop=stop)
        from stream.kafka.topics import ensure_topics, topic_specs

        ensure_topics(settings.kafka, topic_specs(settings.topics))
        stats = pub.publish(events, rate=args.rate, limit=args.limit, progress=True, stop=stop)
    if stats.delivered == 0 and args.limit != 0 and not stop.is_set():
        raise DataError(f"no usable events in {args.data or args.format}: nothing was published")
    print(
        f"interest-stream: published {stats.delivered} event(s) to {settings.topics.events} "
        f"in {stats.elapsed_s:.1f}s ({stats.rate:.0f}/s)",
        file=sys.stderr,
    )
    return 0


def _in_time_range(events: list[Event], retime: bool) -> list[Event]:
    """The events whose ``ts`` the workers accept (1990 to a day ahead); ``retime``: all of
    them, moved so that the last one is now. Those left out are reported on stderr."""
    from engine.events import MAX_FUTURE_MS, MIN_TS_MS

    if not events:
        return events
    now = int(time.time() * 1000)
    if retime:
        shift = now - max(ev.ts for ev in events)
        if min(ev.ts for ev in events) + shift < MIN_TS_MS:
            raise DataError("--retime: the file's events span more time than since 1990")
        return [dataclasses.replace(ev, ts=ev.ts + shift) for ev in events]
    kept = [ev for ev in events if MIN_TS_MS <= ev.ts <= now + MAX_FUTURE_MS]
    if len(kept) < len(events):
        odd = next(ev for ev in events if not MIN_TS_MS <= ev.ts <= now + MAX_FUTURE_MS)
        print(
            f"interest-stream: skipped {len(events) - len(kept)} of {len(events)} event(s) "
            f"whose time the workers reject as bad-timestamp (before 1990-01-01 or more "
            f"than a day ahead; the first: user {odd.user_id!r} at {odd.ts} ms); --retime "
            "moves the file's times so that its last event is now",
            file=sys.stderr,
        )
    return kept


def _publish_items(args: argparse.Namespace) -> int:
    from model.items import load_items
    from stream.runtime.items import ItemsPublisher

    settings = settings_from_args(args)
    settings.kafka.client_config()
    loaded = load_items(args.data, args.format)
    report = loaded.report(args.data)
    if report:
        print(f"interest-stream: {report}", file=sys.stderr)
    with ItemsPublisher(settings) as pub:
        n = pub.publish(loaded.items)
    print(
        f"interest-stream: published {n} item record(s) to {settings.topics.items}",
        file=sys.stderr,
    )
    return 0


def _tail(args: argparse.Namespace) -> int:
    from stream.cli.tail import tail

    settings = settings_from_args(args)
    settings.kafka.client_config()
    if args.user is not None:
        from stream.cli.forget import check_user_id

        check_user_id(settings, args.user)  # an id no worker accepts never has a list
    stop = threading.Event()
    _install_stop_handlers(stop, "stopping")
    tail(settings, user=args.user, stop=stop, from_beginning=args.from_beginning)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``worker``, ``publish``, ``publish-items`` and ``tail`` to the parser."""
    w = sub.add_parser(
        "worker",
        help="consume events, keep user state, publish lists",
        epilog=f"The model is chosen by ${MODEL_ENV} (default: the factory's); "
        f"torch threads by ${THREADS_ENV} (default 1). The interest model is "
        "saved under the state dir every $INTEREST_SNAPSHOT_EVERY_S seconds "
        "(default 60) or $INTEREST_SNAPSHOT_EVERY_BATCHES batches (default 0: "
        "off) and on stop; [worker] snapshot_every_s/_batches in the TOML file.",
    )
    add_kafka_flags(w)
    w.add_argument("--group", help="consumer group (default interest-stream)")
    w.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="native (default: confluent-kafka, exactly-once or at-least-once) or faust "
        "(faust-streaming, at-least-once)",
    )
    w.add_argument(
        "--guarantee",
        dest="processing_guarantee",
        choices=GUARANTEES,
        help="exactly-once (default: lists, dead letters, state changelog and offsets in one "
        "Kafka transaction per batch) or at-least-once (faster; outputs may repeat after a crash)",
    )
    w.add_argument(
        "--state-dir",
        dest="state_dir",
        help="directory for the per-partition RocksDB stores (default ./state-data)",
    )
    w.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="Prometheus endpoint port (default 9464; 0 disables it)",
    )
    w.set_defaults(func=_worker)

    p = sub.add_parser("publish", help="replay a file or the synthetic stream as events")
    add_kafka_flags(p)
    p.add_argument("--data", metavar="PATH", help="event file or directory (not for synthetic)")
    p.add_argument("--format", required=True, choices=("recbole", "movielens", "csv", "synthetic"))
    p.add_argument(
        "--rate",
        type=float,
        metavar="EV_PER_S",
        help="events per second (default: as fast as the broker takes them)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--retime",
        action="store_true",
        help="move the file's timestamps (gaps kept) so that its last event is now: for "
        "logs with relative or synthetic times, which the workers would dead-letter",
    )
    add_items_flag(p)
    add_csv_flags(p)
    p.set_defaults(func=_publish)

    from model.items import ITEM_FORMATS

    pi = sub.add_parser(
        "publish-items",
        help="publish item metadata (titles, text) to the compacted items topic",
        description="Read a catalogue and publish one record per item, keyed by item id, to "
        "the items topic (created compacted if missing; $INTEREST_TOPIC_ITEMS, default "
        "interest.items). Workers read it and give new items content vectors.",
    )
    add_kafka_flags(pi)
    pi.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="recbole: the .item file or its directory; movielens: u.item or its directory; "
        "csv: a file with a header item,title[,text][,category]",
    )
    pi.add_argument("--format", required=True, choices=ITEM_FORMATS)
    pi.set_defaults(func=_publish_items)

    t = sub.add_parser(
        "tail",
        help="print recommendation lists: a user's current one, then new ones as they arrive",
        description="Print recommendation lists until Ctrl-C. Without --user: the lists that "
        "arrive from now on. With --user: that user's current list (the newest on the compacted "
        "topic), or one line saying there is none yet, then each new one.",
    )
    add_kafka_flags(t)
    t.add_argument("--user", metavar="U", help="this user's current list, then their new ones")
    t.add_argument(
        "--from-beginning",
        dest="from_beginning",
        action="store_true",
        help="every list still on the topic (with --user: every one of that user's), then new ones",
    )
    t.set_defaults(func=_tail)
