"""State restored from the changelog before a partition is served, wherever it moves.

Every batch writes, in its checkpoint, one changelog record per changed user
(key ``b"u" + user id``, value the encoded state) and one offset record per
partition (the last input offset the states reflect) to the consumer group's
compacted changelog, partition number = input partition number. The records
mirror the partition's RocksDB keys, so restoring is putting them back.

When a worker is assigned a partition, the input partition is paused and a
:class:`RestoreTask` reads the changelog partition from the store's own
changelog offset + 1 (the beginning for a store that has none) up to the
partition's *high watermark* captured at that moment, read_committed: records
of aborted transactions are skipped, and the position moves past the
transaction markers at the end, so "done" is position >= high watermark
(never the last stable offset: a store restored only to a dead worker's open
transaction would miss what committed after it). The worker's loop calls
:meth:`Restorer.step` between batches, so a restore never blocks the consumer
group: a rebalance during a restore cancels the task of a revoked partition
(what it restored so far is kept with its changelog offset, so a later restore
goes on from there) and starts one for a newly assigned partition.

A changelog that ends before the store's changelog offset was recreated or
truncated: the local states are kept and written to it again (``reseed``), so
the next owner of the partition finds them. So is a store that has states but
no changelog offset (written before the changelog existed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from core.errors import KafkaClientError
from engine.metrics import WorkerMetrics
from state.store import StorePartition
from stream.config import Settings
from stream.kafka.clients import make_client

__all__ = ["Restorer", "RestoreTask"]

log = logging.getLogger("interest_stream.worker")

_CHUNK = 5000  # changelog records per consume call and RocksDB write
_STALL_WARN_S = 30.0
# How long the changelog's offsets are asked for while its partition has no leader:
# a killed broker is fenced and its partitions led by another within seconds
# (broker.session.timeout.ms, 9 s by default), so this covers a leader move with room.
_WATERMARK_WAIT_S = 60.0


def _watermarks(marks: Any, tp: TopicPartition) -> tuple[int, int]:
    """(low, high) watermark of a changelog partition, waiting while its leader moves.

    A broker lost just as a partition is assigned made the worker stop here: while
    the leader moves, the client says NOT_LEADER_FOR_PARTITION, an unknown
    partition, a timeout or a destroyed broker handle, depending on where its
    metadata stands. The next leader answers once the cluster has fenced the lost
    broker, so any error is asked again for a while; only a refusal (not
    authorised) is final at once.
    """
    deadline = time.monotonic() + _WATERMARK_WAIT_S
    while True:
        try:
            low, high = marks.get_watermark_offsets(tp, timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if (
                not isinstance(err, KafkaError)
                or "AUTHORIZATION" in err.name()
                or time.monotonic() >= deadline
            ):
                raise KafkaClientError(
                    f"cannot read the changelog {tp.topic}[{tp.partition}]",
                    err.name() if isinstance(err, KafkaError) else None,
                ) from None
            log.info("changelog %s[%d]: %s; asking again", tp.topic, tp.partition, err.str())
            time.sleep(0.5)
            try:
                # A client that reads nothing of the topic does not refresh its metadata
                # by itself: without this, "unknown partition" lasted for ever.
                marks.list_topics(tp.topic, timeout=5)
            except KafkaException:
                pass


@dataclass
class RestoreTask:
    """Bringing one partition's store up to the changelog's high watermark."""

    part: StorePartition
    start: int  # first changelog offset to read
    target: int  # high watermark when the task began: done once the position reaches it
    reseed: bool = False  # write the local states to the changelog once done
    restored: int = 0
    started: float = field(default_factory=time.monotonic)
    progressed: float = field(default_factory=time.monotonic)
    warned: bool = False

    @property
    def done(self) -> bool:
        return self.start >= self.target


class Restorer:
    """The restore tasks of one worker and the consumer that reads the changelog."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.topic = settings.changelog_topic
        self._settings = settings
        self._metrics = metrics
        self._reader: Any = None  # read_committed, assign-only: the records
        self._marks: Any = None  # read_uncommitted: the high watermark
        self.tasks: dict[int, RestoreTask] = {}
        self.applied = 0  # changelog records put back, in total (progress, see engine/health.py)

    def _clients(self) -> tuple[Any, Any]:
        if self._reader is None:
            kafka, group = self._settings.kafka, self._settings.worker.group
            base = {
                # confluent-kafka needs a group id; these consumers never join or commit.
                "group.id": f"{group}.restore",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            }
            self._reader = make_client(
                Consumer, kafka.client_config(**base, **{"isolation.level": "read_committed"})
            )
            self._marks = make_client(
                Consumer, kafka.client_config(**base, **{"isolation.level": "read_uncommitted"})
            )
        return self._reader, self._marks

    @property
    def active(self) -> bool:
        return bool(self.tasks)

    def restoring(self, partition: int) -> bool:
        return partition in self.tasks

    def begin(self, part: StorePartition) -> RestoreTask:
        """Plan the restore of ``part``; a task that is not ``done`` runs in :meth:`step`."""
        reader, marks = self._clients()
        low, high = _watermarks(marks, TopicPartition(self.topic, part.partition))
        last = part.changelog_offset()
        reseed = False
        if last is not None and last >= high:
            log.warning(
                "%s: the changelog %s[%d] ends at offset %d, before this store's %d: it was "
                "recreated or truncated; keeping the local states and writing them to it again",
                part.name,
                self.topic,
                part.partition,
                high,
                last,
            )
            part.forget_changelog()
            start, reseed = low, True
        elif last is not None and last + 1 < low:
            log.warning(
                "%s: changelog records %d to %d were removed before this store read them; "
                "restoring from %d",
                part.name,
                last + 1,
                low - 1,
                low,
            )
            start = low
        else:
            start = low if last is None else last + 1
            # States from before there was a changelog: the next owner needs them there.
            reseed = last is None and part.user_count() > 0
        task = RestoreTask(part, start, high, reseed)
        # Every assigned partition has the gauge (0: nothing to restore), so a
        # dashboard sees zeros, not gaps.
        self._metrics.restore_remaining.labels(str(part.partition)).set(max(0, high - start))
        if not task.done:
            reader.incremental_assign([TopicPartition(self.topic, part.partition, start)])
            self.tasks[part.partition] = task
            log.info("%s: restoring changelog offsets %d to %d", part.name, start, high - 1)
        return task

    def cancel(self, partition: int) -> None:
        """Stop restoring ``partition`` (revoked); what was restored is kept."""
        task = self.tasks.pop(partition, None)
        if task is None:
            return
        self._unassign(partition)
        log.info("%s: restore cancelled after %d record(s)", task.part.name, task.restored)

    def step(self, timeout: float = 0.05) -> list[RestoreTask]:
        """Apply what the changelog has for the tasks; return the tasks that finished."""
        if not self.tasks:
            return []
        reader, _ = self._clients()
        msgs = reader.consume(_CHUNK, timeout=timeout)
        by_part: dict[int, list[Any]] = {}
        for msg in msgs:
            if msg.error() is None:
                by_part.setdefault(msg.partition(), []).append(msg)
        now = time.monotonic()
        for partition, plist in by_part.items():
            task = self.tasks.get(partition)
            if task is None:
                continue  # cancelled while these were in flight
            task.part.apply_changelog(
                [(m.key() or b"", m.value()) for m in plist], plist[-1].offset()
            )
            task.restored += len(plist)
            self.applied += len(plist)
            task.progressed = now
            self._metrics.restored_records.inc(len(plist))
        finished = []
        for partition, task in list(self.tasks.items()):
            (pos,) = reader.position([TopicPartition(self.topic, partition)])
            if pos.offset < 0:  # not known yet (just assigned): not done, not an error
                continue
            self._metrics.restore_remaining.labels(str(partition)).set(
                max(0, task.target - pos.offset)
            )
            if pos.offset >= task.target:
                finished.append(self._finish(task))
            elif now - task.progressed > _STALL_WARN_S and not task.warned:
                task.warned = True
                log.warning(
                    "%s: restore stuck at changelog offset %d of %d for %.0fs (an open "
                    "transaction of a stopped worker? it is aborted after "
                    "transaction.timeout.ms)",
                    task.part.name,
                    pos.offset,
                    task.target,
                    now - task.progressed,
                )
        return finished

    def _finish(self, task: RestoreTask) -> RestoreTask:
        partition = task.part.partition
        self.tasks.pop(partition, None)
        self._unassign(partition)
        seconds = time.monotonic() - task.started
        self._metrics.restore_seconds.observe(seconds)
        self._metrics.restore_remaining.labels(str(partition)).set(0)
        log.info(
            "%s: restored %d changelog record(s) in %.2fs", task.part.name, task.restored, seconds
        )
        return task

    def _unassign(self, partition: int) -> None:
        try:
            self._reader.incremental_unassign([TopicPartition(self.topic, partition)])
        except KafkaException as exc:
            log.debug("restore unassign: %s", exc)

    def close(self) -> None:
        for client in (self._reader, self._marks):
            if client is not None:
                try:
                    client.close()
                except (KafkaException, RuntimeError) as exc:
                    log.debug("restore consumer close: %s", exc)
        self._reader = self._marks = None
        self.tasks.clear()
