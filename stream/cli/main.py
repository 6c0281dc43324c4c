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
from core.errors import ConfigError, InterestStreamError
from stream.cli import demo, forget, top
from stream.cli import evaluate as model_cli
from stream.cli import state as state_cli
from stream.cli import worker as worker_cli
from stream.cli.version import version

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


def _count(text: str) -> int:
    """An argparse type: a whole number (its range is checked where it is used)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _broker_start(args: argparse.Namespace) -> int:
    import time

    from stream.kafka.broker import EmbeddedBroker, default_data_dir
    from stream.kafka.cluster import MAX_NODES, is_cluster

    if args.nodes is not None and not 1 <= args.nodes <= MAX_NODES:
        raise ConfigError(f"--nodes must be from 1 to {MAX_NODES}, got {args.nodes}")
    data_dir = Path(args.data_dir or default_data_dir()).resolve()
    if args.node is not None or (args.nodes or 1) > 1 or is_cluster(data_dir):
        return _cluster_start(args, data_dir)
    t0 = time.monotonic()
    broker = EmbeddedBroker(data_dir=args.data_dir, port=args.port).start()
    print(broker.bootstrap)
    print(
        f"Kafka broker running (pid {broker.pid}, started in {time.monotonic() - t0:.1f}s); "
        f"log: {broker.log_path}; stop with: interest-stream broker stop{_dir_flag(args)}",
        file=sys.stderr,
    )
    return 0


def _dir_flag(args: argparse.Namespace) -> str:
    return f" --data-dir {args.data_dir}" if args.data_dir else ""


def _cluster_start(args: argparse.Namespace, data_dir: Path) -> int:
    """A local cluster: a new one (--nodes), the stopped nodes of one, or one node (--node)."""
    import time

    from stream.kafka.cluster import LocalCluster, is_cluster

    t0 = time.monotonic()
    if args.port is not None:
        raise ConfigError(f"{data_dir} holds a cluster: its nodes' ports were chosen with it")
    if args.node is not None:
        cluster = LocalCluster.open(data_dir)
        node = cluster.start_node(args.node)
        print(cluster.bootstrap)
        print(
            f"node {args.node} running again (pid {node.pid}, port {node.port}, "
            f"started in {time.monotonic() - t0:.1f}s); log: {node.log_path}",
            file=sys.stderr,
        )
        return 0
    if is_cluster(data_dir):
        cluster = LocalCluster.open(data_dir)
        if args.nodes is not None and args.nodes != cluster.size:
            raise ConfigError(
                f"{data_dir} holds a {cluster.size}-node cluster, not {args.nodes} "
                "(choose another --data-dir for a new one)"
            )
    else:
        cluster = LocalCluster.create(data_dir, args.nodes)
    started = cluster.start()
    print(cluster.bootstrap)
    print(
        f"Kafka cluster of {cluster.size} nodes running (started node(s) "
        f"{', '.join(map(str, started))} in {time.monotonic() - t0:.1f}s); "
        f"logs: {data_dir}/node*/broker.log; status: interest-stream broker status"
        f"{_dir_flag(args)}; stop with: interest-stream broker stop{_dir_flag(args)}",
        file=sys.stderr,
    )
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    from stream.kafka.broker import default_data_dir, read_running
    from stream.kafka.cluster import LocalCluster, is_cluster

    data_dir = Path(args.data_dir or default_data_dir()).resolve()
    if is_cluster(data_dir):
        nodes = LocalCluster.open(data_dir).status()
        for node in nodes:
            print(node.line)
        if all(node.pid is None for node in nodes):
            print("no broker running", file=sys.stderr)
            return 1
        return 0
    info = read_running(data_dir)
    if info is None:
        print("no broker running", file=sys.stderr)
        return 1
    print(f"running pid={info.pid} bootstrap={info.bootstrap} data_dir={info.data_dir}")
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    from stream.kafka.broker import default_data_dir, read_running, stop_pid
    from stream.kafka.cluster import LocalCluster, is_cluster

    data_dir = Path(args.data_dir or default_data_dir()).resolve()
    if args.node is not None:
        node = LocalCluster.open(data_dir).node(args.node)
        info = read_running(node.data_dir)
        if info is None:
            print(f"node {args.node} is not running", file=sys.stderr)
            return 0
        stop_pid(info.pid)
        node.reap()
        print(f"stopped node {args.node} (pid {info.pid})", file=sys.stderr)
        return 0
    if is_cluster(data_dir):
        stopped = LocalCluster.open(data_dir).stop()
        if not stopped:
            print("no broker running", file=sys.stderr)
        for pid in stopped:
            print(f"stopped broker pid {pid}", file=sys.stderr)
        return 0
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
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser("broker", help="the embedded local Kafka broker (demo, tests)")
    bsub = broker.add_subparsers(dest="broker_command", required=True, metavar="ACTION")
    start = bsub.add_parser(
        "start",
        help="start it (or a local cluster), print its bootstrap address, leave it running",
        # One line, so that a mistake is two lines at most (usage, error).
        usage="%(prog)s [-h] [--port P | --nodes N | --node I] [--data-dir D]",
    )
    how = start.add_mutually_exclusive_group()
    how.add_argument("--port", type=_port, metavar="P", help="listener port (default: a free one)")
    how.add_argument(
        "--nodes",
        type=_count,
        metavar="N",
        help="a local cluster of N broker+controller nodes (e.g. 3); default: one broker",
    )
    how.add_argument(
        "--node",
        type=_count,
        metavar="I",
        help="restart node I of the cluster in --data-dir, with its data",
    )
    start.set_defaults(func=_broker_start)
    status = bsub.add_parser("status", help="is it running, and where (each node of a cluster)")
    status.set_defaults(func=_broker_status)
    stop = bsub.add_parser("stop", help="stop it cleanly (every node of a cluster)")
    stop.add_argument(
        "--node", type=_count, metavar="I", help="stop only node I of the cluster in --data-dir"
    )
    stop.set_defaults(func=_broker_stop)
    fetch = bsub.add_parser("fetch", help="download the broker jars with Maven (cached)")
    fetch.set_defaults(func=_broker_fetch)
    for p in (start, status, stop):
        p.add_argument(
            "--data-dir",
            dest="data_dir",
            type=Path,
            metavar="D",
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
