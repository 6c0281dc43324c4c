"""The items topic: item metadata in, read beside the events and handed to the model.

``interest.items`` is compacted and keyed by item id; each value is a JSON
record ``{"item_id": str, "title": str, "category": str?, "text": str?}``
(:func:`model.items.item_from_json`). It is optional: a worker whose items
topic does not exist (yet) serves as it would without metadata, and looks for
the topic again every ``RETRY_S`` seconds.

:class:`ItemsFeed` reads the whole topic from its beginning on a thread of its
own (every worker needs every item, whichever events partitions it owns, so
the consumer is assigned every partition and never commits), and queues the
records it decodes. The pipeline drains that queue between batches
(:meth:`ItemsFeed.drain`) and hands the records to the model, which encodes
their text on its own thread (:mod:`model.interest.content`): no event ever waits for a
record or for the encoder.

:class:`ItemsPublisher` writes records, as ``interest-stream publish-items`` does.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterable
from types import TracebackType

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from core.errors import ConfigError, KafkaClientError
from model.items import ItemMeta, item_from_json
from stream.config import Settings
from stream.kafka.clients import make_client
from stream.kafka.topics import TopicSpec, ensure_topics

__all__ = ["ItemsFeed", "ItemsPublisher", "items_topic_spec", "RETRY_S", "DRAIN_MAX"]

log = logging.getLogger("interest_stream.items")

RETRY_S = 10.0  # how often a missing items topic is looked for again
DRAIN_MAX = 5000  # records handed to the model per batch at most (the rest: next batch)
_POLL_S = 0.5


def items_topic_spec(settings: Settings) -> TopicSpec:
    """The compacted items topic: one record per item, the newest kept."""
    t = settings.topics
    return TopicSpec(
        t.items,
        t.partitions,
        t.replication_factor,
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
    )


class ItemsFeed:
    """A background reader of the items topic (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topics.items
        self._max_id = settings.worker.max_id_bytes
        self._queue: queue.SimpleQueue[ItemMeta] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0  # records decoded
        self.rejected = 0  # records that were not item metadata (logged, skipped)

    def start(self) -> ItemsFeed:
        """Start reading (a no-op when the topic name is empty)."""
        if self.topic and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="items-feed", daemon=True)
            self._thread.start()
        return self

    def drain(self, limit: int = DRAIN_MAX) -> list[ItemMeta]:
        """The records read since the last call (at most ``limit``), oldest first."""
        out: list[ItemMeta] = []
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        conf = self.settings.kafka.client_config(
            **{
                "group.id": f"{self.settings.worker.group}.items",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            consumer = make_client(Consumer, conf)
        except ConfigError as exc:
            log.warning("items topic not read: %s", exc)
            return
        try:
            if not self._assign(consumer):
                return
            while not self._stop.is_set():
                for msg in consumer.consume(500, _POLL_S):
                    if msg.error() is None:
                        self._decode(msg.value())
        except KafkaException as exc:  # the worker goes on without metadata
            log.warning("items topic %s: %s; no more item metadata", self.topic, exc)
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> bool:
        """Assign every partition from the beginning, once the topic exists; False: stopped."""
        while not self._stop.is_set():
            try:
                meta = consumer.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
            except KafkaException:
                meta = None
            if meta is not None and meta.error is None and meta.partitions:
                consumer.assign(
                    [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
                )
                log.info("reading item metadata from %s", self.topic)
                return True
            self._stop.wait(RETRY_S)
        return False

    def _decode(self, value: bytes | None) -> None:
        if value is None:  # a tombstone: the item's record was deleted; its vector stays
            return
        try:
            meta = item_from_json(json.loads(value), self._max_id)
        except (ValueError, UnicodeDecodeError) as exc:
            self.rejected += 1
            if self.rejected <= 5:
                log.warning("skipped a record of %s that is not item metadata: %s", self.topic, exc)
            return
        self.received += 1
        self._queue.put(meta)


class ItemsPublisher:
    """A producer of item metadata records on the items topic (created, compacted, if missing)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if not settings.topics.items:
            raise ConfigError(
                "no items topic configured (INTEREST_TOPIC_ITEMS or [topics] items is empty)"
            )
        ensure_topics(settings.kafka, [items_topic_spec(settings)])
        conf = settings.kafka.client_config(
            **{"acks": "all", "enable.idempotence": True, "linger.ms": 5}
        )
        self._producer = make_client(Producer, conf)
        self.delivered = 0
        self._error: str | None = None

    def __enter__(self) -> ItemsPublisher:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._producer.flush(10)

    def publish(self, items: Iterable[ItemMeta], timeout: float = 60.0) -> int:
        """Send ``items`` keyed by item id; returns how many the broker acknowledged."""

        def done(err: object, msg: object) -> None:
            if err is None:
                self.delivered += 1
            elif self._error is None:
                self._error = str(err)

        for meta in items:
            value = json.dumps(meta.to_json(), ensure_ascii=False).encode("utf-8")
            while True:
                try:
                    key = meta.item_id.encode("utf-8")
                    self._producer.produce(self.settings.topics.items, value, key, on_delivery=done)
                    break
                except BufferError:
                    self._producer.poll(0.05)
        left = self._producer.flush(timeout)
        if left or self._error is not None:
            raise KafkaClientError(
                f"item records not delivered to {self.settings.topics.items}: "
                f"{self._error or f'{left} unacknowledged after {timeout}s'}"
            )
        return self.delivered
