"""The ``interest-stream`` command line.

Every subcommand returns an exit code; an :class:`InterestStreamError` (a
mistake a user can make) is printed as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.cliargs import add_kafka_flags, check_encoder_dir, log_level
from core.errors import InterestStreamError
from stream.cli import demo, forget, top
from stream.cli import evaluate as model_cli
from stream.cli import state as state_cli
from stream.cli import worker as worker_cli

__all__ = ["main", "build_parser"]


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 1 to 65535, got {port}")
    return port


def _broker_start(args: argparse.Namespace) -> int:
    import time

    from stream.kafka.broker import EmbeddedBroker

    t0 = time.monotonic()
    broker = EmbeddedBroker(data_dir=args.data_dir, port=args.port).start()
    print(broker.bootstrap)
    print(
        f"Kafka broker running (pid {broker.pid}, started in {time.monotonic() - t0:.1f}s); "
        f"log: {broker.log_path}; stop with: interest-stream broker stop"
        + (f" --data-dir {args.data_dir}" if args.data_dir else ""),
        file=sys.stderr,
    )
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    from stream.kafka.broker import default_data_dir, read_running

    info = read_running(Path(args.data_dir or default_data_dir()).resolve())
    if info is None:
        print("no broker running", file=sys.stderr)
        return 1
    print(f"running pid={info.pid} bootstrap={info.bootstrap} data_dir={info.data_dir}")
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    from stream.kafka.broker import default_data_dir, read_running, stop_pid

    data_dir = Path(args.data_dir or default_data_dir()).resolve()
    info = read_running(data_dir)
    if info is None:
        print("no broker running", file=sys.stderr)
        return 0
    stop_pid(info.pid)
    (data_dir / "broker.json").unlink(missing_ok=True)
    print(f"stopped broker pid {info.pid}", file=sys.stderr)
    return 0


def _broker_fetch(args: argparse.Namespace) -> int:
    from stream.kafka.broker import ensure_jars

    print(ensure_jars())
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    from stream.config import settings_from_args
    from stream.kafka.topics import ensure_topics, topic_specs

    settings = settings_from_args(args)
    created = ensure_topics(settings.kafka, topic_specs(settings.topics))
    for name, new in created.items():
        print(f"{name}: {'created' if new else 'exists'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interest-stream",
        description="Real-time user interest lists from Kafka events.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser("broker", help="the embedded local Kafka broker (demo, tests)")
    bsub = broker.add_subparsers(dest="broker_command", required=True, metavar="ACTION")
    start = bsub.add_parser("start", help="start it, print its bootstrap address, leave it running")
    start.add_argument("--port", type=_port, help="listener port (default: a free one)")
    start.set_defaults(func=_broker_start)
    status = bsub.add_parser("status", help="is it running, and where")
    status.set_defaults(func=_broker_status)
    stop = bsub.add_parser("stop", help="stop it cleanly")
    stop.set_defaults(func=_broker_stop)
    fetch = bsub.add_parser("fetch", help="download the broker jars with Maven (cached)")
    fetch.set_defaults(func=_broker_fetch)
    for p in (start, status, stop):
        p.add_argument(
            "--data-dir",
            dest="data_dir",
            type=Path,
            help="broker data directory (default: ~/.cache/interest-stream/broker)",
        )

    topics = sub.add_parser("topics", help="create the service's topics if missing")
    add_kafka_flags(topics)
    topics.add_argument("--partitions", type=int, help="partitions for new topics (default 4)")
    topics.set_defaults(func=_topics_create)

    # Subcommands that live with the code they run. Building the parser imports
    # neither torch nor the Kafka client (tests/stream/test_cli.py checks it):
    # each command imports them when it runs.
    worker_cli.register(sub)
    state_cli.register(sub)
    forget.register(sub)
    demo.register(sub)
    top.register(sub)
    model_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Broken process-level settings are one clear line, whatever the command.
        log_level()
        check_encoder_dir()
        return int(args.func(args) or 0)
    except InterestStreamError as exc:
        print(f"interest-stream: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interest-stream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
