"""The faust-streaming runtime: Faust consumes, the shared batch driver and checkpoint do the rest.

``interest-stream worker --runtime faust`` runs a Faust app (aiokafka underneath)
whose one agent gathers micro-batches from the events topic with
``stream.take_events(batch_max_events, within=batch_max_ms)`` and hands each to
the same code as the native runtime: :class:`~engine.driver.BatchDriver` decodes
(dead letters, forwarding of mis-partitioned events), runs the guarded pure
step, and an :class:`~stream.runtime.checkpoint.AtLeastOnceCheckpoint` publishes lists,
dead letters and changelog records, flushes, then writes the partition stores
(the same per-partition rocksdict databases, opened when Faust assigns a
partition, restored from the changelog first, closed when it revokes it).
Faust acknowledges the batch's events only after that, and commits their
offsets itself. Refresh passes of idle users' stale lists (:mod:`engine.refresh`)
run on a Faust timer (paced by the refresher), on the same thread as the
batches, each with an at-least-once checkpoint of its own.

At-least-once, and it says so: Faust's own exactly-once mode has open duplicate
and fencing issues (faust-streaming #177, #323, #517), and ``stream.take`` with
table writes fails (#497), so this runtime uses no Faust tables and no Faust
transactions. After a crash a batch may be published again; state stays exact
(each store keeps its last applied offset, as in the native runtime).

The model is shared with the group's other workers as in the native runtime
(:mod:`stream.runtime.modelsync`): each batch's checkpoint publishes its model deltas
with its lists, and a Faust timer adds the other workers' deltas while no
events arrive. At least once here too: a delta published just before a crash
whose batch is then replayed is counted twice.

To add interest updates to an existing Faust app::

    from stream.config import load_settings
    from stream.runtime.faust_runtime import FaustRuntime

    runtime = FaustRuntime(load_settings(), build_model=my_model_factory)
    runtime.attach(app)          # app: your faust.App, same Kafka cluster
    # start the app as usual; runtime.close() when it stops

Producers of both runtimes place a user on the same partition (murmur2): the
lists go out through the same confluent-kafka producer settings, and Faust's
own producer (aiokafka) partitions keys with murmur2 too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from core.errors import ConfigError
from engine.batch import Source
from engine.driver import BatchDriver
from engine.learning import settle_heap
from engine.metrics import MetricsServer, WorkerMetrics
from engine.stats import WorkerStats
from model.step import RankingModel
from state.store import RocksDBStore, Store
from stream.config import Settings
from stream.kafka.clients import make_client
from stream.kafka.topics import partition_count
from stream.runtime.checkpoint import AtLeastOnceCheckpoint, Outputs
from stream.runtime.identity import WorkerIdentity
from stream.runtime.items import ItemsFeed
from stream.runtime.modelsync import ModelSync, Record
from stream.runtime.preflight import preflight, state_root
from stream.runtime.restore import Restorer
from stream.runtime.snapshots import ModelSnapshots, SnapshotPolicy

__all__ = ["FaustRuntime"]

log = logging.getLogger("interest_stream.worker")

_SYNC_TICK_S = 1.0  # how often an idle worker adds the other workers' model deltas


class FaustRuntime:
    """One Faust agent on the events topic, with the native runtime's batch driver and stores."""

    guarantee = "at-least-once"

    def __init__(
        self,
        settings: Settings,
        model: RankingModel | None = None,
        *,
        build_model: Callable[[], RankingModel] | None = None,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
    ) -> None:
        if (model is None) == (build_model is None):
            raise ValueError("pass either a model or build_model")
        self.settings = settings
        self.model = model
        self._build_model = build_model
        self.metrics = WorkerMetrics.create(registry)
        self.metrics.batch_cap.set(settings.worker.batch_max_events)  # fixed: no catching up
        self.stats = WorkerStats(self.metrics)
        self.store: Store = store if store is not None else RocksDBStore(state_root(settings))
        location = self.store.location
        self.snapshots = (
            ModelSnapshots(location / "model", SnapshotPolicy.from_config(settings.worker))
            if location is not None
            else None
        )
        self.driver = BatchDriver(
            settings.driver_config(), self.metrics, self.stats, self._warn_model
        )
        self.on_publish: Callable[[list[Any]], None] | None = None
        self.metrics_url: str | None = None
        self._restorer = Restorer(settings, self.metrics)
        self._outputs: Outputs | None = None
        self._stopping = threading.Event()
        self._busy = False  # a batch ran since the last sync tick
        # The step runs on this one thread: Faust's event loop keeps heartbeating.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="interest-step")
        self._server: MetricsServer | None = None
        self._identity = WorkerIdentity(location)
        self._prepared = False

    # --- set up -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Checks, model, producer and metrics endpoint (``attach`` calls it)."""
        if self._prepared:
            return
        preflight(self.settings, self.store.location)
        n = partition_count(self.settings.kafka, self.settings.topics.events)
        self.driver.placement.resize(n or self.settings.topics.partitions)
        if self.model is None:
            assert self._build_model is not None
            self.model = self._build_model()
        if self.snapshots is not None:
            self.model = self.snapshots.restore(self.model)
        self.driver.model = self.model
        if self.settings.model_sharing:
            sync = ModelSync(self.settings, self.metrics, self._identity.acquire())
            snaps = self.snapshots
            local = snaps.extra if snaps is not None and snaps.loaded else None
            if self.driver.share_model(sync, local) and snaps is not None:
                snaps.describe = sync.describe  # local snapshots say what they include
            self.model = self.driver.model
        log.info("model %s", self.driver.caps.describe())
        self.metrics.observe_model(self.driver.caps)
        self.driver.items = ItemsFeed(self.settings).start()
        kafka = self.settings.kafka
        producer = make_client(
            Producer,
            kafka.client_config(
                **(
                    {
                        "acks": "all",  # a write survives the loss of a broker
                        "enable.idempotence": True,
                        "linger.ms": 2,
                        "partitioner": "murmur2_random",
                    }
                    | dict(kafka.client)
                )
            ),
        )
        self._outputs = Outputs(producer, self._stopping)
        self._server = MetricsServer(self.metrics.registry, self.settings.worker.metrics_port)
        self.metrics_url = self._server.start().url
        self.stats.started()
        self.driver.warm_up()
        settle_heap()
        self._prepared = True

    def attach(self, app: Any) -> Any:
        """Add the interest agent and the partition handlers to ``app`` (a ``faust.App``)."""
        self.prepare()
        t, w = self.settings.topics, self.settings.worker
        topic = app.topic(
            t.events, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        within = w.batch_max_ms / 1000.0

        async def interest(stream: Any) -> None:
            loop = asyncio.get_running_loop()
            async for events in stream.take_events(w.batch_max_events, within=within):
                messages = [event.message for event in events]
                await loop.run_in_executor(self._executor, self.process, messages)

        agent = app.agent(topic, name="interest-stream", concurrency=1)(interest)

        async def model_sync() -> None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._sync_tick)

        app.timer(_SYNC_TICK_S, name="interest-model-sync")(model_sync)
        if self.driver.refresher.enabled:

            async def refresh() -> None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self.refresh)

            # Often enough for the parts of a pass (Refresher.due paces them).
            tick = max(0.05, min(0.1, w.refresh_interval_ms / 1000.0))
            app.timer(tick, name="interest-refresh")(refresh)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        return agent

    # --- partitions ---------------------------------------------------------------------

    async def _on_assigned(self, sender: Any, assigned: Iterable[Any], **_: Any) -> None:
        mine = [tp for tp in assigned if tp.topic == self.settings.topics.events]
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open, mine)

    async def _on_revoked(self, sender: Any, revoked: Iterable[Any], **_: Any) -> None:
        mine = [tp for tp in revoked if tp.topic == self.settings.topics.events]
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close, mine)

    def _open(self, tps: Sequence[Any]) -> None:
        """Open each partition's store and restore it from the changelog before any event."""
        reseed = []
        for tp in tps:
            part = self.store.open_partition(tp.topic, tp.partition)
            task = self._restorer.begin(part)
            while self._restorer.restoring(part.partition):
                self._restorer.step()
            if task.reseed:
                reseed.append(part)
            self.metrics.users_in_state.labels(str(tp.partition)).set(part.user_count())
        for part in reseed:
            checkpoint = self._checkpoint()
            checkpoint.reseed(part)
            checkpoint.commit()
        log.info("assigned %s", [f"{tp.topic}[{tp.partition}]" for tp in tps])

    def _close(self, tps: Sequence[Any]) -> None:
        for tp in tps:
            self._restorer.cancel(tp.partition)
            self.store.close_partition(tp.topic, tp.partition)
            self.metrics.forget_partition(tp.topic, tp.partition)
        log.info("released %s", [f"{tp.topic}[{tp.partition}]" for tp in tps])

    # --- one micro-batch ----------------------------------------------------------------

    def _checkpoint(self) -> AtLeastOnceCheckpoint:
        assert self._outputs is not None
        # Faust commits the offsets of the events it has acknowledged, after this.
        return AtLeastOnceCheckpoint(
            self._outputs, self.settings.output_topics(), lambda offsets: None
        )

    def _publish(self, records: list[Record]) -> bool:
        """Publish model records on their own (flushed: at least once)."""
        checkpoint = self._checkpoint()
        for topic, key, value, partition, headers in records:
            checkpoint.add_record(topic, value, key, partition, headers)
        try:
            checkpoint.commit()
        except Exception as exc:  # the broker away: the deltas go with a later batch
            log.warning("model records not published: %s", exc)
            return False
        return True

    def _owner(self) -> bool:
        """Whether this worker holds the events topic's partition 0 (it publishes snapshots)."""
        return (self.settings.topics.events, 0) in self.store.partitions()

    def _sync_tick(self) -> None:
        """On the step thread, every tick: add deltas; with no batch since the last tick
        (idle, as an empty poll of the native runtime), share on the cadence."""
        busy, self._busy = self._busy, False
        if self.driver.sync is not None and not self._stopping.is_set():
            self.driver.between_batches(self._owner(), self._publish)
            if not busy:
                self.driver.idle(self._publish)

    def process(self, messages: Sequence[Any]) -> None:
        """One micro-batch of Faust messages: decode, step, checkpoint, count."""
        self._busy = True
        self.driver.between_batches(self._owner(), self._publish)
        by_part: dict[tuple[str, int], list[Source]] = defaultdict(list)
        for msg in messages:
            by_part[(msg.topic, msg.partition)].append(_source(msg))
        for sources in by_part.values():
            sources.sort(key=lambda s: s.offset)
        checkpoint = self._checkpoint()
        # Partitions revoked meanwhile are not open: Faust hands those to the next owner.
        run = self.driver.run(by_part, self.store.partitions(), checkpoint)
        if run is None:
            return
        self.metrics.batch_size.observe(len(messages))
        self.driver.finish(run, checkpoint.commit, self.on_publish)
        if self.snapshots is not None:
            self.snapshots.after_batch(self.model, True)

    def refresh(self) -> None:
        """A refresh pass when one is due, committed like a batch (at-least-once)."""
        if self.model is None or self._stopping.is_set() or not self.driver.refresher.due():
            return
        checkpoint = self._checkpoint()
        if not self.driver.stage_refresh(dict(self.store.partitions()), checkpoint):
            return
        try:
            checkpoint.commit()
        except BaseException:
            checkpoint.discard()
            self.driver.refresher.aborted()
            raise
        self.driver.refreshed(checkpoint, self.on_publish)

    def _warn_model(self, kind: str, text: str, exc: BaseException | None) -> None:
        log.warning("%s", text, exc_info=exc)

    # --- running on its own ---------------------------------------------------------------

    def app(self) -> Any:
        """A Faust app of its own for this worker (the consumer group is the worker group)."""
        import faust

        bootstrap = self.settings.kafka.bootstrap_servers
        if not bootstrap:
            raise ConfigError("no Kafka bootstrap servers: pass --bootstrap-servers")
        servers = [f"kafka://{b.strip()}" for b in bootstrap.split(",") if b.strip()]
        return faust.App(
            self.settings.worker.group,
            broker=servers,
            store="memory://",
            # Faust keeps its own table files here; beside our state, not in the cwd.
            datadir=str(self.settings.worker.state_dir / "faust"),
            web_enabled=False,
            topic_disable_leader=True,
            topic_partitions=self.settings.topics.partitions,
            consumer_auto_offset_reset="earliest",
            broker_commit_every=1000,
            broker_commit_interval=1.0,
        )

    def run(self) -> WorkerStats:
        """Run a Faust worker until SIGINT or SIGTERM; returns the final stats."""
        import faust

        app = self.app()
        self.attach(app)
        # Faust, mode and aiokafka report start-up retries (a coordinator not ready yet)
        # as errors; the worker's own log says what matters.
        if not log.isEnabledFor(logging.INFO):
            for name in ("faust", "mode", "aiokafka"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
        worker.spinner = None  # no terminal progress spinner in a service's log
        try:
            worker.execute_from_commandline()
        except SystemExit:
            pass
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        """Finish the batch in hand, share what the model learnt, save it, close all."""
        if self._prepared and self.driver.sync is not None:
            self._executor.submit(self.driver.stop_sharing, self._publish).result()
        self._stopping.set()
        self._executor.shutdown(wait=True)
        self.driver.close()
        if isinstance(self.driver.items, ItemsFeed):
            self.driver.items.close()
        if self._outputs is not None:
            self._outputs.producer.flush(10)
        if self.snapshots is not None and self.model is not None:
            self.snapshots.close(self.model, True)
        self._restorer.close()
        self.store.close()
        if self._server is not None:
            self._server.stop()
        self._identity.release()
        self.stats.finished()

    def describe(self) -> dict[str, Any]:
        t, w = self.settings.topics, self.settings.worker
        location = self.store.location
        return {
            "runtime": "faust",
            "guarantee": self.guarantee,
            "group": w.group,
            "events": t.events,
            "recommendations": t.recommendations,
            "dead_letter": t.dead_letter,
            "state": str(location) if location is not None else "memory",
            "model": self.model.version if self.model is not None else "?",
            "model_updates": self.settings.model_updates_topic if self.driver.sync else "off",
            "metrics": self.metrics_url or "off",
        }


def _source(msg: Any) -> Source:
    """A Faust (aiokafka) message as plain data; Faust timestamps are seconds."""
    headers = msg.headers
    if isinstance(headers, dict):
        headers = list(headers.items())
    ts = msg.timestamp
    return Source(
        msg.topic,
        msg.partition,
        msg.offset,
        msg.key,
        msg.value,
        int(ts * 1000) if ts else None,
        tuple(headers or ()),
    )
