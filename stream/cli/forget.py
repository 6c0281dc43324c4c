"""``interest-stream forget --user U``: ask the workers to erase a user.

The request is a message on the events topic, ``{"user_id": U, "erase": true}``
with key U (see :mod:`engine.events`), partitioned like U's events, so it is
ordered after everything U did before. The worker that owns the partition
deletes U's state, writes a tombstone to the changelog and one to the
recommendations topic, in one batch's checkpoint (one transaction with
exactly-once). ``--wait S`` waits up to S seconds for that tombstone on the
recommendations topic, so the command ends once the erasure is done.

U is checked with the same rules as the worker's (an id it would dead-letter
is one clear error here), and sent as the producers send it: with
pseudonymised ids the worker makes the pseudonym, so this command needs no key.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from core.cliargs import add_kafka_flags
from core.errors import ConfigError, KafkaClientError
from engine.events import EventValidator, Rejected, decode_event, encode_erasure
from stream.config import Settings, settings_from_args

__all__ = ["register", "request_erasure", "check_user_id"]

_POLL_S = 0.2


def check_user_id(settings: Settings, user: str) -> None:
    """ConfigError unless the workers (with these settings) accept ``user`` as a user id."""
    key, value = encode_erasure(user)
    w = settings.worker
    verdict = decode_event(key, value, None, EventValidator(w.max_payload_bytes, w.max_id_bytes))
    if isinstance(verdict, Rejected):
        why = verdict.detail or verdict.reason
        raise ConfigError(f"--user {user!r}: not a user id the workers accept ({why})")


def request_erasure(settings: Settings, user: str, wait_s: float | None = None) -> bool:
    """Publish the erasure request of ``user``; with ``wait_s``, wait for its tombstone.

    Returns True when the tombstone was seen (always True without ``wait_s``).
    """
    check_user_id(settings, user)
    key, value = encode_erasure(user)
    from stream.cli.publish import Publisher

    watch = _TombstoneWatch(settings, key) if wait_s is not None else None
    try:
        with Publisher(settings) as pub:
            pub.check_connection()
            pub.send(key, value)
            pub.flush()
        return watch is None or watch.wait(wait_s or 0.0)
    finally:
        if watch is not None:
            watch.close()


class _TombstoneWatch:
    """Reads the key's partition of the recommendations topic from its current end."""

    def __init__(self, settings: Settings, key: bytes) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        from core.partition import partition_for
        from stream.kafka.clients import make_client
        from stream.kafka.topics import partition_count

        topic = settings.topics.recommendations
        n = partition_count(settings.kafka, topic)
        if n is None:
            raise ConfigError(f"no recommendations topic {topic}: has a worker run?")
        conf = settings.kafka.client_config(
            **{
                "group.id": f"interest-forget-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self.key = key
        self.consumer = make_client(Consumer, conf)
        tp = TopicPartition(topic, partition_for(key, n))
        try:
            _, end = self.consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            self.consumer.close()
            raise KafkaClientError(
                f"cannot read {topic}", exc.args[0].name() if exc.args else None
            ) from None
        self.consumer.assign([TopicPartition(topic, tp.partition, end)])

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(100, timeout=_POLL_S):
                if msg.error() is None and msg.key() == self.key and msg.value() is None:
                    return True
        return False

    def close(self) -> None:
        self.consumer.close()


def _forget(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    settings.kafka.client_config()
    if args.wait is not None and not args.wait > 0:
        raise ConfigError("--wait must be a positive number of seconds")
    done = request_erasure(settings, args.user, args.wait)
    where = settings.topics.events
    if args.wait is None:
        print(
            f"interest-stream: erasure of user {args.user} requested on {where}; the worker "
            "owning its partition applies it with its next batch",
            file=sys.stderr,
        )
        return 0
    if done:
        print(
            f"interest-stream: user {args.user} erased (state, changelog and list removed)",
            file=sys.stderr,
        )
        return 0
    print(
        f"interest-stream: erasure of user {args.user} requested on {where}, not confirmed "
        f"within {args.wait:g}s (is a worker of the group running?)",
        file=sys.stderr,
    )
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``forget`` to the ``interest-stream`` parser."""
    f = sub.add_parser(
        "forget",
        help="erase a user: their state, changelog records and list",
        description="Publish an erasure request for a user on the events topic; the worker "
        "deletes the user's state and removes their list (tombstones on the changelog and on "
        "the recommendations topic).",
    )
    add_kafka_flags(f)
    f.add_argument("--user", required=True, metavar="U", help="the user id, as producers send it")
    f.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for the erasure to be done (exit 1 if it is not)",
    )
    f.set_defaults(func=_forget)
