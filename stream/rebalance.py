"""Rebalance callbacks: partition stores follow the partitions a worker owns.

On assignment each partition's store is opened and the consumer is pointed at
the store's last applied offset + 1, so state and position can never disagree
(unless the log itself moved: a recreated topic or expired messages, each said
in a WARNING, see :meth:`Rebalancer._start_offset`).
On revocation the stored offsets are committed (the next owner without local
state starts there) and the stores are closed; on loss they are only closed.
The callbacks run inside ``poll``/``consume`` on the worker's thread, between
batches, so no batch is ever half-applied when a store closes.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from state.store import Store, StorePartition
from stream.metrics import WorkerMetrics

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
        consumer.commit(offsets=offsets, asynchronous=asynchronous)
    except KafkaException as exc:
        err = exc.args[0]
        if err.code() != KafkaError._NO_OFFSET:
            log.warning("offset commit: %s", err.str())


class Rebalancer:
    """The ``on_assign`` / ``on_revoke`` / ``on_lost`` callbacks of one worker.

    ``eager`` is True for eager assignors (range, roundrobin): whole assignments
    change at once instead of incrementally.
    """

    def __init__(self, store: Store, metrics: WorkerMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.eager = False
        self.assigned = threading.Event()  # set once partitions have been assigned

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            part = self.store.open_partition(tp.topic, tp.partition)
            tp.offset = self._start_offset(consumer, part)
            self.metrics.users_in_state.labels(str(tp.partition)).set(part.user_count())
        self._compare_with_group(consumer, partitions)
        if self.eager:
            consumer.assign(partitions)
        else:
            consumer.incremental_assign(partitions)
        self.assigned.set()
        log.info("assigned %s", [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions])

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [
            p
            for tp in partitions
            if (p := self.store.partitions().get((tp.topic, tp.partition))) is not None
        ]
        commit_offsets(consumer, parts, asynchronous=False)
        self._release(consumer, partitions)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
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

    def _start_offset(self, consumer: Consumer, part: StorePartition) -> int:
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

    def _compare_with_group(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Say so when local state and the group's committed offsets disagree.

        Local state behind the group: another worker owned the partition meanwhile;
        replaying from the stored offset makes the state exact again (the replayed
        events' lists are published once more: outputs are at-least-once). No local
        state but a committed offset: this worker starts at the group's offset with
        empty user states for the partition (no restore from a changelog yet).
        """
        if not partitions:
            return
        try:
            committed = consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=5
            )
        except KafkaException:
            return  # diagnostics only: never block an assignment on them
        for tp, c in zip(partitions, committed, strict=True):
            if tp.offset < 0:
                if c.offset >= 0:
                    log.warning(
                        "%s[%d]: no local state, but the group has processed it up to "
                        "offset %d: user state for this partition starts empty "
                        "(restoring state from a changelog is not built yet)",
                        tp.topic,
                        tp.partition,
                        c.offset,
                    )
                else:
                    log.info(
                        "%s[%d]: no local state and no committed offset: starting at the beginning",
                        tp.topic,
                        tp.partition,
                    )
            elif c.offset > tp.offset:
                log.warning(
                    "%s[%d]: local state is %d message(s) behind the group; replaying them",
                    tp.topic,
                    tp.partition,
                    c.offset - tp.offset,
                )
