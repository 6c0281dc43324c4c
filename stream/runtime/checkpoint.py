"""The commit order of a micro-batch on Kafka, for either processing guarantee.

The engine's driver stages everything a batch produced in a checkpoint
(:class:`engine.checkpoint.Checkpoint`); these subclasses commit it to
Kafka. Nothing is produced before :meth:`~engine.checkpoint.Checkpoint.commit`,
so the step never runs inside a Kafka transaction and the consumer is never
polled while one is open. The loop that polls never knows which guarantee is
on; tombstones of erased users go before the batch's lists, in the same
transaction as the rest.

exactly-once (:class:`ExactlyOnceCheckpoint`, the default):
    1. begin a transaction on the worker's transactional producer;
    2. produce tombstones of erased users, lists, dead letters and changelog
       records (one per changed or deleted user and one offset record per
       partition, on the input partition's number);
    3. send the next input offsets to the transaction with the consumer's group
       metadata (KIP-447: a worker that lost the partition is fenced here);
    4. commit the transaction: outputs, changelog and offsets become visible
       to read_committed readers together, or none of them;
    5. only then write RocksDB: states, input offset and the changelog offset
       of the records just committed, in one write. Local state is never ahead
       of Kafka; if the process dies before step 5, the partition is restored
       from the changelog.
    A transaction that must be aborted (a rebalance took a partition, the broker
    refused a record) raises :class:`BatchAborted`: nothing of the batch is
    visible or stored, and the runtime reads it again. A producer that can no
    longer be used raises :class:`ProducerFenced`; if that happened during the
    commit, whether the batch committed is not known here (the coordinator may
    have received the commit): the runtime replaces the producer, which settles
    the transaction, and learns the outcome from the changelog.

at-least-once (:class:`AtLeastOnceCheckpoint`):
    1. produce the same records without a transaction;
    2. flush: every output is acknowledged, else a
       :class:`~core.errors.KafkaClientError` stops here (after a restart the
       batch is processed again and its outputs published twice);
    3. write RocksDB as above;
    4. commit the group offsets, asynchronously (the state holds the offset).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from core.errors import KafkaClientError
from engine.checkpoint import Checkpoint, OutputTopics, Record

__all__ = [
    "Outputs",
    "KafkaCheckpoint",
    "AtLeastOnceCheckpoint",
    "ExactlyOnceCheckpoint",
    "BatchAborted",
    "ProducerFenced",
]

log = logging.getLogger("interest_stream.worker")

_FLUSH_SLICE_S = 1.0
_STOP_GRACE_S = 15.0  # how long a stopping worker waits for unacknowledged outputs
_CALL_TIMEOUT_S = 5.0  # one transaction call: about the transaction timeout
_CALL_LIMIT_S = 15.0  # past this a call that ignored its timeout is given up
# How long a commit that times out is resumed: a lost broker is fenced and its
# partitions led by another within about 3 s on the local cluster (9 s with Kafka's
# defaults); kept under _CALL_LIMIT_S so a stuck call is still told from a slow one.
_COMMIT_RESUME_S = 10.0


class BatchAborted(Exception):
    """The batch's transaction was aborted: nothing of it is visible; read it again."""


class ProducerFenced(Exception):
    """The transactional producer can no longer be used (fenced or timed out): replace it.

    ``by_another`` is True when the broker says a newer producer with the same
    ``transactional.id`` fenced it (another live worker, or a restart that came back
    too early), which is also what it says of a transaction it aborted for running
    past ``transaction.timeout.ms``: ``open_s``, how long the transaction had been
    open, tells them apart.
    """

    def __init__(self, reason: str, by_another: bool = False) -> None:
        super().__init__(reason)
        self.by_another = by_another
        self.open_s = 0.0


class _Calls:
    """One daemon thread that runs transaction calls in order.

    Not a ThreadPoolExecutor: the interpreter joins those threads at exit, so
    one call stuck in the client (see :meth:`Outputs.bounded`) would keep the
    process from ever exiting.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="txn-call", daemon=True).start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((fn, future))
        return future

    def close(self) -> None:
        """The thread ends after the call it is running, if any."""
        self._jobs.put(None)


class Outputs:
    """A confluent-kafka producer as the checkpoints use it.

    ``produce`` waits while the local queue is full; delivery failures are
    collected and raised by :meth:`flush` as one :class:`KafkaClientError`.
    ``stopping`` bounds how long a flush may wait once the worker is stopping.
    """

    def __init__(self, producer: Any, stopping: threading.Event) -> None:
        self.producer = producer
        self.stopping = stopping
        self._errors: list[str] = []
        self._calls: _Calls | None = None

    def bounded(self, fn: Callable[[], Any], seconds: float) -> Any:
        """``fn()`` (a transaction call), given up after ``seconds``.

        The client's own timeouts are not always kept: a coordinator that restarted
        in the middle of a call has left ``send_offsets_to_transaction`` waiting for
        minutes. Past the limit the producer is treated as unusable (the caller
        replaces it); the stuck call is left to its thread.
        """
        if self._calls is None:
            self._calls = _Calls()
        future = self._calls.submit(fn)
        try:
            return future.result(timeout=seconds)
        except FutureTimeout:
            # The stuck call keeps its (daemon) thread; the next call gets a new one.
            self._calls.close()
            self._calls = None
            raise ProducerFenced(
                f"a transaction call did not return within {seconds:.0f}s"
            ) from None

    def close(self) -> None:
        if self._calls is not None:
            self._calls.close()
            self._calls = None

    def produce(self, record: Record, on_offset: Callable[[int, int], None] | None = None) -> None:
        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None and err.code() == KafkaError._PURGE_QUEUE:
                return  # purged by an abort: the batch is read again, nothing was lost
            if err is not None:
                self._errors.append(f"{msg.topic()}: {err.str()} ({err.name()})")
            elif on_offset is not None:
                on_offset(msg.partition(), msg.offset())

        kwargs: dict[str, Any] = {"headers": record.headers, "on_delivery": delivered}
        if record.partition is not None:
            kwargs["partition"] = record.partition
        if record.timestamp_ms is not None:
            kwargs["timestamp"] = record.timestamp_ms
        while True:
            try:
                self.producer.produce(record.topic, record.value, record.key, **kwargs)
                return
            except BufferError:
                # Local queue full: let librdkafka drain it, then retry.
                self.producer.poll(0.05)

    def poll(self) -> None:
        self.producer.poll(0)

    def take_errors(self) -> list[str]:
        errors, self._errors = self._errors, []
        return errors

    def flush(self) -> None:
        """Wait until every output is acknowledged; raise if one failed."""
        waited = 0.0
        while (left := self.producer.flush(_FLUSH_SLICE_S)) > 0:
            waited += _FLUSH_SLICE_S
            if int(waited) % 10 == 1:
                log.warning(
                    "waiting %.0fs for the broker to acknowledge %d output(s)", waited, left
                )
            if self.stopping.is_set() and waited >= _STOP_GRACE_S:
                raise KafkaClientError(
                    f"stopping with {left} output(s) the broker has not acknowledged; "
                    "their batch was not committed and will be processed again on restart"
                )
        errors = self.take_errors()
        if errors:
            raise KafkaClientError(
                f"{len(errors)} output message(s) could not be delivered: {errors[0]}"
            )


class KafkaCheckpoint(Checkpoint):
    """A checkpoint whose outputs go to Kafka through ``outputs``."""

    def __init__(self, outputs: Outputs, topics: OutputTopics) -> None:
        super().__init__(topics)
        self._outputs = outputs

    def _produce_all(self) -> None:
        changelog = self._changelog
        for record in self.records:
            self._outputs.produce(record, self.on_changelog if record.topic == changelog else None)


class AtLeastOnceCheckpoint(KafkaCheckpoint):
    """Outputs flushed, then state, then group offsets (see the module docstring)."""

    def __init__(
        self,
        outputs: Outputs,
        topics: OutputTopics,
        commit_offsets: Callable[[dict[tuple[str, int], int]], None],
    ) -> None:
        super().__init__(outputs, topics)
        self._commit_offsets = commit_offsets

    def commit(self) -> None:
        self._produce_all()
        self._outputs.flush()
        self.delivered_ms = time.time() * 1000.0
        self.commit_state()
        self._commit_offsets(self.offsets)


class ExactlyOnceCheckpoint(KafkaCheckpoint):
    """One Kafka transaction for outputs, changelog and offsets; state after it."""

    def __init__(
        self,
        outputs: Outputs,
        topics: OutputTopics,
        group_metadata: Callable[[], Any],
    ) -> None:
        super().__init__(outputs, topics)
        self._group_metadata = group_metadata

    def commit(self) -> None:
        producer = self._outputs.producer
        _call(producer.begin_transaction)
        began = time.monotonic()
        try:
            try:
                self._produce_all()
            except KafkaException as exc:
                # A producer fenced since begin_transaction refuses records with a fatal
                # error: one ProducerFenced like any other step's, not a crash.
                _raise(exc)
            if self.offsets:
                offsets = [TopicPartition(t, p, o) for (t, p), o in self.offsets.items()]
                # The group metadata is taken now, not at poll time: a rebalance since
                # then makes the broker refuse these offsets (and so the whole batch).
                metadata = self._group_metadata()
                self._outputs.bounded(
                    lambda: _once(
                        lambda: producer.send_offsets_to_transaction(
                            offsets, metadata, _CALL_TIMEOUT_S
                        )
                    ),
                    _CALL_LIMIT_S,
                )
            self._outputs.bounded(lambda: _commit_resumed(producer), _CALL_LIMIT_S)
        except _Abortable as exc:
            self._abort(producer, exc.reason)
        except ProducerFenced as exc:
            exc.open_s = time.monotonic() - began
            raise
        errors = self._outputs.take_errors()
        if errors:  # cannot happen after a commit; never let state run ahead of Kafka
            raise KafkaClientError(f"transaction committed with failed outputs: {errors[0]}")
        self.delivered_ms = time.time() * 1000.0
        self.commit_state()

    def _abort(self, producer: Any, reason: str) -> None:
        try:
            self._outputs.bounded(
                lambda: _once(lambda: producer.abort_transaction(_CALL_TIMEOUT_S)), _CALL_LIMIT_S
            )
        except _Abortable as exc:
            # A producer that cannot even abort (e.g. its coordinator restarted mid-call,
            # or a commit that timed out is still pending: "conflicting commit_transaction")
            # is replaced. The new one's init_transactions finishes what is left open: an
            # open transaction is aborted, but one whose commit reached the coordinator is
            # committed, so the runtime cannot take this batch for aborted (see
            # Worker._settle_from_changelog).
            raise ProducerFenced(f"cannot abort the transaction ({exc.reason}); {reason}") from None
        producer.poll(0)  # serve the aborted records' reports now, not in the next batch
        self._outputs.take_errors()
        raise BatchAborted(reason)


class _Abortable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _call(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` outside an open transaction: fatal errors fence, the rest stop the worker."""
    try:
        return fn()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.fatal():
            raise ProducerFenced(f"{err.name()}: {err.str()}") from None
        if isinstance(err, KafkaError):
            raise KafkaClientError(f"transaction failed: {err.str()}", err.name()) from None
        raise


def _once(fn: Callable[[], Any]) -> Any:
    """Call a transaction step once; any failure other than a fatal one aborts the batch.

    Retrying a step that timed out is allowed by the client, but a coordinator that
    restarted mid-call can leave the retry waiting for ever: reading the batch again
    costs a few milliseconds and always ends.
    """
    try:
        return fn()
    except KafkaException as exc:
        _raise(exc)


def _commit_resumed(producer: Any) -> None:
    """``commit_transaction``, resumed while it fails with a retriable error.

    A commit that timed out (its partitions' leader or its coordinator was lost,
    and the cluster has not moved them yet) cannot be aborted: the client says
    "conflicting commit_transaction", the producer must be replaced and whether the
    batch committed is then unknown. Calling it again resumes the same commit
    (librdkafka's documented way), which goes through once the leaders have moved,
    a few seconds later. A call stuck for good is still given up by
    :meth:`Outputs.bounded`.
    """
    deadline = time.monotonic() + _COMMIT_RESUME_S
    while True:
        try:
            producer.commit_transaction(_CALL_TIMEOUT_S)
            return
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if (
                not isinstance(err, KafkaError)
                or not err.retriable()
                or err.fatal()
                or err.txn_requires_abort()
                or time.monotonic() >= deadline
            ):
                _raise(exc)
            log.info("commit_transaction: %s; resuming it", err.str())


def _raise(exc: KafkaException) -> NoReturn:
    err = exc.args[0] if exc.args else None
    if not isinstance(err, KafkaError):
        raise exc
    text = f"{err.name()}: {err.str()}"
    if err.fatal():
        raise ProducerFenced(text, by_another=err.code() == KafkaError._FENCED) from None
    if err.txn_requires_abort() or err.retriable():
        raise _Abortable(text) from None
    raise KafkaClientError(f"transaction failed: {err.str()}", err.name()) from None
