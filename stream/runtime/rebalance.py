"""Rebalance callbacks: partition stores follow the partitions a worker owns.

On assignment each partition's store is opened and its restore from the
changelog planned (:mod:`stream.runtime.restore`). A partition whose store is already
up to date is read at once from the store's last applied offset + 1, so state
and position can never disagree (unless the log itself moved: a recreated topic
or expired messages, each said in a WARNING, see :meth:`Rebalancer.start_offset`);
one that needs restoring is paused until :meth:`Rebalancer.restored` resumes it.
On revocation a restore in progress is cancelled and the stores are closed (in
at-least-once mode the stored offsets are committed first, for lag tools; in
exactly-once mode offsets are only ever committed inside a batch's
transaction); on loss they are only closed. The callbacks run inside
``poll``/``consume`` on the worker's thread, between batches, so no batch is
ever half-applied when a store closes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import (
    OFFSET_INVALID,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from engine.metrics import WorkerMetrics
from state.store import Store, StorePartition
from stream.runtime.restore import Restorer, RestoreTask

__all__ = ["Rebalancer", "commit_offsets"]

log = logging.getLogger("interest_stream.worker")


def commit_offsets(consumer: Consumer, parts: list[StorePartition], asynchronous: bool) -> None:
    """Commit stored offset + 1 of ``parts`` to the group (for lag tools and new owners)."""
    offsets = [
        TopicPartition(p.topic, p.partition, last + 1)
        for p in parts
        if (last := p.last_offset()) is not None
    ]
    if not offsets:
        return
    try:
        if asynchronous:
            consumer.commit(offsets=offsets, asynchronous=True)
        else:
            consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        err = exc.args[0]
        if err.code() != KafkaError._NO_OFFSET:
            log.warning("offset commit: %s", err.str())


class Rebalancer:
    """The ``on_assign`` / ``on_revoke`` / ``on_lost`` callbacks of one worker.

    ``eager`` is True for eager assignors (range, roundrobin): whole assignments
    change at once instead of incrementally. ``commit_on_revoke``: commit the
    stored offsets when partitions go (at-least-once mode). ``on_ready(part,
    task)`` is called when a partition's restore is planned as done at once
    (the runtime writes the changelog again when the task says ``reseed``).
    """

    def __init__(
        self,
        store: Store,
        metrics: WorkerMetrics,
        restorer: Restorer,
        commit_on_revoke: bool = True,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.restorer = restorer
        self.commit_on_revoke = commit_on_revoke
        self.eager = False
        self.assigned = threading.Event()  # set once partitions have been assigned
        self.on_ready: Callable[[RestoreTask], None] | None = None

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        waiting = []
        ready = []
        for tp in partitions:
            part = self.store.open_partition(tp.topic, tp.partition)
            task = self.restorer.begin(part)
            if task.done:
                tp.offset = self.start_offset(consumer, part)
                ready.append(task)
            else:
                tp.offset = OFFSET_STORED  # paused below; sought when restored
                waiting.append(TopicPartition(tp.topic, tp.partition))
            self.metrics.users_in_state.labels(str(tp.partition)).set(part.user_count())
        if self.eager:
            consumer.assign(partitions)
        else:
            consumer.incremental_assign(partitions)
        if waiting:
            consumer.pause(waiting)
        self.assigned.set()
        log.info("assigned %s", [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions])
        for task in ready:
            if self.on_ready is not None:
                self.on_ready(task)

    def restored(self, consumer: Consumer, task: RestoreTask) -> None:
        """``task`` finished: read its partition from the restored offset + 1."""
        part = task.part
        if self.store.partitions().get((part.topic, part.partition)) is not part:
            return  # revoked meanwhile
        tp = TopicPartition(part.topic, part.partition, self._offset(consumer, part))
        # Assigned again at the restored offset (a paused partition that has never
        # fetched cannot be sought: the client says "erroneous state"), then resumed.
        if self.eager:
            current = [
                TopicPartition(t.topic, t.partition, self._offset(consumer, p))
                for t in consumer.assignment()
                if t.partition != part.partition
                and (p := self.store.partitions().get((t.topic, t.partition))) is not None
            ]
            consumer.assign([*current, tp])
            still = [t for t in current if self.restorer.restoring(t.partition)]
            if still:
                consumer.pause(still)
        else:
            consumer.incremental_unassign([TopicPartition(part.topic, part.partition)])
            consumer.incremental_assign([tp])
        consumer.resume([TopicPartition(part.topic, part.partition)])
        self.metrics.users_in_state.labels(str(part.partition)).set(part.user_count())
        log.info("%s: restored, reading from %s", part.name, tp.offset)

    def _offset(self, consumer: Consumer, part: StorePartition) -> int:
        """Where to read ``part`` from: the stored offset + 1, else the group's offset."""
        if self.restorer.restoring(part.partition):
            return OFFSET_STORED  # still paused: sought when restored
        offset = self.start_offset(consumer, part)
        return OFFSET_STORED if offset == OFFSET_INVALID else offset

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.commit_on_revoke:
            parts = [
                p
                for tp in partitions
                if (p := self.store.partitions().get((tp.topic, tp.partition))) is not None
                and not self.restorer.restoring(tp.partition)
            ]
            commit_offsets(consumer, parts, asynchronous=False)
        self._release(consumer, partitions)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.restorer.cancel(tp.partition)
            self.store.close_partition(tp.topic, tp.partition)
            self.metrics.forget_partition(tp.topic, tp.partition)
        try:
            if self.eager:
                consumer.unassign()
            else:
                consumer.incremental_unassign(partitions)
        except KafkaException as exc:
            log.debug("unassign: %s", exc)
        log.info("released %s", [f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def start_offset(self, consumer: Consumer, part: StorePartition) -> int:
        """Stored offset + 1, unless the log moved under the store.

        Past the log's end: the topic was recreated (or truncated), its offsets
        start over; the stored offset is reset so the new messages are applied
        instead of being skipped as already seen (user states are kept). Before the
        log's start: retention removed messages this store never applied; they are
        gone, reading resumes at the first one left.
        """
        last = part.last_offset()
        if last is None:
            return OFFSET_INVALID
        nxt = last + 1
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(part.topic, part.partition), timeout=5
            )
        except KafkaException as exc:
            log.warning(
                "%s: cannot read the log's offsets (%s); resuming at offset %d",
                part.name,
                exc.args[0].str() if exc.args else exc,
                nxt,
            )
            return nxt
        if nxt > high:
            log.warning(
                "%s: the stored offset %d is past the end of the log (%d): the topic "
                "was recreated or truncated; applying it again from offset %d "
                "(user states are kept)",
                part.name,
                last,
                high,
                low,
            )
            part.reset_offset(low - 1)
            return low
        if nxt < low:
            log.warning(
                "%s: %d message(s) (offsets %d to %d) were removed by retention before "
                "this worker applied them; they are lost, resuming at offset %d",
                part.name,
                low - nxt,
                nxt,
                low - 1,
                low,
            )
            return low
        return nxt
