"""What every runtime does with the messages it polled, whichever Kafka client polled them.

A runtime turns its client's messages into :class:`~stream.batch.Source`
records per input partition and hands them here: :meth:`Pipeline.decode`
validates them (bad ones go to the checkpoint as dead letters, events of
another partition are forwarded there), :meth:`Pipeline.step` runs the guarded
pure step per partition and gives the checkpoint its outputs, and, once the
checkpoint committed, :meth:`Pipeline.account` counts what it did. The
model's gradient step on the batch is not on the lists' path: the runtime
commits through :meth:`Pipeline.learn_alongside`, which takes it on another
thread while the commit waits for the broker. Item
metadata read from the items topic (:class:`~stream.items.ItemsFeed`, started
by the runtime) reaches the model at the start of a step, on the model's
thread; the model encodes it on a thread of its own. Between batches,
:meth:`Pipeline.stage_refresh` stages a refresh pass of idle users' stale
lists (:mod:`stream.refresh`) into a checkpoint of its own, which the runtime
commits like a batch, then :meth:`Pipeline.refreshed` counts it. The native
confluent-kafka runtime (:mod:`stream.runtime`) and the Faust runtime
(:mod:`stream.faust_runtime`) share all of it.

With a :class:`~stream.modelsync.ModelSync` (:meth:`Pipeline.share_model`) the
pipeline also keeps the model one model across the group: each batch's model
deltas go into the batch's checkpoint (exactly once with the native runtime's
transactions, at least once with Faust), and between batches
:meth:`Pipeline.between_batches` adds the other workers' deltas and publishes
snapshots.
"""

from __future__ import annotations

import atexit
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from core.types import Recommendation
from model.step import RankingModel
from state.store import StorePartition
from stream.batch import PartitionBatch, Source
from stream.checkpoint import Checkpoint
from stream.config import Settings
from stream.events import NEWCOMERS_ID, EventValidator, Rejected, decode_event
from stream.isolation import ModelGuard
from stream.items import ItemsFeed
from stream.metrics import WorkerMetrics
from stream.modelsync import ModelSync, Publish
from stream.placement import Placement
from stream.privacy import UserIds
from stream.refresh import Refresher
from stream.snapshots import ModelSnapshots
from stream.stats import WorkerStats

__all__ = ["Pipeline", "settle_heap"]

T = TypeVar("T")

log = logging.getLogger("interest_stream.worker")


_settled = False  # the heap was settled once: thawed at exit (see settle_heap)
# Committed batches after which the heap is settled a second time.
SETTLE_AFTER_BATCHES = 200


class _Learner:
    """One daemon thread that takes the model's gradient steps, one at a time.

    The same thread every batch: torch keeps per-thread state (autograd, its
    thread pools) that a new thread per batch would set up again each time.
    """

    def __init__(self) -> None:
        # (job, set when it returned); a None job ends the thread
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None] | None, threading.Event]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> threading.Event:
        """Run ``job`` on the learner thread; the event is set once it returned."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="interest-learn", daemon=True)
            self._thread.start()
        done = threading.Event()
        self._jobs.put((job, done))
        return done

    def close(self) -> None:
        """End the thread once the jobs before are done (a later submit starts another)."""
        if self._thread is not None:
            self._jobs.put((None, threading.Event()))
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            job, done = self._jobs.get()
            if job is None:
                return
            try:
                job()  # catches what it raises itself (see Pipeline.learn_alongside)
            finally:
                done.set()


def settle_heap() -> None:
    """Leave what start-up built out of the cyclic garbage collector's full passes.

    Modules, the model and its tables are ~400,000 tracked objects that live as
    long as the process; a full collection walked them all, ~100 ms on the 2-core
    box, several times a minute under load (the worst event-to-list latencies).
    Called when a worker starts, and again after its first
    ``SETTLE_AFTER_BATCHES`` batches (what they built to stay: modules imported
    and kernels compiled at first use, grown tables; ~50,000 objects, 12-20 ms a
    full pass every few seconds at 2,000 events/s, ~1 ms after). Each worker a
    process starts settles its own: a second worker with a model of another
    kind left ~140,000 objects to every full pass and drained a backlog ~25%
    slower. What is frozen is still freed when its last reference goes, only
    cycles among it are not (until exit, which thaws it so that extension
    modules see their objects collected).
    """
    global _settled
    if not _settled:
        atexit.register(gc.unfreeze)
        _settled = True
    gc.collect()
    gc.freeze()


class Pipeline:
    """Decode, step and accounting of one worker (the model is set before the first batch)."""

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics,
        stats: WorkerStats,
        warn_model: Callable[[str, str, BaseException | None], None],
    ) -> None:
        self.metrics = metrics
        self.stats = stats
        self.validator = EventValidator(
            max_payload_bytes=settings.worker.max_payload_bytes,
            max_id_bytes=settings.worker.max_id_bytes,
        )
        self.placement = Placement(settings.topics.partitions)
        self.ids = UserIds.from_config(settings.privacy)
        self.guard = ModelGuard(settings.worker.k, warn_model, log_ids=self.ids.log_ids)
        self.model: RankingModel | None = None
        self.sync: ModelSync | None = None  # one model across the group (share_model)
        self.items: ItemsFeed | None = None
        w = settings.worker
        self.refresher = Refresher(
            w.refresh_policy(),
            w.refresh_budget_percent,
            w.k,
            metrics,
            warn_model,
            log_ids=self.ids.log_ids,
        )
        self._events_topic = settings.topics.events
        self._last_generated = 0
        self._batches = 0  # committed batches (see settle_heap)
        self._polled = False  # the model deltas that arrived were added alongside a commit
        self._learner = _Learner()

    def warm_up(self) -> None:
        """Let the model load what it loads at first use now, before the first batch
        (see ``InterestModel.warm_up``); a model that fails here is left to its first batch."""
        warm = getattr(self.model, "warm_up", None)
        if warm is None:
            return
        try:
            warm()
        except Exception:
            log.warning("the model's warm-up failed; its first batch will be slower", exc_info=True)

    def share_model(self, sync: ModelSync, snapshots: ModelSnapshots | None) -> None:
        """Share the model with the group's other workers through ``sync``, when it can.

        The model may be replaced (by the group's newer snapshot on the model
        topic): read :attr:`model` again afterwards. Local snapshots then say
        which shared updates they include.
        """
        assert self.model is not None
        local = snapshots.extra if snapshots is not None and snapshots.loaded else None
        self.model = sync.start(self.model, local)
        if not sync.active:
            sync.close()
            return
        self.sync = sync
        book = sync.book
        self.refresher.model_clock = lambda: book.events  # every worker's events
        if snapshots is not None:
            snapshots.describe = sync.describe

    def between_batches(self, owner: bool, publish: Publish) -> None:
        """Add the deltas that arrived (unless the last commit did, see
        :meth:`learn_alongside`); as the owner of the events topic's partition 0,
        publish a model snapshot when due (``publish`` sends records on their own)."""
        polled, self._polled = self._polled, False
        if self.sync is not None:
            self.sync.between_batches(self.model, owner, publish, poll=not polled)

    def idle(self, publish: Publish) -> None:
        """No events this poll: still share what the model learnt, on the cadence, and
        count the worker's own last update (held back while batches follow each other)."""
        if self.sync is not None:
            self.sync.share(self.model, publish)

    def aborted(self) -> None:
        """The checkpoint was discarded: its model deltas were not shared."""
        self.guard.drop_learning()
        if self.sync is not None:
            self.sync.aborted()

    def close(self) -> None:
        """End the learner thread (the runtime stops; nothing learns after this)."""
        self._learner.close()

    def stop_sharing(self, publish: Publish | None) -> None:
        """On a stop: share what is left (``publish``: a clean stop) and apply what
        committed, so the last local snapshot includes it; then close."""
        sync, self.sync = self.sync, None
        if sync is None:
            return
        self.refresher.model_clock = None
        try:
            if publish is not None:
                sync.share(self.model, publish, now=True)
                sync.drain(self.model)
        finally:
            sync.close()

    def generated_at(self) -> int:
        """A ``generated_at`` for the lists of a batch or pass, later than every earlier one."""
        self._last_generated = max(int(time.time() * 1000), self._last_generated + 1)
        return self._last_generated

    def decode(
        self, part: StorePartition, sources: Iterable[Source], checkpoint: Checkpoint
    ) -> PartitionBatch | None:
        """The valid events of ``part`` among ``sources`` (in offset order); None if none new.

        Offsets only move forward: a message at or below the partition's stored
        offset is already in state (or was handed out twice after a re-seek).
        """
        part.claim_ids(self.ids.scheme)  # never mix plain and pseudonymised ids
        floor = part.last_offset()
        batch: PartitionBatch | None = None
        for source in sources:
            offset = source.offset
            if floor is not None and offset <= floor:
                continue
            floor = offset
            if batch is None:
                batch = PartitionBatch(part.topic, part.partition, offset, offset)
            batch.last_offset = offset
            batch.messages += 1
            decoded = decode_event(source.key, source.value, source.timestamp_ms, self.validator)
            if isinstance(decoded, Rejected):
                checkpoint.dead_letter(source, decoded)
                continue
            home = self.placement.of(source.key or b"")
            if home != part.partition:
                checkpoint.forward(source, home)
                batch.forwarded += 1
                continue
            batch.admit(decoded, source, self.ids)
        if batch is not None:
            checkpoint.consumed(batch)
        return batch

    def step(
        self, batches: list[tuple[StorePartition, PartitionBatch]], checkpoint: Checkpoint
    ) -> None:
        """The guarded pure step on each partition's batch; the outputs go to the checkpoint."""
        assert self.model is not None
        self.give_items()
        generated_at = self.generated_at()
        stepped = self.guard.step_many(batches, self.model)
        outcomes = [(part, out) for (part, _), out in zip(batches, stepped, strict=True)]
        self.metrics.observe_model(self.model, sum(out.learnt for _, out in outcomes))
        for part, outcome in outcomes:
            checkpoint.add(part, outcome, generated_at)
        if self.sync is not None:  # the batch's model deltas commit with its outputs
            for topic, key, value, partition, headers in self.sync.records(self.model):
                checkpoint.add_record(topic, value, key, partition, headers)

    def learn_alongside(self, commit: Callable[[], T]) -> T:
        """``commit()`` (the batch's checkpoint) while the model finishes learning from
        the batch on another thread; returns when both are done.

        The lists were ranked before the gradient step, so they go out without
        waiting for it; the commit mostly waits on the broker, which leaves the
        interpreter to the step. After the step, the same thread adds the model
        deltas that arrived (what :meth:`between_batches` would do before the next
        batch, off the runtime's path, with the same own count records). Nothing
        else touches the model meanwhile.
        """
        pending, sync = self.guard.learning_pending, self.sync
        if not pending and sync is None:
            return commit()
        errors: list[BaseException] = []

        def learn() -> None:
            if pending:
                t0 = time.perf_counter()
                try:
                    self.guard.finish_learning()
                except BaseException as exc:  # raised on the runtime's thread below
                    errors.append(exc)
                self.metrics.stage_seconds.labels("learn").observe(time.perf_counter() - t0)
            if sync is not None and not errors:
                try:
                    sync.poll(self.model, committing=True)
                    self._polled = True
                except Exception:  # left unset: between_batches polls again, and raises
                    pass

        done = self._learner.submit(learn)
        try:
            return commit()
        finally:
            done.wait()
            if errors:
                raise errors[0]

    def give_items(self) -> int:
        """Hand the item metadata read since the last call to the model; returns how many."""
        add = getattr(self.model, "add_item_metadata", None)
        if self.items is None or add is None:
            return 0
        records = self.items.drain()
        if records:
            try:
                add(records)
            except Exception:  # metadata is an extra: a model that refuses it still serves
                log.exception("the model did not take %d item record(s)", len(records))
        return len(records)

    def account(
        self,
        checkpoint: Checkpoint,
        on_publish: Callable[[list[Recommendation]], Any] | None = None,
    ) -> None:
        """Count what the committed ``checkpoint`` did (metrics are the one place of counts)."""
        if self.sync is not None:  # the model deltas in it were delivered
            self.sync.committed(self.model)
        m = self.metrics
        m.messages_consumed.inc(checkpoint.messages)
        m.events_forwarded.inc(checkpoint.forwarded)
        self.placement.forwarded(checkpoint.forwarded)
        for kind, n in checkpoint.event_types.items():
            m.events_consumed.labels(kind).inc(n)
        for _, rejected in checkpoint.dead_letters:
            m.dead_letters.labels(rejected.reason).inc()
        delivered_ms = checkpoint.delivered_ms
        recs: list[Recommendation] = []
        m.events_erased.inc(checkpoint.events_erased)
        for part, out in checkpoint.outcomes:
            if out.refresh:  # a refresh part in the batch's checkpoint: see refreshed()
                continue
            for user, had in out.erased:
                m.users_erased.labels("true" if had else "false").inc()
                if self.ids.log_ids:
                    log.info("%s: erased user %s (had a state: %s)", part.name, user, had)
            if out.erased and not self.ids.log_ids:
                log.info("%s: erased %d user(s)", part.name, len(out.erased))
            m.events_applied.inc(len(out.applied))
            m.lists_published.inc(len(out.recommendations))
            m.events_scored.inc(out.scored)
            m.list_hits.inc(out.hits)
            lat = [
                (delivered_ms - src.timestamp_ms) / 1000.0
                for src in out.applied
                if src.timestamp_ms
            ]
            for x in lat:
                m.latency.observe(x)
            self.stats.add_latencies(lat)
            m.users_in_state.labels(str(part.partition)).set(part.user_count())
            recs.extend(out.recommendations)
        m.batches.inc()
        self._batches += 1
        if self._batches == SETTLE_AFTER_BATCHES:
            settle_heap()
        self.refresher.after_batch(checkpoint)
        if on_publish is not None and recs:
            on_publish(recs)

    def stage_refresh(
        self,
        parts: dict[tuple[str, int], StorePartition],
        checkpoint: Checkpoint,
        batches: list[tuple[StorePartition, PartitionBatch]] | None = None,
    ) -> int:
        """Stage a refresh part over ``parts`` (open, not restoring) into ``checkpoint``.

        ``batches``: the event batches whose outputs ``checkpoint`` holds already
        (their users are left out of the part). Returns the number of lists
        staged; when it is not 0 the runtime commits ``checkpoint`` and calls
        :meth:`refreshed`, or ``refresher.aborted()``.
        """
        assert self.model is not None
        home = (self._events_topic, self.placement.of(NEWCOMERS_ID.encode("utf-8")))
        exclude = (
            None
            if batches is None
            else {
                user
                for _, batch in batches
                for user in [*(ev.user_id for ev in batch.events), *batch.erased]
            }
        )
        return self.refresher.stage(
            parts, self.model, checkpoint, self.generated_at(), home, exclude
        )

    def refreshed(
        self,
        checkpoint: Checkpoint,
        on_publish: Callable[[list[Recommendation]], Any] | None = None,
    ) -> None:
        """Count the committed refresh pass of ``checkpoint``."""
        recs = self.refresher.committed(checkpoint.delivered_ms)
        if on_publish is not None and recs:
            on_publish(recs)
