"""``interest-stream demo``: the whole service on one machine, lists live on screen.

It starts the embedded Kafka broker (unless ``--bootstrap-servers`` or
``$INTEREST_KAFKA_BOOTSTRAP`` names a cluster), a worker, and a publisher of
the synthetic drift stream, whose users change their interests at random
times. A few users are followed on screen: their true current interest, and
the categories of the list the worker last published for them, so one sees a
list follow its user's interest within a few events. Now and then a malformed
message is published too, to show it land in the dead-letter topic instead of
stopping anything. After ``--seconds`` (or on Ctrl-C) everything stops
cleanly, the broker included, and a summary is printed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from core.cliargs import add_items_flag, add_kafka_flags, check_items
from core.errors import ConfigError, InterestStreamError

__all__ = ["register", "run_demo"]

_FOLLOW = 4
_BAD_MESSAGES = (b"{not json", b'{"user_id": "u1", "event": "click"}', b"\xff\xfe")


class _Screen:
    """The followed users' lists, redrawn in place on a terminal."""

    def __init__(self, stream: Any, out=sys.stdout) -> None:
        self.stream = stream
        self.out = out
        self.tty = out.isatty()
        self.lock = threading.Lock()
        self.follow: list[str] = []
        self.lists: dict[str, list[str]] = {}
        self.event_ts: dict[str, int] = {}
        self._drawn = 0

    def on_publish(self, recs: list) -> None:
        with self.lock:
            for rec in recs:
                if rec.user_id not in self.follow and len(self.follow) < _FOLLOW:
                    self.follow.append(rec.user_id)
                if rec.user_id in self.follow:
                    self.lists[rec.user_id] = [item for item, _ in rec.items]
                    self.event_ts[rec.user_id] = rec.event_ts

    def _user_lines(self, user: str) -> list[str]:
        truth = self.stream.current_interest(user) or "?"
        items = self.lists.get(user, [])
        cats = Counter(self.stream.item_category(i) or "new" for i in items)
        share = cats.get(truth, 0)
        top = ", ".join(f"{c}×{n}" for c, n in cats.most_common(3))
        return [
            f"  {user:<8} interest now: {truth:<8} list: {share}/{len(items)} in it   [{top}]",
            f"           top-5: {' '.join(items[:5])}",
        ]

    def draw(self, stats: dict, published: int, elapsed: float, metrics_url: str | None) -> None:
        with self.lock:
            lines = [
                f"interest-stream demo  {elapsed:5.0f}s   events published {published}, "
                f"applied {stats['applied']}, dead letters {stats['dead_lettered']}, "
                f"lists {stats['lists_published']}",
                f"  event-to-list latency p50 {_ms(stats['latency_p50_ms'])}  "
                f"p99 {_ms(stats['latency_p99_ms'])}   metrics: {metrics_url or 'off'}",
            ]
            for user in self.follow:
                lines += self._user_lines(user)
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
        elif not self.tty:
            lines.append("")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _bad_input_loop(pub: Any, stop: threading.Event, every_s: float = 5.0) -> None:
    i = 0
    while not stop.wait(every_s):
        pub.send(b"demo-bad", _BAD_MESSAGES[i % len(_BAD_MESSAGES)])
        i += 1


def _run(settings: Any, args: argparse.Namespace, stop: threading.Event) -> tuple[Any, Any]:
    """Worker, publisher and screen until ``stop`` is set or the time is up."""
    from prometheus_client import CollectorRegistry

    from model.data.synthetic import SyntheticStream
    from model.factory import create_serving_model
    from stream.cli.publish import Publisher
    from stream.runtime.native import Worker

    stream = SyntheticStream(seed=args.seed, n_items=args.items)
    screen = _Screen(stream)
    # The worker creates the topics before it is assigned; publishing waits for that.
    worker = Worker(settings, build_model=create_serving_model, registry=CollectorRegistry())
    worker.on_publish = screen.on_publish
    failure: list[BaseException] = []

    def guarded(fn, *a) -> None:
        try:
            fn(*a)
        except BaseException as exc:  # reported once below, then everything stops
            failure.append(exc)
            stop.set()

    # ``stop`` (time up, Ctrl-C, a failure) ends publishing first; the worker
    # then drains what was published and stops on ``worker_stop``.
    worker_stop = threading.Event()
    pub = Publisher(settings)
    worker_thread = threading.Thread(target=guarded, args=(worker.run, worker_stop), daemon=True)
    worker_thread.start()
    try:
        pub.check_connection()
        # Publish once the worker owns its partitions, so the latency figures
        # measure the service, not the consumer group's start-up.
        while not worker.assigned.wait(0.2) and not stop.is_set():
            pass
        if worker.metrics_url is not None:
            print(
                f"worker metrics: {worker.metrics_url} (watch them live in another terminal: "
                f"interest-stream top --url {worker.metrics_url})",
                file=sys.stderr,
                flush=True,
            )
        threads = [
            threading.Thread(
                target=guarded,
                daemon=True,
                args=(lambda: pub.publish(stream, rate=args.rate, stop=stop),),
            ),
            threading.Thread(target=guarded, args=(_bad_input_loop, pub, stop), daemon=True),
        ]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        # A terminal is redrawn every second; a log (not a tty) gets a frame every 5 s.
        every = 1.0 if screen.tty else 5.0
        while not stop.wait(every):
            elapsed = time.monotonic() - t0
            screen.draw(worker.stats.summary(), pub.stats.sent, elapsed, worker.metrics_url)
            if not args.forever and elapsed >= args.seconds:
                stop.set()
        for t in threads:
            t.join(timeout=10)
        drain_until = time.monotonic() + 10
        while (
            not failure
            and worker.stats.consumed < pub.stats.delivered
            and time.monotonic() < drain_until
        ):
            time.sleep(0.05)
    finally:
        stop.set()
        worker_stop.set()
        worker_thread.join(timeout=60)
        pub.close()
    if failure:
        exc = failure[0]
        if isinstance(exc, InterestStreamError):
            raise exc
        raise InterestStreamError(f"demo failed: {type(exc).__name__}: {exc}") from None
    return worker, pub


def _delete_topics(settings: Any) -> None:
    """Remove the demo's own topics from a cluster it did not start."""
    from confluent_kafka.admin import AdminClient

    t = settings.topics
    admin = AdminClient(settings.kafka.client_config())
    ours = [
        t.events,
        t.recommendations,
        t.dead_letter,
        settings.changelog_topic,
        settings.model_updates_topic,
        settings.model_topic,
    ]
    try:
        present = set(admin.list_topics(timeout=10).topics)
    except Exception as exc:  # cleanup only: say so, never fail the demo for it
        print(f"could not delete the demo's topics (listing them failed: {exc})", file=sys.stderr)
        return
    gone = [name for name in ours if name in present]
    if not gone:
        return
    for name, future in admin.delete_topics(gone, operation_timeout=10).items():
        try:
            future.result()
        except Exception as exc:  # cleanup only: say so, never fail the demo for it
            print(f"could not delete demo topic {name}: {exc}", file=sys.stderr)


def run_demo(args: argparse.Namespace) -> int:
    from stream.config import settings_from_args
    from stream.kafka.broker import EmbeddedBroker

    check_items(args.items)  # a bad --items is one line, before anything starts
    if not args.rate > 0:
        raise ConfigError("--rate must be a positive number of events per second")
    if not args.forever and not args.seconds > 0:
        raise ConfigError("--seconds must be a positive number (or --forever)")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    workdir = Path(tempfile.mkdtemp(prefix="interest-demo-"))
    settings = settings_from_args(args, state_dir=str(workdir / "state"))
    broker = None
    if settings.kafka.bootstrap_servers:
        from stream.runtime.preflight import check_reachable

        check_reachable(settings.kafka)  # before creating anything there
        # Someone's cluster: never join their group or write into their topics.
        tag = f"interest-demo-{uuid.uuid4().hex[:8]}"
        settings = settings_from_args(
            args,
            state_dir=str(workdir / "state"),
            group=tag,
            events=f"{tag}.events",
            recommendations=f"{tag}.recommendations",
            dead_letter=f"{tag}.dead-letter",
        )
        print(
            f"using {settings.kafka.bootstrap_servers} with topics {tag}.* and group {tag}",
            file=sys.stderr,
        )
    else:
        print("starting the embedded Kafka broker ...", file=sys.stderr, flush=True)
        broker = EmbeddedBroker(data_dir=workdir / "kafka").start()
        settings = settings_from_args(
            args, bootstrap_servers=broker.bootstrap, state_dir=str(workdir / "state")
        )
        print(f"Kafka broker at {broker.bootstrap} (log {broker.log_path})", file=sys.stderr)
    try:
        worker, pub = _run(settings, args, stop)
    finally:
        if broker is not None:
            print("stopping the Kafka broker ...", file=sys.stderr, flush=True)
            broker.stop()
        else:
            _delete_topics(settings)
    shutil.rmtree(workdir, ignore_errors=True)
    s = worker.stats.summary()
    print(
        f"summary: {pub.stats.sent} events published, {s['applied']} applied, "
        f"{s['dead_lettered']} dead-lettered, {s['lists_published']} lists published, "
        f"latency p50 {_ms(s['latency_p50_ms'])}, p99 {_ms(s['latency_p99_ms'])}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``interest-stream`` parser."""
    p = sub.add_parser("demo", help="broker + worker + synthetic events, live lists on screen")
    add_kafka_flags(p)
    p.add_argument("--seconds", type=float, default=60.0, help="run time (default 60)")
    p.add_argument("--forever", action="store_true", help="run until Ctrl-C")
    p.add_argument("--rate", type=float, default=300.0, help="events per second (default 300)")
    p.add_argument("--seed", type=int, default=0, help="synthetic stream seed")
    add_items_flag(p)
    p.add_argument(
        "--metrics-port", dest="metrics_port", type=int, help="metrics port (default 9464, 0 = off)"
    )
    p.set_defaults(func=run_demo)
