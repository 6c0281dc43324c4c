"""``interest-stream state show|dump``: user states read from the changelog, no worker needed.

The consumer group's changelog (see :mod:`stream.runtime.restore`) holds every user's
latest state. Both commands read it read_committed up to the high watermark
taken when they start, keep the newest record per user, and print one JSON
object per user::

    {"user_id": str, "counts": {"click": int, "favourite": int, "cart": int,
     "purchase": int}, "last_ts": int, "recent_items": [str, ...]}

``show --user U`` reads only the partition U's events go to (murmur2 of the
key, as producers place them); ``dump`` reads every partition, one object per
line. They take the same Kafka flags, environment and config file as every
other command, and ``--group`` names the consumer group whose state to read.
An erased user has no state (their tombstone is the newest record).

With pseudonymised ids (a user-id key configured, see :mod:`engine.privacy`)
``show --user U`` looks U's pseudonym up with the same key and prints U;
``dump`` prints the pseudonyms, the only ids stored. A changelog whose states
were keyed another way (no key, or another key) is one clear error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from core.cliargs import add_kafka_flags
from core.errors import ConfigError, DataError, KafkaClientError
from core.partition import partition_for
from core.types import EVENT_TYPES, UserState
from engine.privacy import PLAIN, UserIds
from stream.config import ID_KEY_ENV, Settings, settings_from_args

__all__ = ["register", "read_states", "state_json"]

_IDLE_S = 0.2


def state_json(user_id: str, state: UserState) -> dict[str, Any]:
    """The documented JSON view of one user's state."""
    return {
        "user_id": user_id,
        "counts": dict(zip(EVENT_TYPES, state.counts, strict=True)),
        "last_ts": state.last_ts,
        "recent_items": list(state.recent_items),
    }


def read_states(
    settings: Settings, user: str | None = None, timeout_s: float = 60.0
) -> Iterator[tuple[str, UserState]]:
    """(stored user id, state) of every user in the changelog (only ``user`` when given)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    from state.codec import CodecError, decode_state
    from state.store import ids_of_record, user_of_key
    from stream.kafka.clients import make_client
    from stream.kafka.topics import partition_count

    topic = settings.changelog_topic
    n = partition_count(settings.kafka, topic)
    if n is None:
        raise ConfigError(
            f"no changelog topic {topic}: no worker of group {settings.worker.group!r} has "
            "run against these topics (pass --group, or --config/env of the workers)"
        )
    parts = [partition_for(user.encode("utf-8"), n)] if user is not None else list(range(n))
    base = {"group.id": f"interest-state-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False}
    reader = make_client(
        Consumer, settings.kafka.client_config(**base, **{"isolation.level": "read_committed"})
    )
    marks = make_client(
        Consumer, settings.kafka.client_config(**base, **{"isolation.level": "read_uncommitted"})
    )
    ids = UserIds(settings.privacy.id_key, settings.privacy.log_ids)
    wanted = None if user is None else b"u" + ids.of(user).encode("utf-8")
    schemes: set[bytes] = set()
    try:
        ends = {}
        for p in parts:
            # read_uncommitted: the high watermark, past any open transaction's records.
            low, high = marks.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10, cached=False
            )
            if high > low:
                ends[p] = high
        latest: dict[bytes, tuple[bytes | None, int, int]] = {}
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        pending = set(ends)
        while pending:
            if time.monotonic() > deadline:
                raise KafkaClientError(
                    f"reading {topic} took longer than {timeout_s:.0f}s (partitions "
                    f"{sorted(pending)} not read to their end)"
                )
            for msg in reader.consume(1000, timeout=_IDLE_S):
                if msg.error() is not None:
                    continue
                key = msg.key() or b""
                if (scheme := ids_of_record(key, msg.value())) is not None:
                    schemes.add(scheme)
                elif wanted is None or key == wanted:
                    latest[key] = (msg.value(), msg.partition(), msg.offset())
            positions = reader.position([TopicPartition(topic, p) for p in pending])
            pending = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
    except KafkaException as exc:
        raise KafkaClientError(
            f"cannot read the changelog {topic}", exc.args[0].name() if exc.args else None
        ) from None
    finally:
        reader.close()
        marks.close()
    other = schemes - {ids.scheme}
    if other:
        have = "plain user ids" if other == {PLAIN} else "ids pseudonymised with another key"
        raise ConfigError(
            f"the changelog {topic} holds states keyed by {have}; this command "
            + (
                f"was given another user-id key (${ID_KEY_ENV} or id_key_file)"
                if ids.pseudonymised
                else f"needs the workers' user-id key (${ID_KEY_ENV} or id_key_file)"
            )
        )
    for key in sorted(latest):
        (value, partition, offset), uid = latest[key], user_of_key(key)
        if value is None or uid is None:
            continue  # an erased user, or the partition's own offset record
        try:
            yield uid, decode_state(value)
        except CodecError as exc:
            # Where, not who: error lines end up in logs.
            raise DataError(
                f"the changelog {topic} holds an unreadable user state "
                f"(partition {partition}, offset {offset}): {exc}"
            ) from None


def _show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    for _, state in read_states(settings, user=args.user):
        print(json.dumps(state_json(args.user, state)))  # as asked, also when pseudonymised
        return 0
    print(
        f"interest-stream: user {args.user!r} has no state in {settings.changelog_topic}",
        file=sys.stderr,
    )
    return 1


def _dump(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    for uid, state in read_states(settings):
        sys.stdout.write(json.dumps(state_json(uid, state)) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``state show`` and ``state dump`` to the ``interest-stream`` parser."""
    st = sub.add_parser("state", help="user states read from the changelog (no worker needed)")
    ssub = st.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    show = ssub.add_parser("show", help="one user's state as a JSON object")
    show.add_argument("--user", required=True, metavar="U", help="the user id")
    show.set_defaults(func=_show)
    dump = ssub.add_parser("dump", help="every user's state, one JSON object per line")
    dump.set_defaults(func=_dump)
    for p in (show, dump):
        add_kafka_flags(p)
        p.add_argument("--group", help="the workers' consumer group (default interest-stream)")
