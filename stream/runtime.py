"""The native confluent-kafka runtime: poll, decode, call the pure step, produce, commit.

Programmatic use (the demo and the benchmark do this)::

    from prometheus_client import CollectorRegistry
    from stream.config import load_settings
    from stream.runtime import Worker

    worker = Worker(load_settings(), model, registry=CollectorRegistry())
    worker.on_publish = lambda recs: ...      # optional: every delivered batch of lists
    # worker.assigned (threading.Event) is set once partitions are assigned
    stats = worker.run(stop)                  # stop: threading.Event; blocks until it is set
    stats.summary()                           # consumed, applied, dead-lettered, lists, p50/p99

``run`` checks the state dir and the broker first (one clear
:class:`~stream.errors.InterestStreamError` if either is unusable), creates
missing topics, starts the metrics endpoint (``worker.metrics_port``, 0 = none),
then loops until ``stop`` is set; it finishes the batch in hand, commits and
closes everything before returning. ``worker.stats`` can be read from another
thread while it runs.

One micro-batch holds at most ``batch_max_events`` messages gathered within
``batch_max_ms``, and closes early as soon as no more messages wait (a lightly
loaded worker answers each event at once; a loaded one fills its batches):

1. decode every message; bad ones are produced, bytes unchanged, to the
   dead-letter topic (headers ``error`` = reason code, ``source`` =
   topic/partition/offset, and ``detail`` when there is one, e.g. the field);
2. per input partition, call :func:`model.step.process_batch` with that
   partition's state transaction and produce one list per touched user (if the
   model raises, the batch is retried event by event and the events it fails on
   are dead-lettered as ``processing-error``; 50 in a row raise :class:`ModelError`;
   state-store errors stop the worker instead, see :mod:`stream.isolation`);
3. flush the producer: every list and dead letter of the batch is delivered
   (at-least-once for outputs);
4. commit each partition's state transaction: user states + last processed
   offset in one RocksDB write (exactly-once for state);
5. commit the consumer offsets (informational: on assignment the worker seeks
   to its stored offset + 1, so state stays right even if this commit is lost).

The interest model is saved under the state dir after committed batches (every
60 s by default) and on a clean stop, and loaded on start: see
:mod:`stream.snapshots`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from model.step import RankingModel
from model.types import BatchResult, Event, Recommendation
from state.store import PartitionTransaction, RocksDBStore, Store, StorePartition
from stream.config import Settings
from stream.errors import KafkaClientError
from stream.events import EventValidator, Rejected, decode_event, encode_recommendation
from stream.isolation import ModelError, ModelGuard
from stream.metrics import MetricsServer, WorkerMetrics
from stream.preflight import make_client, preflight, state_root
from stream.rebalance import Rebalancer, commit_offsets
from stream.snapshots import ModelSnapshots, SnapshotPolicy
from stream.stats import WorkerStats

# state_root and preflight are re-exported: callers know them from here.
__all__ = ["Worker", "WorkerStats", "ModelError", "state_root", "preflight"]

log = logging.getLogger("interest_stream.worker")

_FLUSH_SLICE_S = 1.0
_STOP_GRACE_S = 15.0  # how long a stopping worker waits for unacknowledged outputs
_LAG_EVERY_S = 1.0
_ERROR_WINDOW_S = 30.0  # repeats of one client error kind are logged once per window
_MAX_MODEL_FAILURES = 50  # valid events the model may fail on in a row before the worker stops


class _Batch:
    """What one partition contributes to the micro-batch in hand."""

    __slots__ = ("part", "txn", "offset", "events", "msgs", "kafka_ts", "recs", "scored",
                 "hits")

    def __init__(self, part: StorePartition, txn: PartitionTransaction) -> None:
        self.part = part
        self.txn = txn
        self.offset = -1  # last input offset this batch covers
        self.events: list[Event] = []  # valid events, with their messages and Kafka times
        self.msgs: list[Message] = []
        self.kafka_ts: list[int] = []
        self.recs: list[Recommendation] = []
        self.scored = 0
        self.hits = 0

    def take(self, result: BatchResult) -> None:
        self.recs.extend(result.recommendations)
        self.scored += result.scored
        self.hits += sum(r is not None for r in result.ranks)


class Worker:
    """Consumes events, keeps per-partition user state, publishes refreshed lists."""

    def __init__(
        self,
        settings: Settings,
        model: RankingModel,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
        snapshots: SnapshotPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.metrics = WorkerMetrics.create(registry)
        self.stats = WorkerStats()
        self.store: Store = store if store is not None else RocksDBStore(state_root(settings))
        # The model is saved next to the state it matches (a memory store keeps neither).
        self.snapshots = (ModelSnapshots(self.store.root / "model",
                                         snapshots or SnapshotPolicy.from_config(settings.worker))
                          if isinstance(self.store, RocksDBStore) else None)
        self.on_publish: Callable[[list[Recommendation]], None] | None = None
        self.metrics_url: str | None = None
        self._validator = EventValidator(max_payload_bytes=settings.worker.max_payload_bytes,
                                         max_id_bytes=settings.worker.max_id_bytes)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._delivery_errors: list[str] = []
        self._last_generated = 0
        self._stop = threading.Event()
        self._lag_at = 0.0
        self._rebalancer = Rebalancer(self.store, self.metrics)
        self.assigned = self._rebalancer.assigned  # set once partitions have been assigned
        self._client_errors: dict[str, tuple[float, int]] = {}  # kind -> (logged at, repeats)
        self._guard = ModelGuard(settings.worker.k, self._warn_model, self._dead_letter,
                                 _MAX_MODEL_FAILURES)

    # --- lifecycle --------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> WorkerStats:
        """Process batches until ``stop`` is set; returns the final stats."""
        stop = stop if stop is not None else threading.Event()
        if isinstance(self.store, RocksDBStore):
            preflight(self.settings, self.store.root)
        else:
            preflight(self.settings, Path(tempfile.gettempdir()))
        self._consumer, self._producer = self._clients()
        if self.snapshots is not None:
            self.model = self.snapshots.restore(self.model)
        server = MetricsServer(self.metrics.registry, self.settings.worker.metrics_port)
        self.metrics_url = None
        self._stop = stop
        self.stats.started()
        clean = False
        try:
            self.metrics_url = server.start().url
            self._consumer.subscribe(
                [self.settings.topics.events],
                on_assign=self._rebalancer.on_assign, on_revoke=self._rebalancer.on_revoke,
                on_lost=self._rebalancer.on_lost,
            )
            while not stop.is_set():
                committed = self._run_batch()
                if self.snapshots is not None:
                    self.snapshots.after_batch(self.model, committed)
            clean = True
        finally:
            try:
                self._shutdown()
            finally:
                if self.snapshots is not None:  # after every batch's state commit
                    self.snapshots.close(self.model, clean)
                server.stop()
                self.stats.finished()
        return self.stats

    def _clients(self) -> tuple[Consumer, Producer]:
        kafka, w = self.settings.kafka, self.settings.worker
        conf: dict[str, Any] = {
            "group.id": w.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Incremental rebalances: partitions that stay keep their open stores.
            "partition.assignment.strategy": "cooperative-sticky",
            "error_cb": self._on_client_error,
        } | dict(kafka.client)
        if str(conf.get("group.protocol", "classic")).lower() == "consumer":
            # KIP-848 groups: the broker assigns, always incrementally.
            conf.pop("partition.assignment.strategy", None)
        else:
            self._rebalancer.eager = (
                "cooperative" not in str(conf["partition.assignment.strategy"]))
        consumer = make_client(Consumer, kafka.client_config(**conf))
        # Defaults first, the user's client settings win.
        producer = make_client(Producer, kafka.client_config(**{
            "enable.idempotence": True,
            "linger.ms": 2,
            "partitioner": "murmur2_random",
            "error_cb": self._on_client_error,
        } | dict(kafka.client)))
        return consumer, producer

    def _shutdown(self) -> None:
        consumer, producer = self._consumer, self._producer
        if producer is not None:
            producer.flush(10)
        if consumer is not None:
            try:
                self._commit_offsets(list(self.store.partitions().values()), asynchronous=False)
                consumer.close()  # runs on_revoke: stores close there
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close: %s", exc)
        self.store.close()
        self._consumer = self._producer = None

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal Kafka client error: %s", err.str())
            return
        self._warn_throttled(err.name(), f"Kafka client: {err.str()}")

    def _warn_throttled(self, kind: str, text: str,
                        exc_info: BaseException | None = None) -> None:
        # An unreachable broker reports every reconnect attempt of every client:
        # one line per error kind and window keeps the log readable.
        now = time.monotonic()
        last, repeats = self._client_errors.get(kind, (-_ERROR_WINDOW_S, 0))
        if now - last < _ERROR_WINDOW_S:
            self._client_errors[kind] = (last, repeats + 1)
            return
        self._client_errors[kind] = (now, 0)
        log.warning("%s%s", text, f" (and {repeats} more like it)" if repeats else "",
                    exc_info=exc_info)

    def _warn_model(self, kind: str, text: str, exc: BaseException) -> None:
        self._warn_throttled(kind, text, exc_info=exc)

    # --- one micro-batch ----------------------------------------------------------------

    def _run_batch(self) -> bool:
        """One micro-batch; True when it applied and committed something."""
        w, m = self.settings.worker, self.metrics
        assert self._consumer is not None and self._producer is not None
        t0 = time.perf_counter()
        msgs = self._poll(w.batch_max_events, w.batch_max_ms / 1000.0)
        t1 = time.perf_counter()
        m.stage_seconds.labels("poll").observe(t1 - t0)
        if not msgs:
            self._producer.poll(0)
            if time.monotonic() - self._lag_at > _LAG_EVERY_S:
                self._update_lag()
            return False
        by_part: dict[tuple[str, int], list[Message]] = defaultdict(list)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaClientError(f"consumer failed: {err.str()}", err.name())
                self._warn_throttled(f"consume {err.name()}", f"consume: {err.str()}")
                continue
            by_part[(msg.topic(), msg.partition())].append(msg)

        batches = [b for key, plist in by_part.items()
                   if (b := self._decode_partition(key, plist)) is not None]
        t2 = time.perf_counter()
        m.stage_seconds.labels("decode").observe(t2 - t1)
        if not batches:
            return False
        m.batch_size.observe(sum(len(v) for v in by_part.values()))

        generated_at = max(int(time.time() * 1000), self._last_generated + 1)
        self._last_generated = generated_at
        for b in batches:
            if b.events:
                self._guard.step(b, self.model)
        t3 = time.perf_counter()
        m.stage_seconds.labels("step").observe(t3 - t2)

        for b in batches:
            for rec in b.recs:
                key, value = encode_recommendation(rec, generated_at)
                self._produce(self.settings.topics.recommendations, key, value, None)
        self._flush()
        delivered_ms = time.time() * 1000.0
        t4 = time.perf_counter()
        m.stage_seconds.labels("produce").observe(t4 - t3)

        for b in batches:
            b.txn.commit()
        self._commit_offsets([b.part for b in batches], asynchronous=True)
        t5 = time.perf_counter()
        m.stage_seconds.labels("commit").observe(t5 - t4)
        self._account(batches, delivered_ms)
        return True

    def _poll(self, max_events: int, max_s: float) -> list[Message]:
        """Up to ``max_events`` messages within ``max_s``, returning early once none wait.

        Under light load a batch is whatever has arrived (lists go out at once);
        under load the local queue is never empty and batches fill up to the cap.
        """
        assert self._consumer is not None
        deadline = time.monotonic() + max_s
        first = self._consumer.poll(max_s)
        if first is None:
            return []
        msgs = [first]
        while len(msgs) < max_events:
            more = self._consumer.consume(max_events - len(msgs), timeout=0)
            if not more:
                break
            msgs.extend(more)
            if time.monotonic() >= deadline:
                break
        return msgs

    def _decode_partition(self, key: tuple[str, int], plist: list[Message]) -> _Batch | None:
        part = self.store.partitions().get(key)
        if part is None:
            # Revoked during this poll: the new owner re-reads from its stored offset.
            return None
        floor = part.last_offset()
        batch = _Batch(part, part.begin())
        newest = None
        for msg in plist:
            offset = msg.offset()
            # Offsets must only move forward: a message at or below the floor is already
            # in state, or was handed out twice when a rebalance re-seeked mid-poll.
            if floor is not None and offset <= floor:
                continue
            floor = newest = offset
            self.stats.consumed += 1
            self.metrics.messages_consumed.inc()
            ts_type, kafka_ts = msg.timestamp()
            kafka_ts = None if ts_type == TIMESTAMP_NOT_AVAILABLE else kafka_ts
            decoded = decode_event(msg.key(), msg.value(), kafka_ts, self._validator)
            if isinstance(decoded, Rejected):
                self._dead_letter(msg, decoded)
                continue
            batch.events.append(decoded)
            batch.msgs.append(msg)
            batch.kafka_ts.append(kafka_ts or 0)
            self.metrics.events_consumed.labels(decoded.event).inc()
        if newest is None:
            return None
        batch.txn.set_offset(newest)
        batch.offset = newest
        return batch

    def _dead_letter(self, msg: Message, rejected: Rejected) -> None:
        reason = rejected.reason
        source = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        headers = [("error", reason.encode()), ("source", source.encode())]
        if rejected.detail:  # e.g. which field is missing; helps whoever fixes the producer
            headers.append(("detail", rejected.detail.encode("utf-8", "replace")))
        self._produce(self.settings.topics.dead_letter, msg.key(), msg.value(), headers)
        self.stats.dead_lettered += 1
        self.stats.dead_letters_by_reason[reason] += 1
        self.metrics.dead_letters.labels(reason).inc()

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers,
                                       on_delivery=self._on_delivery)
                return
            except BufferError:
                # Local queue full: let librdkafka drain it, then retry.
                self._producer.poll(0.05)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err.str()} ({err.name()})")

    def _flush(self) -> None:
        assert self._producer is not None
        waited = 0.0
        while (left := self._producer.flush(_FLUSH_SLICE_S)) > 0:
            waited += _FLUSH_SLICE_S
            if int(waited) % 10 == 1:
                log.warning("waiting %.0fs for the broker to acknowledge %d output(s)",
                            waited, left)
            if self._stop.is_set() and waited >= _STOP_GRACE_S:
                # State is not committed: after a restart this batch is processed again.
                raise KafkaClientError(
                    f"stopping with {left} output(s) the broker has not acknowledged; "
                    "their batch was not committed and will be processed again on restart")
        if self._delivery_errors:
            first = self._delivery_errors[0]
            n = len(self._delivery_errors)
            self._delivery_errors.clear()
            # State is not committed: after a restart this batch is processed again.
            raise KafkaClientError(f"{n} output message(s) could not be delivered: {first}")

    def _commit_offsets(self, parts: list[StorePartition], asynchronous: bool) -> None:
        if self._consumer is not None:
            commit_offsets(self._consumer, parts, asynchronous)

    def _account(self, batches: list[_Batch], delivered_ms: float) -> None:
        m, s = self.metrics, self.stats
        for b in batches:
            n = len(b.kafka_ts)
            s.applied += n
            m.events_applied.inc(n)
            s.lists_published += len(b.recs)
            m.lists_published.inc(len(b.recs))
            s.scored += b.scored
            s.hits += b.hits
            m.events_scored.inc(b.scored)
            m.list_hits.inc(b.hits)
            lat = [(delivered_ms - ts) / 1000.0 for ts in b.kafka_ts if ts > 0]
            for x in lat:
                m.latency.observe(x)
            s.add_latencies(lat)
            m.users_in_state.labels(str(b.part.partition)).set(b.part.user_count())
        s.batches += 1
        self._update_lag()
        if self.on_publish is not None:
            recs = [r for b in batches for r in b.recs]
            if recs:
                self.on_publish(recs)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        self._lag_at = time.monotonic()
        for (topic, partition), part in self.store.partitions().items():
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            last = part.last_offset()
            nxt = 0 if last is None else last + 1
            self.metrics.consumer_lag.labels(topic, str(partition)).set(max(0, high - nxt))

    def describe(self) -> dict[str, Any]:
        """Where this worker reads, writes and keeps state (for a start-up line)."""
        t, w = self.settings.topics, self.settings.worker
        root = self.store.root if isinstance(self.store, RocksDBStore) else "memory"
        return {"group": w.group, "events": t.events, "recommendations": t.recommendations,
                "dead_letter": t.dead_letter, "state": str(root), "pid": os.getpid(),
                "model": getattr(self.model, "version", "?"),
                "metrics": (f"http://localhost:{w.metrics_port}/metrics" if w.metrics_port
                            else "off")}
