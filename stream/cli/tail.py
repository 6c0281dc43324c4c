"""Print recommendation lists from the recommendations topic, then follow new ones.

Three ways to start:

- no user: from now, every list that arrives (all partitions);
- ``user``: that user's current list first, the newest for the key on the
  compacted topic, then each new one. The key hashes (murmur2, as the worker's
  producer places it) to one partition, so only that partition is read: from
  its start up to the end it had when the tail started, keeping the newest
  list for the key. A user without a list gets one line saying so;
- ``from_beginning``: every list still on the topic, then new ones (with
  ``user``: every list of that user).

A tombstone (a key without a value: the user was erased) removes a list: it is
shown as one line, ``<time> <user> (list removed: user erased)``, and a user
whose newest record is one has no current list. ``on_list`` callers are not
given tombstones.

Lists are read ``read_committed`` (exactly-once workers publish them inside
transactions), with partitions assigned directly: no consumer group joins and
nothing is committed, so any number of tails can watch a running worker.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from core.errors import KafkaClientError
from core.partition import partition_for
from engine.events import NEWCOMERS_ID, decode_recommendation
from stream.config import Settings
from stream.kafka.clients import list_topics, make_client

__all__ = ["tail", "format_list"]

_METADATA_WAIT_S = 15.0  # how long a just-created topic may take to have leaders

_POLL_S = 0.2
_BATCH = 500


def format_list(doc: dict[str, Any], width: int = 10) -> str:
    """One line: time, user, model, item:score best first, then what drove the list.

    The newcomer list shows as ``(newcomers)``; a refreshed list ends with ``[refresh]``.
    """
    at = datetime.fromtimestamp(doc.get("generated_at", 0) / 1000, tz=UTC)
    user = doc.get("user_id")
    who = "(newcomers)" if user == NEWCOMERS_ID else user
    refreshed = " [refresh]" if doc.get("trigger") == "refresh" else ""
    items = " ".join(f"{it['item_id']}:{float(it['score']):.3g}" for it in doc["items"][:width])
    why = doc.get("explanation")
    because = f" (because of {', '.join(why)})" if why else ""
    return (
        f"{at:%H:%M:%S}.{at.microsecond // 1000:03d} {who} "
        f"[{doc.get('model_version')}] {items}{because}{refreshed}"
    )


def tail(
    settings: Settings,
    user: str | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    from_beginning: bool = False,
    on_list: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Print (or hand to ``on_list``) lists as the module describes, until ``stop``.

    Returns how many lists were printed or handed over. An unreadable list is
    one line on ``out`` and the tail goes on.
    """
    conf = settings.kafka.client_config(
        **{"group.id": f"interest-tail-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False}
    )
    conf.setdefault("isolation.level", "read_committed")
    consumer = make_client(Consumer, conf)
    try:
        reader = _Reader(consumer, settings, out or sys.stdout, stop or threading.Event(), on_list)
        if user is None:
            reader.follow_all(from_beginning)
        else:
            reader.follow_user(user, from_beginning)
        return reader.shown
    finally:
        consumer.close()


def _removed_line(msg: Message) -> str:
    _, ms = msg.timestamp()
    at = datetime.fromtimestamp(max(ms, 0) / 1000, tz=UTC)
    user = (msg.key() or b"").decode("utf-8", "replace")
    return f"{at:%H:%M:%S}.{at.microsecond // 1000:03d} {user} (list removed: user erased)"


class _Reader:
    """One tail's consumer, output and count."""

    def __init__(
        self,
        consumer: Consumer,
        settings: Settings,
        out: TextIO,
        stop: threading.Event,
        on_list: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.consumer = consumer
        self.topic = settings.topics.recommendations
        self.bootstrap = settings.kafka.bootstrap_servers
        self.out = out
        self.stop = stop
        self.on_list = on_list
        self.shown = 0

    def follow_all(self, from_beginning: bool) -> None:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self.consumer.assign([TopicPartition(self.topic, p, start) for p in self._partitions()])
        self._follow(None)

    def follow_user(self, user: str, every: bool) -> None:
        """The user's newest list (``every``: all of them), a line if none, then new ones."""
        key = user.encode("utf-8")
        tp = TopicPartition(self.topic, partition_for(key, len(self._partitions())))
        # Queried by a read_committed consumer: the last stable offset. Lists
        # committed after it are new ones, printed as they come.
        low, end = self._watermarks(tp)
        self.consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)])
        before = self.shown
        newest: Message | None = None  # the user's newest list (or tombstone) so far
        pending: list[Message] = []  # read past the end: new lists, shown after the current
        done = end <= low
        while not done:
            if self.stop.is_set():
                return
            for msg in self._consume():
                at = msg.offset()
                if pending or (at is not None and at >= end):
                    pending.append(msg)
                elif msg.key() == key:
                    if every:
                        self._show(msg)
                    else:
                        newest = msg
            # Transaction markers close the log: the position, not the last
            # message's offset, says when everything up to the end was read.
            done = bool(pending) or self.consumer.position([tp])[0].offset >= end
        removed = newest is not None and newest.value() is None
        if newest is not None and not removed:
            self._show(newest)
        if self.shown == before:
            state = "(it was removed: user erased)" if removed else "yet"
            print(f"(no list for user {user} {state}; waiting for one)", file=self.out, flush=True)
        for msg in pending:
            self._show_if(msg, key)
        self._follow(key)

    def _follow(self, key: bytes | None) -> None:
        while not self.stop.is_set():
            for msg in self._consume():
                self._show_if(msg, key)

    def _show_if(self, msg: Message, key: bytes | None) -> None:
        if key is None or msg.key() == key:
            self._show(msg)

    def _show(self, msg: Message) -> None:
        value = msg.value()
        if value is None:  # a tombstone: the user was erased, their list is gone
            if self.on_list is None:
                print(_removed_line(msg), file=self.out, flush=True)
            return
        try:
            doc = decode_recommendation(value)
        except ValueError:
            print(f"(unreadable list at offset {msg.offset()})", file=self.out, flush=True)
            return
        self.shown += 1
        if self.on_list is not None:
            self.on_list(doc)
        else:
            print(format_list(doc), file=self.out, flush=True)

    def _consume(self) -> list[Message]:
        """The messages the next poll brings (up to a batch), without the errors."""
        good = []
        for msg in self.consumer.consume(_BATCH, _POLL_S):
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.fatal():
                raise KafkaClientError(f"tail: {err.str()}", err.name())
        return good

    def _partitions(self) -> list[int]:
        # A topic created a moment ago may have no leaders yet: ask again for a while.
        deadline = time.monotonic() + _METADATA_WAIT_S
        while True:
            meta = list_topics(self.consumer, self.bootstrap, 10, self.topic, self.stop)
            meta = meta.topics[self.topic]
            ready = (
                meta.error is None
                and meta.partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            )
            if ready or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if meta.error is not None or not meta.partitions:
            raise KafkaClientError(
                f"topic {self.topic} not found at {self.bootstrap}: start a worker "
                "or run `interest-stream topics` first",
                meta.error.name() if meta.error is not None else None,
            )
        return sorted(meta.partitions)

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        # Right after a topic is created its leader may not answer offset
        # queries yet (a retriable error): ask again for a while.
        deadline = time.monotonic() + _METADATA_WAIT_S
        while True:
            try:
                low, end = self.consumer.get_watermark_offsets(tp, timeout=10)
                return int(low), int(end)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise self._unreachable(exc) from None
            time.sleep(0.2)

    def _unreachable(self, exc: KafkaException) -> KafkaClientError:
        return KafkaClientError(f"cannot reach Kafka at {self.bootstrap}", exc.args[0].name())
