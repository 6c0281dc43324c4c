"""One model across the workers of a group: shared deltas, merged parameters, snapshots on Kafka.

A worker whose model can share (:class:`model.sync.Shared`) keeps it equal to
every other worker's:

* **Counts.** Each batch's count contribution is one record (key = worker id)
  on ``<group>.model-updates`` (one partition: one order for everyone), in
  the batch's checkpoint: with exactly-once it commits with the batch's lists
  and offsets, or not at all. Every worker reads that topic (read_committed,
  assign-only) between batches and adds every record in the topic's order,
  its own included, so every worker counts the same records in the same order
  and holds the same counts, decayed ones included. A batch ranks with the
  worker's own records up to the batch before last counted (waiting, at most
  :data:`_OWN_WAIT_S`, in the rare case one is not back yet) and never with
  the last one's: its lists are the same whatever the round trip took, one
  batch behind, as for the gradient step. Records carry (sender
  life, sequence number) and every snapshot says which it includes: each is
  counted once.
* **Parameters.** Every ``sync_every_s`` (default 2 s) a worker adds what its
  model learnt since it last shared (per trained row, float16) to a batch's
  checkpoint, in parts of at most 512 KiB; the others add it to their weights.
  Deltas carry (worker, sequence number): a worker never adds its own twice,
  and after a restart from an older state it adopts what it had shared since.
* **Snapshots.** The owner of the events topic's partition 0 publishes the
  model every ``model_publish_every_s`` (default 300 s) to the compacted
  ``<group>.model`` topic (:mod:`stream.kafka.modeltopic`): the state, the offsets of
  the updates it includes and its sync book. A worker that starts loads the
  newer of that snapshot and its own local one, then reads the updates after
  its offsets before it serves its first batch.

A missing, deleted or corrupt topic or record is one WARNING (at most one a
minute per kind): the worker goes on serving with what it has, counting its own
batches itself while the updates topic is gone, and creates the topic again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from core.errors import DataError
from core.partition import partition_for
from engine.driver import Publish, ShareRecord
from engine.metrics import WorkerMetrics
from model.persist import Persistent, snapshot_bytes
from model.snapshot import read_snapshot
from model.sync import (
    COUNTS,
    PARAMS,
    Delta,
    Shared,
    SyncBook,
    SyncClock,
    decode_delta,
    encode_delta,
)
from stream.config import Settings
from stream.kafka.clients import make_client
from stream.kafka.modeltopic import TopicSnapshot, read_newest, snapshot_records, watermarks
from stream.kafka.topics import ensure_model_topics, updates_retention_ms

__all__ = ["ModelSync", "PARAM_PART_BYTES", "Record", "Publish"]

log = logging.getLogger("interest_stream.worker")

PARAM_PART_BYTES = 512 * 1024
_CATCH_UP_S = 30.0  # longest wait for the updates before the first batch (then: in the loop)
_POLL_RECORDS = 200
_CHECK_EVERY_S = 10.0  # how often the updates topic's existence is checked
_WARN_EVERY_S = 60.0
# Longest wait for the worker's own count record of the batch before last to come back
# (its transaction committed a batch ago, so it is normally back already).
_OWN_WAIT_S = 0.5

Record = ShareRecord  # topic, key, value, partition, headers


class ModelSync:
    """The sharing of one worker's model (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, worker_id: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.updates = settings.model_updates_topic
        self.topic = settings.model_topic
        self.book = SyncBook(worker_id)
        self.clock = SyncClock(float(settings.worker.sync_every_s))
        self.publish_every_s = float(settings.worker.model_publish_every_s)
        self.positions: dict[int, int] = {}  # updates partition -> next offset to read
        self.active = False  # the model shares (set by start)
        self.last_merge: float | None = None  # Unix time of the last parameter merge
        self.published = 0  # snapshots this worker put on the model topic
        self.snapshot_bytes = 0  # size of the last one
        self._key = worker_id.encode()
        self._out: int | None = None  # updates partition this worker writes to
        self._reader: Any = None
        self._marks: Any = None
        self._sending: int | None = None  # seq of the parameter delta in the open batch
        self._counts: Any = None  # the open batch's count delta, counted once delivered
        self._count_header: dict[str, Any] | None = None
        # Own count records up to seq _upto may be counted (see committed); poll waits
        # while the newest of them is not counted yet.
        self._upto = 0
        self._newest = 0  # seq of the newest own count record committed
        self._counted_own = 0  # seq of the newest own count record counted
        self._held: list[tuple[Any, Delta | None]] = []  # read, not counted yet (in order)
        self._records_read = 0  # for the lag in events: events per record read
        self._events_read = 0
        self._gone = False  # the updates topic is missing: count own batches locally
        self._checked = 0.0
        self._warned: dict[str, float] = {}
        self._next_publish = time.monotonic() + self.publish_every_s
        self._prepared: tuple[int, bytes, dict[str, Any]] | None = None
        self._preparing: threading.Thread | None = None
        metrics.seconds_since_merge.set_function(
            lambda: None if self.last_merge is None else max(0.0, time.time() - self.last_merge)
        )

    # --- start ---------------------------------------------------------------------------

    def start(self, model: Any, local: dict[str, Any] | None) -> Any:
        """The model to serve: the newer of the topic's snapshot and ``model`` (restored
        locally; ``local`` is what its snapshot said, None without one), caught up."""
        if not isinstance(model, Shared):
            return model
        self._clients()
        mine = (local or {}).get("sync")
        snap = read_newest(self.settings, self.topic)
        chosen = None if snap is None else self._loadable(snap, model)
        if snap is not None and chosen is not None and (mine is None or _ahead(snap, mine)):
            model = chosen
            model.drop_unshared()  # the writer's unshared learning is not the group's
            book = snap.book
            self.book.own_seq = int(
                book.get("own_seq", 0)
                if book.get("worker") == self.book.worker
                else book.get("seen", {}).get(self.book.worker, 0)
            )
            self.book.counted = _counted(book)
            self.book.snapshot = snap.version
            start = snap.positions
            log.info("model loaded from %s (snapshot %d)", self.topic, snap.version)
        elif mine is not None:
            self.book.own_seq = int(mine.get("book", {}).get("own_seq", 0))
            self.book.snapshot = int(mine.get("book", {}).get("snapshot", 0))
            self.book.counted = _counted(mine.get("book", {}))
            start = {int(p): int(o) for p, o in mine.get("positions", {}).items()}
        else:
            start = None
        model.start_sharing()
        self.active = True
        # No snapshot anywhere: every update from the first. A local model that predates
        # sharing has counted its own events already: only the updates from now on.
        self._assign(start, from_end=start is None and local is not None)
        self._catch_up(model)
        self._served(model)
        return model

    def _loadable(self, snap: TopicSnapshot, model: Any) -> Any:
        try:
            loaded, _ = read_snapshot(snap.data)
        except DataError as exc:
            self._warn("load", f"the snapshot on {self.topic} cannot be loaded: {exc}")
            return None
        if (
            not isinstance(model, Persistent)
            or loaded.name != model.name
            or loaded.config != model.config
        ):
            self._warn(
                "load",
                f"the snapshot on {self.topic} is of another model ({loaded.version}); not loaded",
            )
            return None
        return loaded

    def _clients(self) -> None:
        kafka, group = self.settings.kafka, self.settings.worker.group
        base = {
            # Never joins the group and never commits: positions live with the model.
            "group.id": f"{group}.model-sync",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
        self._reader = make_client(
            Consumer,
            kafka.client_config(
                # Short fetch waits: a batch's own update comes back in a few ms.
                **base,
                **{"isolation.level": "read_committed", "fetch.wait.max.ms": 10},
            ),
        )
        self._marks = make_client(
            Consumer, kafka.client_config(**base, **{"isolation.level": "read_uncommitted"})
        )

    def _partitions(self, topic: str | None = None) -> list[int] | None:
        topic = topic or self.updates
        try:
            meta = self._marks.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException:
            return None
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        return sorted(meta.partitions)

    def _assign(
        self, start: dict[int, int] | None, from_end: bool = False, wait_s: float = 15.0
    ) -> None:
        """Read every updates partition from ``start`` (None: from its first record, or
        with ``from_end`` from its end)."""
        parts = self._partitions()
        if parts is None:
            self._gone = True  # the next check warns and creates it
            return
        try:
            ends = {
                p: watermarks(self._marks, TopicPartition(self.updates, p), wait_s) for p in parts
            }
        except KafkaException as exc:  # e.g. a topic just created has no leader yet
            self._warn("assign", f"model updates topic {self.updates} not readable yet: {exc}")
            self._gone = True  # counted here meanwhile; the next check tries again
            return
        self._gone = False
        self._out = partition_for(self._key, len(parts))
        tps = []
        for p in parts:
            low, high = ends[p]
            at = (high if from_end else low) if start is None else start.get(p, low)
            if at < low:
                self._warn(
                    "retention",
                    f"model updates {self.updates}[{p}] {at}..{low - 1} were deleted before "
                    "this worker read them: the model misses them",
                )
                at = low
            elif at > high:
                self._warn(
                    "recreated",
                    f"model updates topic {self.updates}[{p}] ends before this model's "
                    f"offset {at}: it was recreated; reading it from the start",
                )
                at = low
            self.positions[p] = at
            tps.append(TopicPartition(self.updates, p, at))
        self._reader.assign(tps)

    def _catch_up(self, model: Any) -> None:
        """Apply the updates committed so far before the first batch (bounded wait)."""
        targets = self._ends()
        deadline = time.monotonic() + _CATCH_UP_S
        while time.monotonic() < deadline:
            self.poll(model, 1000, 0.2)
            behind = {p: t for p, t in targets.items() if self._position(p) < t}
            if not behind:
                return
        self._warn(
            "catch-up",
            f"still {len(behind)} model-updates partition(s) behind after {_CATCH_UP_S:.0f}s "
            "(an open transaction of a stopped worker?); serving, the rest follows",
        )

    def _ends(self) -> dict[int, int]:
        """High watermark of every updates partition read (what committed is below it)."""
        marks, topic = self._marks, self.updates
        return {p: watermarks(marks, TopicPartition(topic, p))[1] for p in self.positions}

    def _position(self, p: int) -> int:
        (tp,) = self._reader.position([TopicPartition(self.updates, p)])
        at = max(self.positions.get(p, 0), tp.offset)
        self.positions[p] = at
        return at

    # --- one batch -------------------------------------------------------------------------

    def records(self, model: Any) -> list[Record]:
        """What the batch publishes: its count delta, and the parameter delta when due."""
        if not self.active:
            return []
        out: list[Record] = []
        delta = model.count_delta()
        if delta is not None:
            if self._gone:  # nowhere to share: counted here once the batch committed
                self._counts = delta
            else:
                header = self.book.count_header(len(delta.arrays["ts"]))
                value = encode_delta(COUNTS, model.version, delta, header)
                self.metrics.update_bytes.labels(COUNTS).inc(len(value))
                out.append((self.updates, self._key, value, self._out, None))
                self._count_header = header
        if self._gone or not self.clock.due(time.monotonic()):
            return out
        parts = model.param_delta(PARAM_PART_BYTES)
        if parts:
            seq = self.book.next_seq()
            for i, part in enumerate(parts):
                header = {"worker": self.book.worker, "seq": seq, "part": i, "parts": len(parts)}
                value = encode_delta(PARAMS, model.version, part, header)
                self.metrics.update_bytes.labels(PARAMS).inc(len(value))
                out.append((self.updates, self._key, value, self._out, None))
            self._sending = seq
        else:
            self.clock.done(time.monotonic())
        return out

    def committed(self, model: Any) -> None:
        """The batch (and the deltas in it) committed."""
        if self._counts is not None:
            self.book.events += model.apply_count_delta(self._counts)
        if self._count_header is not None:  # counted when it comes back (poll)
            self.book.counts_sent(self._count_header)
            # The next batch ranks with the batch before this one counted: its record
            # is back by now (a wait for this one's round trip cost ~7 ms a batch),
            # and whatever the timing the lists are the same, one batch behind.
            self._upto, self._newest = self._newest, self.book.count_seq
        self._counts = self._count_header = None
        if self._sending is not None:
            model.param_delta_shared()
            self.book.sent(self._sending)
            self._sending = None
            self.clock.done(time.monotonic())
            self.last_merge = time.time()
            self.metrics.model_merges.inc()
            self._served(model)

    def aborted(self) -> None:
        """The batch was aborted: its deltas were not shared (the next ones include them;
        its events are learnt again, so its count delta is made again)."""
        self._sending = None
        self._counts = self._count_header = None
        self._checked = 0.0  # a deleted updates topic aborts batches: look now

    def share(self, model: Any, publish: Publish, now: bool = False) -> None:
        """Outside a batch: publish the parameter change when due (``now``: whatever the
        cadence, e.g. on a clean stop)."""
        if not self.active:
            return
        # No events: nothing ranks on the one-batch-behind rule now; count the last
        # batch's own record as soon as it is back (a snapshot or a refresh sees it).
        self._upto = self._newest
        if now:
            self.clock.last = None
            self.clock.every_s, every = 0.0, self.clock.every_s
        try:
            records = self.records(model)
        finally:
            if now:
                self.clock.every_s = every
        if not records or publish(records):
            self.committed(model)
        else:
            self.aborted()

    # --- between batches -------------------------------------------------------------------

    def between_batches(self, model: Any, owner: bool, publish: Publish, poll: bool = True) -> None:
        """Add what arrived (``poll``: not done already); as the owner of events[0],
        publish a snapshot when due."""
        if not self.active:
            return
        if poll:
            self.poll(model)
        if self.snapshot_due(owner):
            self.prepare_snapshot(model)
        version, records = self.take_snapshot()
        if not records:
            return
        if self._partitions(self.topic) is None:  # a transaction to a missing topic stalls
            self._warn("model topic", f"model topic {self.topic} is missing; creating it again")
            self._create_topics()
            return
        if publish([(self.topic, k, v, 0, h) for k, v, h in records]):
            self.snapshot_published(version, model)

    def poll(
        self, model: Any, limit: int = _POLL_RECORDS, timeout: float = 0.0, committing: bool = False
    ) -> int:
        """Apply the updates that arrived; returns how many records were read.

        ``committing``: while a batch commits, the own records the next batch may
        count (see :meth:`committed`) are known already: up to the batch before it.
        """
        if not self.active:
            return 0
        if committing:
            self._upto = self._newest
        now = time.monotonic()
        if now - self._checked > _CHECK_EVERY_S:
            self._checked = now
            self._check_topic()
        if self._gone:  # nothing of ours comes back from a deleted topic: wait for none
            self._counted_own = max(self._counted_own, self._upto)
            return 0
        deadline = now + _OWN_WAIT_S
        read = 0
        while True:
            held, self._held = self._held, []
            pairs = held or [(m, None) for m in self._reader.consume(limit, timeout=timeout)]
            msgs = [msg for msg, _ in pairs]
            merged = False
            for i, (msg, delta) in enumerate(pairs):
                if msg.error() is not None:
                    continue
                delta = delta or self._decode(msg)
                if self._too_new(delta):  # this and what follows: after the next batch
                    self._held = pairs[i:]
                    msgs = msgs[:i]
                    break
                self.positions[msg.partition()] = msg.offset() + 1
                merged |= self._apply(model, msg, delta)
            if merged:
                self._served(model)
            if msgs:
                self._lag(msgs[-1])
            read += len(msgs)
            if self._held:
                return read
            if held:
                continue  # what arrived after them, at once
            if self._counted_own >= self._upto or time.monotonic() >= deadline:
                return read
            timeout = 0.01  # own record not back yet: wait for it

    def _decode(self, msg: Any) -> Delta | None:
        try:
            return decode_delta(msg.value() or b"")
        except DataError:
            return None  # _apply says why

    def _too_new(self, delta: Delta | None) -> bool:
        """An own count record newer than the next batch may see (see :meth:`committed`)."""
        if delta is None or delta.kind != COUNTS or delta.header.get("life") != self.book.life:
            return False
        return int(delta.header.get("seq", 0)) > self._upto

    def _apply(self, model: Any, msg: Any, delta: Delta | None = None) -> bool:
        where = f"{self.updates}[{msg.partition()}]@{msg.offset()}"
        try:
            if delta is None:
                delta = decode_delta(msg.value() or b"")
            if delta.header.get("version") != model.version:
                raise DataError(f"made by model {delta.header.get('version')!r}")
            if delta.kind == COUNTS:
                if delta.header.get("life") == self.book.life:
                    self._counted_own = max(self._counted_own, int(delta.header.get("seq", 0)))
                if self.book.take_counts(delta.header):
                    n = model.apply_count_delta(delta.state)
                    self.book.events += n
                    self._events_read += n
                    self._records_read += 1
                return False
            if delta.kind != PARAMS:
                raise DataError(f"unknown kind {delta.kind!r}")
            action = self.book.decide(delta.header)
            if action is not None:
                model.apply_param_delta(delta.state, adopt=action == "adopt")
                self.book.merged(delta.header)
                self.last_merge = time.time()
                self.metrics.model_merges.inc()
            return action is not None
        except Exception as exc:  # a foreign or damaged record must not stop the worker
            self._warn("record", f"model update {where} skipped: {exc}")
            return False

    def _lag(self, last: Any) -> None:
        _, ts = last.timestamp()
        if ts and ts > 0:
            self.metrics.sync_delay.set(max(0.0, time.time() - ts / 1000.0))
        behind = 0
        for p, at in self.positions.items():
            try:
                _, high = self._reader.get_watermark_offsets(
                    TopicPartition(self.updates, p), cached=True
                )
            except KafkaException:
                continue
            if high is not None and high >= 0:
                behind += max(0, high - at)
        self.metrics.sync_lag.set(behind)
        # Records behind, in events: each count record holds about the mean seen so far.
        per_record = self._events_read / self._records_read if self._records_read else 0.0
        self.metrics.sync_lag_events.set(round(behind * per_record))

    def _check_topic(self) -> None:
        parts = self._partitions()
        if parts is None:
            self._topic_gone()
        elif self._gone or any(p not in self.positions for p in parts):
            log.warning("model updates topic %s is back: sharing again", self.updates)
            self._assign(None, wait_s=2.0)

    def _topic_gone(self) -> None:
        if not self._gone:
            self._warn(
                "gone",
                f"model updates topic {self.updates} is missing: this worker counts its own "
                "batches and shares nothing until it is back; creating it again",
            )
        self._gone = True
        if self._create_topics() and self._partitions() is not None:
            self._assign(None, wait_s=2.0)  # the new topic from its start: sharing goes on

    def _create_topics(self) -> bool:
        try:
            w = self.settings.worker
            ensure_model_topics(
                self.settings.kafka,
                self.updates,
                self.topic,
                self.settings.topics.replication_factor,
                updates_retention_ms(w.model_publish_every_s),
            )
            return True
        except Exception as exc:  # not allowed to create topics, broker away: keep serving
            self._warn("create", f"cannot create the model topics: {exc}")
            return False

    def drain(self, model: Any, timeout_s: float = 5.0) -> None:
        """Apply what committed so far (a clean stop saves a model that includes it)."""
        if not self.active or self._gone:
            return
        self._upto = self._newest  # nothing is held back any more
        try:
            targets = self._ends()
        except KafkaException:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll(model, 1000, 0.1)
            if all(self._position(p) >= t for p, t in targets.items()):
                return

    # --- snapshots -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What a snapshot of the model taken now includes (for local snapshots)."""
        if not self.active:
            return {}
        return {"sync": {"positions": dict(self.positions), "book": self.book.to_json()}}

    def snapshot_due(self, owner: bool) -> bool:
        """Whether to take a snapshot for the model topic now (``owner``: of events[0])."""
        if not self.active or not owner or self.publish_every_s <= 0:
            return False
        busy = self._preparing is not None and self._preparing.is_alive()
        return not busy and self._prepared is None and time.monotonic() >= self._next_publish

    def prepare_snapshot(self, model: Persistent) -> None:
        """Copy the model's state now; encode it on a background thread."""
        self._next_publish = time.monotonic() + self.publish_every_s
        version = int(time.time() * 1000)
        state, extra = model.state_dict(), self.describe()["sync"]
        name, mversion, config = model.name, model.version, dict(model.config)
        manifest = {
            "model": name,
            "model_version": mversion,
            "updates_topic": self.updates,
            "positions": {str(p): o for p, o in extra["positions"].items()},
            "book": extra["book"],
        }

        def encode() -> None:
            data = snapshot_bytes(name, mversion, config, state)
            self._prepared = (version, data, manifest)

        self._preparing = threading.Thread(target=encode, name="model-publish", daemon=True)
        self._preparing.start()

    def take_snapshot(self) -> tuple[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]]:
        """(version, records) of a prepared snapshot, or (0, []) when none is ready."""
        if self._prepared is None:
            return 0, []
        version, data, manifest = self._prepared
        self._prepared = None
        self.snapshot_bytes = len(data)
        return version, snapshot_records(data, version, manifest)

    def snapshot_published(self, version: int, model: Any) -> None:
        self.published += 1
        self.book.snapshot = version
        self.metrics.snapshot_bytes.set(self.snapshot_bytes)
        self._served(model)

    # --- misc ------------------------------------------------------------------------------

    def _served(self, model: Any) -> None:
        self.metrics.observe_served(f"{model.version}@{self.book.snapshot}")

    def served_version(self, version: str) -> str:
        """What a list ranked now says it was ranked with (see :class:`model.sync.SyncBook`)."""
        return self.book.served_version(version)

    def events_counted(self) -> int:
        """Events the shared model counted so far, every worker's."""
        return self.book.events

    def _warn(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned[kind] = now
            log.warning("%s", text)

    def close(self) -> None:
        if self._preparing is not None:
            self._preparing.join(30)
        for client in (self._reader, self._marks):
            if client is not None:
                try:
                    client.close()
                except (KafkaException, RuntimeError) as exc:
                    log.debug("model sync consumer close: %s", exc)
        self._reader = self._marks = None


def _counted(book: dict[str, Any]) -> dict[str, int]:
    """The count deltas a snapshot's model includes: life -> last sequence number."""
    counted = book.get("counted")
    if not isinstance(counted, dict):
        return {}
    return {str(life): int(seq) for life, seq in counted.items()}


def _ahead(snap: TopicSnapshot, mine: dict[str, Any]) -> bool:
    """Whether the topic's snapshot includes more updates than the local one."""
    local = {int(p): int(o) for p, o in mine.get("positions", {}).items()}
    return sum(snap.positions.values()) > sum(local.values())
