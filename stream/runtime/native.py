"""The native confluent-kafka runtime: poll -> decode -> step -> checkpoint.

Programmatic use (the demo and the benchmark do this)::

    from prometheus_client import CollectorRegistry
    from stream.config import load_settings
    from stream.runtime.native import Worker

    worker = Worker(load_settings(), build_model=lambda: model, registry=CollectorRegistry())
    worker.on_publish = lambda recs: ...      # optional: every committed batch of lists
    # worker.assigned (threading.Event) is set once partitions are assigned
    stats = worker.run(stop)                  # stop: threading.Event; blocks until it is set
    stats.summary()                           # consumed, applied, dead-lettered, lists, p50/p99

``run`` checks the state dir and the broker first (one clear
:class:`~core.errors.InterestStreamError` if either is unusable), creates
missing topics, then builds the model (``build_model``; a ready ``model`` may
be passed instead), starts the metrics endpoint (``worker.metrics_url``) and
loops until ``stop`` is set; it finishes the batch in hand, commits and closes
everything before returning. ``worker.stats`` can be read from another thread.

One micro-batch holds at most ``batch_max_events`` messages gathered within
``batch_max_ms``, and closes early as soon as no more messages wait (a lightly
loaded worker answers each event at once; a loaded one fills its batches). A
worker that is behind (its batches come full) doubles the cap batch by batch up
to ``batch_catch_up_events``, and goes back to ``batch_max_events`` at the first
batch that is not full:

1. decode every message into a per-partition :class:`~engine.batch.PartitionBatch`;
   bad ones go to the checkpoint as dead letters (reason code in the ``error``
   header, ``source`` = topic/partition/offset, ``detail`` when there is one);
   user ids become the stored ones here (pseudonyms with a key, see
   :mod:`engine.privacy`), and erasure requests are taken in;
2. per partition, the guarded pure step (:mod:`engine.isolation`) against that
   partition's state transaction;
3. the :class:`~stream.runtime.checkpoint.Checkpoint` publishes the lists and commits
   outputs, state and offsets in its order (see :mod:`stream.runtime.checkpoint`).

The model is saved under the state dir after committed batches and on a clean
stop, and loaded on start: see :mod:`stream.runtime.snapshots`. With model sharing on
(the default) every batch's checkpoint also carries the model's deltas, and
between batches the worker adds the other workers' and publishes snapshots to
the model topic: see :mod:`stream.runtime.modelsync`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

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

from core.errors import KafkaClientError
from core.types import Recommendation
from engine.batch import PartitionBatch, Source
from engine.driver import BatchDriver, ModelShare
from engine.health import Health
from engine.isolation import ModelError
from engine.learning import settle_heap
from engine.metrics import MetricsServer, WorkerMetrics
from engine.stats import WorkerStats
from model.pacing import next_cap
from model.step import RankingModel
from state.store import RocksDBStore, Store, StorePartition
from stream.config import Settings
from stream.kafka.clients import make_client
from stream.kafka.topics import partition_count
from stream.runtime.checkpoint import (
    AtLeastOnceCheckpoint,
    BatchAborted,
    ExactlyOnceCheckpoint,
    KafkaCheckpoint,
    Outputs,
    ProducerFenced,
)
from stream.runtime.identity import WorkerIdentity
from stream.runtime.items import ItemsFeed
from stream.runtime.modelsync import ModelSync, Record
from stream.runtime.preflight import preflight, state_root
from stream.runtime.rebalance import Rebalancer, commit_offsets
from stream.runtime.restore import Restorer, RestoreTask
from stream.runtime.snapshots import ModelSnapshots, SnapshotPolicy

__all__ = ["Worker", "WorkerStats", "ModelError", "state_root"]

log = logging.getLogger("interest_stream.worker")

_LAG_EVERY_S = 1.0
_PLACEMENT_EVERY_S = 60.0  # how often the events topic's partition count is read again
_ERROR_WINDOW_S = 30.0  # repeats of one client error kind are logged once per window


class Worker:
    """Consumes events, keeps per-partition user state, publishes refreshed lists."""

    def __init__(
        self,
        settings: Settings,
        model: RankingModel | None = None,
        *,
        build_model: Callable[[], RankingModel] | None = None,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
        snapshots: SnapshotPolicy | None = None,
    ) -> None:
        if (model is None) == (build_model is None):
            raise ValueError("pass either a model or build_model")
        self.settings = settings
        self.model = model
        self._build_model = build_model
        self.metrics = WorkerMetrics.create(registry)
        self.stats = WorkerStats(self.metrics)
        # Progress and readiness: /healthz, /readyz and interest_stalled (engine/health.py).
        self.health = Health(settings.worker.stall_after_s)
        self.metrics.watch(self.health)
        self.store: Store = store if store is not None else RocksDBStore(state_root(settings))
        # The model is saved next to the state it matches (a memory store keeps neither).
        location = self.store.location
        self.snapshots = (
            ModelSnapshots(
                location / "model", snapshots or SnapshotPolicy.from_config(settings.worker)
            )
            if location is not None
            else None
        )
        if self.snapshots is not None:
            snaps = self.snapshots
            self.metrics.snapshot_timestamp.set_function(lambda: snaps.saved_at)
        self.on_start: Callable[[dict[str, Any]], None] | None = None
        self.on_publish: Callable[[list[Recommendation]], None] | None = None
        self.metrics_url: str | None = None
        self._consumer: Consumer | None = None
        self._outputs: Outputs | None = None
        self._stop = threading.Event()
        self._lag_at = 0.0
        self._restorer = Restorer(settings, self.metrics)
        self._rebalancer = Rebalancer(
            self.store, self.metrics, self._restorer, commit_on_revoke=not settings.exactly_once
        )
        self._rebalancer.on_ready = self._after_restore
        self._reseed: list[StorePartition] = []  # stores to write to a recreated changelog
        self.assigned = self._rebalancer.assigned  # set once partitions have been assigned
        self._identity = WorkerIdentity(self.store.location)
        self.transactional_id: str | None = None
        self._fenced_at: list[float] = []
        self._transaction_timeout_s = 60.0  # the producer's (see _make_producer)
        self._aborts = 0  # batch transactions aborted in a row
        self._cap = settings.worker.batch_max_events  # this batch's cap (see _run_batch)
        self.metrics.batch_cap.set(self._cap)
        self._placement_at = 0.0
        self._client_errors: dict[str, tuple[float, int]] = {}  # kind -> (logged at, repeats)
        self.driver = BatchDriver(
            settings.driver_config(), self.metrics, self.stats, self._warn_model
        )

    @property
    def sync(self) -> ModelShare | None:
        """The sharing of the model with the group's other workers (None: not shared)."""
        return self.driver.sync

    @property
    def restoring(self) -> bool:
        """True while a partition's state is being restored from the changelog."""
        return self._restorer.active

    # --- lifecycle --------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> WorkerStats:
        """Process batches until ``stop`` is set; returns the final stats."""
        stop = stop if stop is not None else threading.Event()
        self._stop = stop
        preflight(self.settings, self.store.location, stop)
        self.driver.placement.resize(self._events_partitions())
        if self.model is None:
            assert self._build_model is not None
            self.model = self._build_model()
        if self.snapshots is not None:
            self.model = self.snapshots.restore(self.model)
        self.driver.items = ItemsFeed(self.settings).start()
        worker_id = self._identity.acquire()
        if self.settings.exactly_once:
            w = self.settings.worker
            self.transactional_id = f"interest-stream.{w.group}.{worker_id}"
        server = MetricsServer(
            self.metrics.registry, self.settings.worker.metrics_port, health=self.health
        )
        self.metrics_url = None
        self.stats.started()
        clean = False
        try:
            self.driver.model = self.model
            if self.settings.model_sharing:
                sync = ModelSync(self.settings, self.metrics, worker_id)
                snaps = self.snapshots
                local = snaps.extra if snaps is not None and snaps.loaded else None
                if self.driver.share_model(sync, local) and snaps is not None:
                    snaps.describe = sync.describe  # local snapshots say what they include
                self.model = self.driver.model
            # What the model can do, checked once (model.capabilities).
            log.info("model %s", self.driver.caps.describe())
            self.metrics.observe_model(self.driver.caps)
            consumer = self._consumer = self._make_consumer()
            self._outputs = Outputs(self._make_producer(), stop)
            self.metrics_url = server.start().url
            if self.on_start is not None:
                self.on_start(self.describe())
            consumer.subscribe(
                [self.settings.topics.events],
                on_assign=self._rebalancer.on_assign,
                on_revoke=self._rebalancer.on_revoke,
                on_lost=self._rebalancer.on_lost,
            )
            self.driver.warm_up()
            settle_heap()
            self.health.start()
            while not stop.is_set():
                committed = self._run_batch()
                # Parts due while batches flow ride in them (_run_batch); on their own
                # only when no batch came.
                if not committed and self.driver.refresher.due() and not stop.is_set():
                    self._refresh()
                if self.snapshots is not None:
                    self.snapshots.after_batch(self.model, committed)
            # What the model learnt since it last shared, and what committed meanwhile:
            # the last local snapshot includes both.
            self.driver.stop_sharing(self._commit_records)
            clean = True
        finally:
            try:
                self.driver.stop_sharing(None)
                self.driver.close()
                if isinstance(self.driver.items, ItemsFeed):
                    self.driver.items.close()
                self._shutdown()
            finally:
                if self.snapshots is not None:  # after every batch's state commit
                    self.snapshots.close(self.model, clean)
                server.stop()
                self._identity.release()
                self.stats.finished()
        return self.stats

    def _commit_records(self, records: list[Record]) -> bool:
        """Publish ``records`` on their own (one transaction with exactly-once)."""
        checkpoint = self._checkpoint()
        for topic, key, value, partition, headers in records:
            checkpoint.add_record(topic, value, key, partition, headers)
        try:
            checkpoint.commit()
        except (BatchAborted, ProducerFenced, KafkaClientError) as exc:
            self._warn_throttled("publish", f"model records not published: {exc}")
            if isinstance(exc, ProducerFenced):
                self._renew_producer(exc)
            return False
        return True

    def _make_consumer(self) -> Consumer:
        kafka, w = self.settings.kafka, self.settings.worker
        conf: dict[str, Any] = {
            "group.id": w.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # Incremental rebalances: partitions that stay keep their open stores.
            "partition.assignment.strategy": "cooperative-sticky",
            # A killed worker's partitions move within about 6 s (the broker's default
            # minimum session), part of the 15 s takeover budget (docs/operating/failures.md).
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "error_cb": self._on_client_error,
        } | dict(kafka.client)
        if str(conf.get("group.protocol", "classic")).lower() == "consumer":
            # KIP-848 groups: the broker assigns, always incrementally, and sets the
            # session timeouts (group.consumer.session.timeout.ms, 45 s by default).
            for name in (
                "partition.assignment.strategy",
                "session.timeout.ms",
                "heartbeat.interval.ms",
            ):
                conf.pop(name, None)
        else:
            self._rebalancer.eager = "cooperative" not in str(conf["partition.assignment.strategy"])
        consumer: Consumer = make_client(Consumer, kafka.client_config(**conf))
        return consumer

    def _make_producer(self) -> Producer:
        """The worker's producer; transactional (and initialised) in exactly-once mode."""
        conf: dict[str, Any] = {
            # Every in-sync replica has a batch before it counts as written (idempotence
            # implies it; said here because losing a broker must not lose a list).
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "partitioner": "murmur2_random",
            "error_cb": self._on_client_error,
        }
        if self.transactional_id is not None:
            conf |= {
                "transactional.id": self.transactional_id,
                # How long a killed worker's open transaction can hold readers back:
                # the broker aborts it after this (plus its cleanup interval).
                "transaction.timeout.ms": 5000,
                # After a commit the coordinator is busy for a few ms; 100 ms retries
                # would add 100 ms to the next batch.
                "retry.backoff.ms": 20,
            }
        # Defaults first, the user's client settings win.
        kafka = self.settings.kafka
        conf |= kafka.client
        self._transaction_timeout_s = float(conf.get("transaction.timeout.ms", 60000)) / 1000
        producer: Producer = make_client(Producer, kafka.client_config(**conf))
        if self.transactional_id is not None:
            self._init_transactions(producer)
        return producer

    def _init_transactions(self, producer: Producer) -> None:
        """Register the transactional id (aborting what a previous instance left open).

        A broker that is away is waited for (retriable errors, until the worker is
        stopped); anything else (not authorised, a timeout above the broker's
        maximum) is one clear error.
        """
        while True:
            try:
                producer.init_transactions(10)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or self._stop.is_set():
                    raise KafkaClientError(
                        f"cannot start exactly-once processing: {err.str()}", err.name()
                    ) from None
                self._warn_throttled(
                    "init", f"waiting for the transaction coordinator: {err.str()}"
                )

    def _shutdown(self) -> None:
        consumer, outputs = self._consumer, self._outputs
        if outputs is not None:
            outputs.producer.flush(10)
            outputs.close()
        if consumer is not None:
            try:
                if not self.settings.exactly_once:
                    self._commit_offsets(list(self.store.partitions().values()), asynchronous=False)
                consumer.close()  # runs on_revoke: stores close there
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close: %s", exc)
        self._restorer.close()
        self.store.close()
        self._consumer = self._outputs = None

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal Kafka client error: %s", err.str())
            return
        self._warn_throttled(err.name(), f"Kafka client: {err.str()}")

    def _warn_throttled(self, kind: str, text: str, exc_info: BaseException | None = None) -> None:
        # An unreachable broker reports every reconnect attempt of every client:
        # one line per error kind and window keeps the log readable.
        now = time.monotonic()
        last, repeats = self._client_errors.get(kind, (-_ERROR_WINDOW_S, 0))
        if now - last < _ERROR_WINDOW_S:
            self._client_errors[kind] = (last, repeats + 1)
            return
        self._client_errors[kind] = (now, 0)
        log.warning(
            "%s%s", text, f" (and {repeats} more like it)" if repeats else "", exc_info=exc_info
        )

    def _warn_model(self, kind: str, text: str, exc: BaseException | None) -> None:
        self._warn_throttled(kind, text, exc_info=exc)

    # --- one micro-batch ----------------------------------------------------------------

    def _run_batch(self) -> bool:
        """One micro-batch: poll -> decode -> step -> checkpoint; True when it committed."""
        w, m = self.settings.worker, self.metrics
        assert self._consumer is not None and self._outputs is not None
        assert self.model is not None
        self._restore_step()
        self._update_ready()
        owner = (self.settings.topics.events, 0) in self.store.partitions()
        self.driver.between_batches(owner, self._commit_records)
        t0 = time.perf_counter()
        cap = self._cap
        msgs = self._poll(cap, w.batch_max_ms / 1000.0)
        # Full: more is waiting (a backlog, or a load beyond the usual batches).
        self._cap = next_cap(cap, len(msgs), w.batch_max_events, w.batch_catch_up_events)
        m.batch_cap.set(self._cap)
        t1 = time.perf_counter()
        m.stage_seconds.labels("poll").observe(t1 - t0)
        if not msgs:
            if self._caught_up():
                self.health.progressed()  # nothing to do is not a stall
            self.driver.idle(self._commit_records)
            self._outputs.poll()
            if time.monotonic() - self._lag_at > _LAG_EVERY_S:
                self._update_lag()
            if time.monotonic() - self._placement_at > _PLACEMENT_EVERY_S:
                self.driver.placement.resize(self._events_partitions())
            return False
        checkpoint = self._checkpoint()
        m.batch_size.observe(len(msgs))
        refreshable = None if self._stop.is_set() else self._refreshable
        run = self.driver.run(self._group(msgs), self._refreshable(), checkpoint, refreshable)
        if run is None:
            return False
        try:
            self.driver.finish(run, checkpoint.commit, self.on_publish)
        except (BatchAborted, ProducerFenced) as exc:
            self.driver.abort(run)
            m.transactions.labels("aborted").inc()
            if isinstance(exc, ProducerFenced):
                self._renew_producer(exc)
                self._settle_from_changelog(checkpoint)
            else:
                self._rewind([batch for _, batch in run.batches])
                self._warn_throttled("abort", f"batch transaction aborted, reading it again: {exc}")
            # Aborts in a row (the broker is away): wait a little longer each time rather
            # than computing the same batch again and again.
            self._aborts += 1
            self._stop.wait(min(0.05 * 2**self._aborts, 2.0))
            return False
        self._aborts = 0
        self.health.progressed()
        if self.settings.exactly_once:
            m.transactions.labels("committed").inc()
        self._update_lag()
        return True

    def _refreshable(self) -> dict[tuple[str, int], StorePartition]:
        """The open partitions a refresh part may touch (not being restored)."""
        return {
            key: part
            for key, part in self.store.partitions().items()
            if not self._restorer.restoring(part.partition)
        }

    def _refresh(self) -> None:
        """A refresh part (:mod:`engine.refresh`) on its own, committed like a batch (when
        no event batch came to carry it)."""
        checkpoint = self._checkpoint()
        if not self.driver.stage_refresh(self._refreshable(), checkpoint):
            return
        try:
            checkpoint.commit()
        except (BatchAborted, ProducerFenced) as exc:
            checkpoint.discard()
            self.driver.refresher.aborted()
            if self.settings.exactly_once:
                self.metrics.transactions.labels("aborted").inc()
            if isinstance(exc, ProducerFenced):
                self._renew_producer(exc)
                self._settle_from_changelog(checkpoint)
            return
        if self.settings.exactly_once:
            self.metrics.transactions.labels("committed").inc()
        self.driver.refreshed(checkpoint, self.on_publish)

    def _events_partitions(self) -> int:
        self._placement_at = time.monotonic()
        n = partition_count(self.settings.kafka, self.settings.topics.events)
        if n is None:
            raise KafkaClientError(f"the events topic {self.settings.topics.events} is gone")
        return n

    def _checkpoint(self) -> KafkaCheckpoint:
        assert self._outputs is not None and self._consumer is not None
        topics = self.settings.output_topics()
        if self.settings.exactly_once:
            return ExactlyOnceCheckpoint(
                self._outputs, topics, self._consumer.consumer_group_metadata
            )
        return AtLeastOnceCheckpoint(self._outputs, topics, self._commit_next)

    def _restore_step(self) -> None:
        """Advance restores, resume the partitions they finish, rewrite recreated changelogs."""
        if self._restorer.active:
            assert self._consumer is not None
            applied = self._restorer.applied
            finished = self._restorer.step()
            if finished or self._restorer.applied > applied:
                self.health.progressed()
            for task in finished:
                self._rebalancer.restored(self._consumer, task)
                self._after_restore(task)
        while self._reseed:
            part = self._reseed.pop()
            if self.store.partitions().get((part.topic, part.partition)) is not part:
                continue  # revoked meanwhile: the next owner reseeds it
            checkpoint = self._checkpoint()
            checkpoint.reseed(part)
            try:
                checkpoint.commit()
            except (BatchAborted, ProducerFenced) as exc:
                self._reseed.append(part)
                if isinstance(exc, ProducerFenced):
                    self._renew_producer(exc)
                return
            log.warning(
                "%s: wrote %d state(s) to the changelog %s",
                part.name,
                part.user_count(),
                self.settings.changelog_topic,
            )

    def _settle_from_changelog(self, checkpoint: KafkaCheckpoint) -> None:
        """After a transaction whose outcome is unknown, let the changelog say what happened.

        A commit cut off by the loss of its coordinator's broker (a timeout, a stuck
        call, a fatal error, then the producer replaced) may have committed all the
        same: reading the batch again would publish its lists twice and count its
        events twice. The new producer's ``init_transactions`` has finished the old
        transaction one way or the other, so each partition the checkpoint touched is
        restored from its changelog (from the store's changelog offset on: the batch's
        records if it committed, nothing if not) and read on from the input offset
        the changelog holds, like a partition just assigned.
        """
        assert self._consumer is not None
        for part, _ in checkpoint.outcomes:
            key = (part.topic, part.partition)
            store = self.store.partitions().get(key)
            if store is None or self._restorer.restoring(part.partition):
                continue  # revoked meanwhile: its next owner restores it anyway
            self._consumer.pause([TopicPartition(*key)])
            task = self._restorer.begin(store)
            if task.done:  # else _restore_step resumes it when done
                self._rebalancer.restored(self._consumer, task)
                self._after_restore(task)
        log.warning(
            "a transaction's outcome was unknown; %d partition(s) settled from the changelog",
            len(checkpoint.outcomes),
        )

    def _update_ready(self) -> None:
        """Ready once the group assigned this worker its partitions and none is restoring."""
        if not self.assigned.is_set():
            self.health.set_ready(False, "joining the consumer group")
        elif self._restorer.active:
            left = len(self._restorer.tasks)
            self.health.set_ready(False, f"restoring {left} partition(s) from the changelog")
        else:
            self.health.set_ready(True, f"consuming {len(self.store.partitions())} partition(s)")

    def _caught_up(self) -> bool:
        """Every assigned partition read to its end, as far as the consumer knows.

        From the consumer's position (past transaction markers, unlike the stored
        offset) and the high watermark of its last fetch (no broker call). Before a
        partition's first message since its assignment the position is unknown, and
        the stored offset stands in for it, one behind the end allowed: a transaction
        marker can follow the last message (events forwarded in a transaction). A
        partition being restored is not caught up: the restore's own progress counts.
        """
        assert self._consumer is not None
        parts = self.store.partitions()
        if not parts:
            return True
        if self._restorer.active:
            return False
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in parts])
            for tp in positions:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high is None or high < 0:
                    return False
                if tp.offset >= 0:
                    if tp.offset < high:
                        return False
                    continue
                last = parts[(tp.topic, tp.partition)].last_offset()
                if high - (0 if last is None else last + 1) > 1:
                    return False
        except KafkaException:
            return False
        return True

    def _after_restore(self, task: RestoreTask) -> None:
        if task.reseed:
            self._reseed.append(task.part)

    def _rewind(self, batches: list[PartitionBatch]) -> None:
        """Read an aborted batch again: nothing of it was stored."""
        assert self._consumer is not None
        for batch in batches:
            try:
                self._consumer.seek(
                    TopicPartition(batch.topic, batch.partition, batch.first_offset)
                )
            except KafkaException as exc:  # revoked meanwhile: the next owner reads it
                log.debug("rewind %s: %s", batch.name, exc)

    def _renew_producer(self, exc: ProducerFenced) -> None:
        """A fenced or stuck transactional producer is replaced by a fresh one."""
        now = time.monotonic()
        # A transaction open longer than its timeout was aborted by its coordinator
        # (a leader moved, a broker was lost), which it reports as a fence: not
        # another worker.
        if exc.by_another and exc.open_s < self._transaction_timeout_s:
            self._fenced_at = [t for t in self._fenced_at if now - t < 60.0] + [now]
            if len(self._fenced_at) >= 3:
                raise KafkaClientError(
                    f"the transactional producer {self.transactional_id} was fenced 3 times "
                    f"in a minute ({exc}): is another worker running with a copy of this "
                    "state dir?"
                )
        log.warning("transactional producer unusable (%s); starting a new one", exc)
        if self._outputs is not None:
            self._outputs.close()
        self._outputs = Outputs(self._make_producer(), self._stop)

    def _commit_next(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit the group offsets of an at-least-once batch (informational, asynchronous)."""
        if self._consumer is None or not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            log.warning("offset commit: %s", exc.args[0].str() if exc.args else exc)

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

    def _group(self, msgs: list[Message]) -> dict[tuple[str, int], list[Source]]:
        """The polled messages per partition, as plain data (client errors handled here)."""
        by_part: dict[tuple[str, int], list[Source]] = defaultdict(list)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaClientError(f"consumer failed: {err.str()}", err.name())
                self._warn_throttled(f"consume {err.name()}", f"consume: {err.str()}")
                continue
            by_part[_where(msg)].append(_source(msg))
        return by_part

    def _commit_offsets(self, parts: list[StorePartition], asynchronous: bool) -> None:
        if self._consumer is not None:
            commit_offsets(self._consumer, parts, asynchronous)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        self._lag_at = time.monotonic()
        for (topic, partition), part in self.store.partitions().items():
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
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
        location = self.store.location
        return {
            "group": w.group,
            "events": t.events,
            "recommendations": t.recommendations,
            "dead_letter": t.dead_letter,
            "state": str(location) if location is not None else "memory",
            "guarantee": self.settings.worker.processing_guarantee,
            "user_ids": "pseudonymised" if self.driver.ids.pseudonymised else "plain",
            "changelog": self.settings.changelog_topic,
            "model_updates": self.settings.model_updates_topic if self.driver.sync else "off",
            "pid": os.getpid(),
            "model": self.model.version if self.model is not None else "?",
            "metrics": self.metrics_url or "off",
        }


def _where(msg: Message) -> tuple[str, int]:
    """(topic, partition) of a consumed message (never unset on one)."""
    topic, partition = msg.topic(), msg.partition()
    if topic is None or partition is None:
        raise KafkaClientError("the consumer returned a message without topic or partition")
    return topic, partition


def _source(msg: Message) -> Source:
    """A confluent-kafka message as plain data."""
    ts_type, kafka_ts = msg.timestamp()
    topic, partition = _where(msg)
    offset = msg.offset()
    if offset is None:
        raise KafkaClientError("the consumer returned a message without an offset")
    # Header values are bytes (or None) as read; the client types them more widely.
    headers = cast(list[tuple[str, bytes]], msg.headers() or [])
    return Source(
        topic,
        partition,
        offset,
        msg.key(),
        msg.value(),
        None if ts_type == TIMESTAMP_NOT_AVAILABLE else kafka_ts,
        tuple(headers),
    )
