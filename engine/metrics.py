"""Prometheus metrics of a worker, built from a registry handed in.

Nothing here touches prometheus-client's global registry, so tests and the
demo can run several workers in one process, each with its own registry.

Names (``interest_`` prefix):

- ``messages_consumed_total``                   every message read from the events topic
- ``events_consumed_total{event}``              valid events by type
- ``events_applied_total``                      valid events folded into state
- ``dead_letters_total{reason}``                messages sent to the dead-letter topic
- ``events_forwarded_total``                    events sent on to their key's partition
- ``users_erased_total{had_state}``             erasure requests applied, by whether the user
                                                had a state (``false``: unknown, or erased
                                                already)
- ``events_erased_total``                       events dropped because an erasure request of
                                                their user followed them in the same batch
- ``batches_total``                             micro-batches committed
- ``batch_size_events``                         histogram of messages per micro-batch
- ``stage_seconds{stage}``                      poll, decode, step, commit, learn
- ``event_to_list_latency_seconds``             Kafka timestamp of an event -> its list delivered
- ``lists_published_total``                     recommendation lists delivered (refreshed ones too)
- ``lists_refreshed_total``                     lists re-ranked while their user was idle, delivered
                                                (``trigger="refresh"``, see engine/refresh.py)
- ``refresh_seconds``                           histogram of the time per refresh pass (re-rank
                                                and commit)
- ``list_age_seconds``                          histogram of the age of the list a user held at
                                                their next event: the staleness subscribers see
- ``events_scored_total``, ``list_hits_total``  online hit rate: events whose item was in
                                                the user's top-K just before the event
- ``consumer_lag_messages{topic,partition}``    high watermark - next offset to process
- ``users_in_state{partition}``                 users stored per assigned partition
- ``transactions_total{outcome}``               exactly-once batches and refresh passes:
                                                committed, aborted
- ``restore_remaining_records{partition}``      changelog records left to restore, per assigned
                                                partition (0 once restored)
- ``restored_records_total``                    changelog records put back into stores
- ``restore_seconds``                           histogram of how long a restore took
- ``training_loss``                             the model's loss on the last batch it learnt from
                                                (absent for models that report none)
- ``model_steps_total``                         partition batches the model learnt from
                                                (its ``learn_many`` returned)
- ``model_info{model,version}``                 1, for the model being served
- ``model_last_snapshot_timestamp_seconds``     Unix time of the model snapshot on disk (absent
                                                until there is one)
- ``model_served_info{version}``                1, for the shared model served: model version @
                                                the topic snapshot it descends from
- ``model_merges_total``                        parameter deltas merged (own shared, others' added)
- ``model_seconds_since_merge``                 since the last merge (absent until one)
- ``model_sync_lag_messages``                   model-updates records not applied yet
- ``model_sync_lag_events``                     about how many events those hold (records
                                                behind x mean events per count record)
- ``model_sync_delay_seconds``                  age of the newest update applied, when applied
- ``model_update_bytes_total{kind}``            bytes of deltas this worker published (counts,
                                                params)
- ``model_published_snapshot_bytes``            size of the last snapshot it put on the model
                                                topic (absent until one)
- ``seconds_since_progress``                    since the worker last committed a batch, applied
                                                restored records or found nothing to do (absent
                                                until its loop starts; see engine/health.py)
- ``stalled``                                   1 when that is above ``stall_after_s`` (default
                                                30 s) while events wait; ``/healthz`` then fails
- ``ready``                                     1 when joined, nothing restoring and not
                                                stalled (what ``/readyz`` answers)
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from core.errors import ConfigError
from core.types import EVENT_TYPES
from engine.events import REASONS
from engine.health import Health
from model.capabilities import Capabilities

__all__ = [
    "WorkerMetrics",
    "MetricsServer",
    "OptionalGauge",
    "ManyHistogram",
    "STAGES",
    "sample_total",
]

STAGES = ("poll", "decode", "step", "commit")
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_RESTORE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class OptionalGauge(Collector):
    """A gauge that is absent until it has a value (a dashboard shows "no data", not 0).

    ``set_function(fn)`` reads the value at scrape time instead (``fn`` returns None
    while there is none).
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._value: float | None = None
        self._function: Callable[[], float | None] | None = None
        registry.register(self)

    def set(self, value: float | None) -> None:
        self._value = None if value is None else float(value)

    def set_function(self, function: Callable[[], float | None]) -> None:
        self._function = function

    def get(self) -> float | None:
        return self._function() if self._function is not None else self._value

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        value = self.get()
        if value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=value)


class ManyHistogram(Collector):
    """A histogram that takes a batch's observations in one call (:meth:`observe_many`).

    prometheus_client's Histogram takes ~4 µs an observation; the worker observes
    every event's latency and list age, which at a few µs an event is a good share
    of what an event may cost. Here a batch's values go into the bucket counts
    with two numpy calls. Exposed like any histogram (``_bucket``, ``_count``,
    ``_sum``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.array([*buckets, math.inf], dtype=np.float64)
        self._counts = np.zeros(len(self._bounds), dtype=np.int64)  # per bucket, not summed
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def observe_many(self, values: Sequence[float]) -> None:
        if not len(values):
            return
        v = np.asarray(values, dtype=np.float64)
        # Bucket i holds the values <= its bound (Prometheus "le").
        counts = np.bincount(np.searchsorted(self._bounds, v), minlength=len(self._bounds))
        total = float(v.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        buckets = [
            (floatToGoString(bound), count)
            for bound, count in zip(self._bounds.tolist(), cumulative, strict=True)
        ]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


@dataclass(frozen=True)
class WorkerMetrics:
    """The worker's counters, histograms and gauges."""

    registry: CollectorRegistry
    messages_consumed: Counter
    events_consumed: Counter
    events_applied: Counter
    dead_letters: Counter
    events_forwarded: Counter
    users_erased: Counter
    events_erased: Counter
    batches: Counter
    batch_size: Histogram
    batch_cap: Gauge
    stage_seconds: Histogram
    latency: ManyHistogram
    lists_published: Counter
    lists_refreshed: Counter
    refresh_seconds: Histogram
    list_age: ManyHistogram
    events_scored: Counter
    list_hits: Counter
    consumer_lag: Gauge
    users_in_state: Gauge
    transactions: Counter
    restore_remaining: Gauge
    restored_records: Counter
    restore_seconds: Histogram
    training_loss: OptionalGauge
    model_steps: Counter
    model_info: Gauge
    snapshot_timestamp: OptionalGauge
    served_info: Gauge
    model_merges: Counter
    seconds_since_merge: OptionalGauge
    sync_lag: Gauge
    sync_lag_events: Gauge
    sync_delay: OptionalGauge
    update_bytes: Counter
    snapshot_bytes: OptionalGauge
    seconds_since_progress: OptionalGauge
    stalled: OptionalGauge
    ready: OptionalGauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        """All metrics registered in ``registry`` (a fresh one when None)."""
        reg = registry if registry is not None else CollectorRegistry()
        m = cls(
            registry=reg,
            messages_consumed=Counter(
                "interest_messages_consumed", "Messages read from the events topic", registry=reg
            ),
            events_consumed=Counter(
                "interest_events_consumed",
                "Valid events consumed, by event type",
                ["event"],
                registry=reg,
            ),
            events_applied=Counter(
                "interest_events_applied", "Valid events folded into user state", registry=reg
            ),
            dead_letters=Counter(
                "interest_dead_letters",
                "Messages sent to the dead-letter topic, by reason",
                ["reason"],
                registry=reg,
            ),
            events_forwarded=Counter(
                "interest_events_forwarded",
                "Valid events that arrived on another partition than their key's, forwarded",
                registry=reg,
            ),
            users_erased=Counter(
                "interest_users_erased",
                "Erasure requests applied, by whether the user had a state",
                ["had_state"],
                registry=reg,
            ),
            events_erased=Counter(
                "interest_events_erased",
                "Events dropped because an erasure request of their user followed in the batch",
                registry=reg,
            ),
            batches=Counter("interest_batches", "Micro-batches committed", registry=reg),
            batch_size=Histogram(
                "interest_batch_size_events",
                "Messages per micro-batch",
                buckets=_BATCH_BUCKETS,
                registry=reg,
            ),
            batch_cap=Gauge(
                "interest_batch_cap_events",
                "Most messages the next micro-batch takes (above batch_max_events: catching up)",
                registry=reg,
            ),
            stage_seconds=Histogram(
                "interest_stage_seconds",
                "Seconds per micro-batch stage",
                ["stage"],
                buckets=_STAGE_BUCKETS,
                registry=reg,
            ),
            latency=ManyHistogram(
                "interest_event_to_list_latency_seconds",
                "From an event's Kafka timestamp to the delivery of the list that includes it",
                _LATENCY_BUCKETS,
                reg,
            ),
            lists_published=Counter(
                "interest_lists_published", "Recommendation lists delivered", registry=reg
            ),
            lists_refreshed=Counter(
                "interest_lists_refreshed",
                "Lists re-ranked while their user was idle, delivered",
                registry=reg,
            ),
            refresh_seconds=Histogram(
                "interest_refresh_seconds",
                "Seconds per refresh pass (re-rank stale lists and commit them)",
                buckets=_STAGE_BUCKETS,
                registry=reg,
            ),
            list_age=ManyHistogram(
                "interest_list_age_seconds",
                "Age of the list a user held at their next event (from its delivery)",
                _AGE_BUCKETS,
                reg,
            ),
            events_scored=Counter(
                "interest_events_scored", "Events scored against the list before them", registry=reg
            ),
            list_hits=Counter(
                "interest_list_hits",
                "Scored events whose item was in the user's top-K",
                registry=reg,
            ),
            consumer_lag=Gauge(
                "interest_consumer_lag_messages",
                "Messages behind the high watermark, per assigned partition",
                ["topic", "partition"],
                registry=reg,
            ),
            users_in_state=Gauge(
                "interest_users_in_state",
                "Users stored, per assigned partition",
                ["partition"],
                registry=reg,
            ),
            transactions=Counter(
                "interest_transactions",
                "Exactly-once transactions of batches and refresh passes, by outcome",
                ["outcome"],
                registry=reg,
            ),
            restore_remaining=Gauge(
                "interest_restore_remaining_records",
                "Changelog records left to restore, per partition being restored",
                ["partition"],
                registry=reg,
            ),
            restored_records=Counter(
                "interest_restored_records",
                "Changelog records put back into partition stores",
                registry=reg,
            ),
            restore_seconds=Histogram(
                "interest_restore_seconds",
                "How long restoring a partition from the changelog took",
                buckets=_RESTORE_BUCKETS,
                registry=reg,
            ),
            training_loss=OptionalGauge(
                "interest_training_loss",
                "The model's training loss on the last batch it learnt from",
                reg,
            ),
            model_steps=Counter(
                "interest_model_steps", "Partition batches the model learnt from", registry=reg
            ),
            model_info=Gauge(
                "interest_model_info",
                "The model being served (value 1), by registry name and version",
                ["model", "version"],
                registry=reg,
            ),
            snapshot_timestamp=OptionalGauge(
                "interest_model_last_snapshot_timestamp_seconds",
                "Unix time of the model snapshot on disk (a crash loses what was learnt since)",
                reg,
            ),
            served_info=Gauge(
                "interest_model_served_info",
                "The shared model served (value 1): version @ the topic snapshot it descends from",
                ["version"],
                registry=reg,
            ),
            model_merges=Counter(
                "interest_model_merges",
                "Learned-parameter deltas merged: own ones shared, other workers' added",
                registry=reg,
            ),
            seconds_since_merge=OptionalGauge(
                "interest_model_seconds_since_merge",
                "Seconds since this worker last merged learned parameters",
                reg,
            ),
            sync_lag=Gauge(
                "interest_model_sync_lag_messages",
                "Model-updates records committed but not applied by this worker yet",
                registry=reg,
            ),
            sync_lag_events=Gauge(
                "interest_model_sync_lag_events",
                "About how many events the model-updates records not applied yet hold",
                registry=reg,
            ),
            sync_delay=OptionalGauge(
                "interest_model_sync_delay_seconds",
                "Age of the newest model update this worker applied, when it applied it",
                reg,
            ),
            update_bytes=Counter(
                "interest_model_update_bytes",
                "Bytes of model deltas this worker published, by kind (counts, params)",
                ["kind"],
                registry=reg,
            ),
            snapshot_bytes=OptionalGauge(
                "interest_model_published_snapshot_bytes",
                "Size of the last model snapshot this worker put on the model topic",
                reg,
            ),
            seconds_since_progress=OptionalGauge(
                "interest_seconds_since_progress",
                "Seconds since the worker last committed a batch, restored records or had "
                "nothing to do",
                reg,
            ),
            stalled=OptionalGauge(
                "interest_stalled", "1 when the worker has made no progress for too long", reg
            ),
            ready=OptionalGauge(
                "interest_ready", "1 when joined, nothing restoring and not stalled", reg
            ),
        )
        # Touch every label value so dashboards see zeros instead of gaps.
        for kind in EVENT_TYPES:
            m.events_consumed.labels(kind)
        for reason in REASONS:
            m.dead_letters.labels(reason)
        for stage in STAGES:
            m.stage_seconds.labels(stage)
        for outcome in ("committed", "aborted"):
            m.transactions.labels(outcome)
        for kind in ("counts", "params"):
            m.update_bytes.labels(kind)
        for had in ("true", "false"):
            m.users_erased.labels(had)
        return m

    def watch(self, health: Health) -> None:
        """Expose ``health`` (read at scrape time, so a hung loop still shows)."""
        self.seconds_since_progress.set_function(health.seconds_since_progress)
        self.stalled.set_function(lambda: float(health.stalled()))
        self.ready.set_function(lambda: float(health.ready()[0]))

    def observe_served(self, version: str) -> None:
        """The shared model served now is ``version`` (one series at a time)."""
        for family in self.served_info.collect():
            if any(s.labels.get("version") == version for s in family.samples):
                return
        self.served_info.clear()
        self.served_info.labels(version).set(1)

    def observe_model(self, caps: Capabilities, steps: int = 0) -> None:
        """Record which model serves, and ``steps`` more learning steps."""
        if steps:
            self.model_steps.inc(steps)
        model = caps.model
        labels = (str(model.name), str(model.version))
        if labels != self._model_labels():
            self.model_info.clear()  # one series: the model served now
            self.model_info.labels(*labels).set(1)

    def observe_loss(self, caps: Capabilities) -> None:
        """The model's last training loss, when it reports one (NaN or infinite when
        training diverged), read after the step it comes from."""
        if caps.reports_loss is not None:
            loss = caps.reports_loss.last_loss
            if loss is not None:
                self.training_loss.set(float(loss))

    def _model_labels(self) -> tuple[str, ...] | None:
        for family in self.model_info.collect():
            for sample in family.samples:
                return (sample.labels["model"], sample.labels["version"])
        return None

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the per-partition gauges of a partition this worker no longer owns."""
        for gauge, labels in (
            (self.consumer_lag, (topic, str(partition))),
            (self.users_in_state, (str(partition),)),
            (self.restore_remaining, (str(partition),)),
        ):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def sample_total(metric: Counter, by: str | None = None) -> Any:
    """A counter's current value, summed over its labels (or per value of label ``by``).

    Reads the metric itself (public ``collect``), never the whole registry.
    """
    totals: dict[str, float] = {}
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            total += sample.value
            if by is not None:
                key = sample.labels.get(by, "")
                totals[key] = totals.get(key, 0.0) + sample.value
    if by is not None:
        return {k: int(v) for k, v in totals.items()}
    return int(total)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # a probe every few seconds is not worth a log line


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _app(registry: CollectorRegistry, health: Health | None) -> Any:
    """``/metrics`` (anything else too, as prometheus_client serves), ``/healthz``, ``/readyz``."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if health is None or path not in ("/healthz", "/readyz"):
            return metrics(environ, start_response)
        ok, why = health.live() if path == "/healthz" else health.ready()
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [("Content-Type", "text/plain; charset=utf-8")],
        )
        return [f"{'ok' if ok else 'not ok'}: {why}\n".encode()]

    return app


class MetricsServer:
    """The ``/metrics`` HTTP endpoint, with ``/healthz`` and ``/readyz`` when ``health`` is
    given (see engine/health.py); port 0 means no endpoint."""

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        addr: str = "0.0.0.0",
        health: Health | None = None,
    ) -> None:
        self.registry = registry
        self.port = port
        self.addr = addr
        self.health = health
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        if self.port == 0 or self._server is not None:
            return self
        try:
            server_class = type("_Server", (_Server,), {"address_family": _family(self.addr)})
            self._server = make_server(
                self.addr,
                self.port,
                _app(self.registry, self.health),
                server_class,
                handler_class=_QuietHandler,
            )
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="metrics-http", daemon=True
            )
            self._thread.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {self.port}: {exc.strerror} "
                "(choose another with --metrics-port, or 0 to disable)"
            ) from None
        return self

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        host = "localhost" if self.addr in ("0.0.0.0", "") else self.addr
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
