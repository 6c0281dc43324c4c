"""One micro-batch, whatever brought it: the batch driver every runtime and replay drives.

The driver owns the model and runs a micro-batch from the messages a runtime
polled (or the events a replay hands it) into a checkpoint
(:class:`engine.checkpoint.Checkpoint`); it knows no transport. A runtime
(:mod:`stream.runtime.native`, :mod:`stream.runtime.faust_runtime`) polls,
assigns and revokes partitions and commits checkpoints; the evaluator's
replays (:mod:`engine.replay`) commit them in memory. For one batch:

1. :meth:`BatchDriver.decode` turns each partition's
   :class:`~engine.batch.Source` records into a
   :class:`~engine.batch.PartitionBatch` (bad messages go to the checkpoint as
   dead letters, events of another partition are forwarded there);
2. :meth:`BatchDriver.step` runs the guarded pure step (:mod:`engine.isolation`)
   over every partition's batch in one model call and stages the outputs, and
   the model's shared deltas, in the checkpoint;
3. :meth:`BatchDriver.stage_refresh` may add a part of a refresh pass of idle
   users' stale lists (:mod:`engine.refresh`) to the same checkpoint;
4. :meth:`BatchDriver.commit` commits it through the runtime's call while the
   model takes its gradient step on another thread, then counts what it did
   (:meth:`BatchDriver.account`, metrics are the one place of counts).

:meth:`BatchDriver.run` and :meth:`BatchDriver.finish` chain them for a
runtime. What a model can do is read once, when it is set
(:func:`model.capabilities.capabilities`), and logged by the runtime.

Item metadata (an :class:`ItemSource`) reaches the model at the start of a
step, on the model's thread. With a :class:`ModelShare` (the worker's
:class:`~stream.runtime.modelsync.ModelSync`) the model stays one model across
the group: each batch's deltas go into its checkpoint, and between batches
:meth:`BatchDriver.between_batches` adds the other workers'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from core.types import Recommendation
from engine.batch import PartitionBatch, Source, StepOutcome
from engine.checkpoint import Checkpoint
from engine.config import DriverConfig
from engine.events import NEWCOMERS_ID, EventValidator, Rejected, decode_event
from engine.isolation import ModelGuard, StepMode
from engine.learning import SETTLE_AFTER_BATCHES, Learner, settle_heap
from engine.metrics import WorkerMetrics
from engine.placement import Placement
from engine.privacy import UserIds
from engine.refresh import Refresher
from engine.stats import WorkerStats
from model.capabilities import Capabilities, RankingModel, capabilities
from model.items import ItemMeta
from state.store import StatePartition

__all__ = [
    "BatchDriver",
    "BatchRun",
    "DriverConfig",
    "ModelShare",
    "ItemSource",
    "ShareRecord",
    "Publish",
]

T = TypeVar("T")

log = logging.getLogger("interest_stream.worker")


# (topic, key, value, partition, headers): a record the model's sharing publishes
ShareRecord = tuple[str, bytes | None, bytes, int | None, list[tuple[str, bytes]] | None]
Publish = Callable[[list[ShareRecord]], bool]  # publishes records on their own; True when done
_Key = tuple[str, int]


class ModelShare(Protocol):
    """Sharing of the model with the group's other workers (see stream.runtime.modelsync)."""

    def start(self, model: Any, local: dict[str, Any] | None) -> Any: ...
    def close(self) -> None: ...
    def records(self, model: Any) -> list[ShareRecord]: ...
    def committed(self, model: Any) -> None: ...
    def aborted(self) -> None: ...
    def poll(self, model: Any, *, committing: bool = False) -> int: ...
    def between_batches(
        self, model: Any, owner: bool, publish: Publish, poll: bool = True
    ) -> None: ...
    def share(self, model: Any, publish: Publish, now: bool = False) -> None: ...
    def drain(self, model: Any) -> None: ...
    def served_version(self, version: str) -> str: ...
    def events_counted(self) -> int: ...

    @property
    def active(self) -> bool: ...


class ItemSource(Protocol):
    """Item metadata read from somewhere (the worker: the items topic)."""

    def drain(self) -> list[ItemMeta]: ...


@dataclass
class BatchRun:
    """A batch staged in a checkpoint: its partitions' batches, and whether a refresh
    part rides in it."""

    checkpoint: Checkpoint
    batches: list[tuple[StatePartition, PartitionBatch]]
    outcomes: list[StepOutcome]
    riding: bool = False


class BatchDriver:
    """Decode, step, refresh and accounting of one worker or replay (module docstring)."""

    def __init__(
        self,
        config: DriverConfig,
        metrics: WorkerMetrics,
        stats: WorkerStats | None = None,
        warn_model: Callable[[str, str, BaseException | None], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.stats = stats
        self.validator = EventValidator(
            max_payload_bytes=config.max_payload_bytes, max_id_bytes=config.max_id_bytes
        )
        self.placement = Placement(config.partitions)
        self.ids = UserIds(config.id_key, config.log_ids)
        warn = warn_model or _log_warning
        self.guard = ModelGuard(config.k, warn, log_ids=self.ids.log_ids)
        self.sync: ModelShare | None = None  # one model across the group (share_model)
        self.items: ItemSource | None = None
        self.refresher = Refresher(
            config.refresh,
            config.refresh_budget_percent,
            config.k,
            metrics,
            warn,
            log_ids=self.ids.log_ids,
        )
        self._model: RankingModel | None = None
        self._caps: Capabilities | None = None
        self._last_generated = 0
        self._batches = 0  # committed batches (see settle_heap)
        self._polled = False  # the model deltas that arrived were added alongside a commit
        self._learner = Learner()

    # --- the model ------------------------------------------------------------------------

    @property
    def model(self) -> RankingModel:
        assert self._model is not None, "no model set"
        return self._model

    @model.setter
    def model(self, model: RankingModel) -> None:
        self._caps = capabilities(model)
        self._model = model

    @property
    def caps(self) -> Capabilities:
        """What the model can do (read once, when it was set)."""
        assert self._caps is not None, "no model set"
        return self._caps

    def served_version(self) -> str:
        """What lists ranked now say they were ranked with."""
        version = self.model.version
        return self.sync.served_version(version) if self.sync is not None else version

    def warm_up(self) -> None:
        """Let the model load what it loads at first use now, before the first batch
        (see ``InterestModel.warm_up``); a model that fails here is left to its first batch."""
        warm = self.caps.warms_up
        if warm is None:
            return
        try:
            warm.warm_up()
        except Exception:
            log.warning("the model's warm-up failed; its first batch will be slower", exc_info=True)

    # --- sharing --------------------------------------------------------------------------

    def share_model(self, sync: ModelShare, local: dict[str, Any] | None) -> bool:
        """Share the model with the group's other workers through ``sync``, when it can.

        The model may be replaced (by the group's newer snapshot): read
        :attr:`model` again afterwards. ``local``: what the local snapshot says
        it includes. True when sharing is on.
        """
        self.model = sync.start(self.model, local)
        if not sync.active:
            sync.close()
            return False
        self.sync = sync
        self.refresher.model_clock = sync.events_counted  # every worker's events
        return True

    def between_batches(self, owner: bool, publish: Publish) -> None:
        """Add the deltas that arrived (unless the last commit did, see :meth:`commit`);
        as the owner of the events topic's partition 0, publish a model snapshot when
        due (``publish`` sends records on their own)."""
        polled, self._polled = self._polled, False
        if self.sync is not None:
            self.sync.between_batches(self.model, owner, publish, poll=not polled)

    def idle(self, publish: Publish) -> None:
        """No events this poll: still share what the model learnt, on the cadence, and
        count the worker's own last update (held back while batches follow each other)."""
        if self.sync is not None:
            self.sync.share(self.model, publish)

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

    def close(self) -> None:
        """End the learner thread (the runtime stops; nothing learns after this)."""
        self._learner.close()

    # --- one batch ------------------------------------------------------------------------

    def generated_at(self) -> int:
        """A ``generated_at`` for the lists of a batch or pass, later than every earlier one."""
        self._last_generated = max(int(time.time() * 1000), self._last_generated + 1)
        return self._last_generated

    def decode(
        self, part: StatePartition, sources: Iterable[Source], checkpoint: Checkpoint
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
        self,
        batches: list[tuple[StatePartition, PartitionBatch]],
        checkpoint: Checkpoint,
        mode: StepMode | None = None,
    ) -> list[StepOutcome]:
        """The guarded pure step on each partition's batch; the outputs go to the checkpoint."""
        self.give_items()
        generated_at = self.generated_at()
        mode = mode or StepMode()
        if mode.version is None:
            mode = StepMode(mode.score, mode.keep_lists, mode.learn, self.served_version())
        stepped = self.guard.step_many(batches, self.caps, mode)
        self.metrics.observe_model(self.caps, sum(out.learnt for out in stepped))
        if not self.guard.learning_pending:  # learnt at once: its loss is this batch's
            self.metrics.observe_loss(self.caps)
        for (part, _), outcome in zip(batches, stepped, strict=True):
            checkpoint.add(part, outcome, generated_at)
        if self.sync is not None:  # the batch's model deltas commit with its outputs
            for topic, key, value, partition, headers in self.sync.records(self.model):
                checkpoint.add_record(topic, value, key, partition, headers)
        return stepped

    def run(
        self,
        polled: Mapping[_Key, Sequence[Source]],
        parts: Mapping[_Key, StatePartition],
        checkpoint: Checkpoint,
        refreshable: Callable[[], Mapping[_Key, StatePartition]] | None = None,
    ) -> BatchRun | None:
        """Decode and step what a runtime polled, per partition, into ``checkpoint``.

        ``parts``: the open partitions that may take events (messages of others are
        left: revoked meanwhile, or still restoring). ``refreshable``: the
        partitions a refresh part may touch; given, a part that is due rides in the
        batch's checkpoint. None when nothing was new.
        """
        stages = self.metrics.stage_seconds
        t0 = time.perf_counter()
        batches: list[tuple[StatePartition, PartitionBatch]] = []
        for key, sources in polled.items():
            part = parts.get(key)
            if part is None:
                continue  # revoked during the poll, or still restoring: read again later
            batch = self.decode(part, sources, checkpoint)
            if batch is not None:
                batches.append((part, batch))
        t1 = time.perf_counter()
        stages.labels("decode").observe(t1 - t0)
        if not batches:
            return None
        outcomes = self.step(batches, checkpoint)
        stages.labels("step").observe(time.perf_counter() - t1)
        # A refresh part due now rides in the batch's checkpoint: one commit, not two.
        riding = (
            refreshable is not None
            and self.refresher.due()
            and self.stage_refresh(refreshable(), checkpoint, batches) > 0
        )
        return BatchRun(checkpoint, batches, outcomes, riding)

    def finish(
        self,
        run: BatchRun,
        commit: Callable[[], T],
        on_publish: Callable[[list[Recommendation]], Any] | None = None,
    ) -> T:
        """Commit ``run`` through ``commit()`` while the model learns, then account for it.

        If ``commit`` raises, nothing of the batch counts: the caller calls
        :meth:`abort` and reads the batch again.
        """
        t0 = time.perf_counter()
        out = self.commit(commit)
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)
        self.account(run.checkpoint, on_publish)
        if run.riding:
            self.refreshed(run.checkpoint, on_publish)
        return out

    def abort(self, run: BatchRun) -> None:
        """``run`` will not commit: drop its states, learning and deltas."""
        run.checkpoint.discard()
        self.aborted()
        if run.riding:
            self.refresher.aborted()

    def aborted(self) -> None:
        """The checkpoint was discarded: its gradient step and model deltas are dropped."""
        self.guard.drop_learning()
        if self.sync is not None:
            self.sync.aborted()

    def commit(self, commit: Callable[[], T]) -> T:
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
                self.metrics.observe_loss(self.caps)
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
        takes = self.caps.takes_items
        if self.items is None or takes is None:
            return 0
        records = self.items.drain()
        if records:
            try:
                takes.add_item_metadata(records)
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
            m.latency.observe_many(lat)
            if self.stats is not None:
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

    # --- refresh --------------------------------------------------------------------------

    def stage_refresh(
        self,
        parts: Mapping[_Key, StatePartition],
        checkpoint: Checkpoint,
        batches: list[tuple[StatePartition, PartitionBatch]] | None = None,
    ) -> int:
        """Stage a refresh part over ``parts`` (open, not restoring) into ``checkpoint``.

        ``batches``: the event batches whose outputs ``checkpoint`` holds already
        (their users are left out of the part). Returns the number of lists
        staged; when it is not 0 the runtime commits ``checkpoint`` and calls
        :meth:`refreshed`, or ``refresher.aborted()``.
        """
        home = (self.config.events_topic, self.placement.of(NEWCOMERS_ID.encode("utf-8")))
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
            parts, self.caps, checkpoint, self.generated_at(), home, exclude, self.served_version()
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


def _log_warning(kind: str, text: str, exc: BaseException | None) -> None:
    log.warning("%s", text, exc_info=exc)
