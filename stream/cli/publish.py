"""Replay events into the events topic: a file in time order, or the synthetic stream.

Programmatic use::

    from stream.cli.publish import Publisher, event_source

    with Publisher(settings) as pub:
        stats = pub.publish(event_source("synthetic"), rate=500, limit=10_000, stop=stop)

Messages are keyed by user id and partitioned with librdkafka's ``murmur2_random``,
the partitioner of the Java client, so events for one user land on the same
partition whichever client produced them.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaError, Message, Producer

from core.errors import ConfigError, KafkaClientError
from core.types import Event
from engine.events import encode_event
from model.data.datasets import SOURCES
from stream.config import Settings
from stream.kafka.clients import list_topics, make_client

__all__ = ["Publisher", "PublishStats", "event_source", "PRODUCER_DEFAULTS"]

PRODUCER_DEFAULTS: dict[str, object] = {
    "partitioner": "murmur2_random",
    # An event counts as sent once every in-sync replica has it: a broker lost right
    # after the acknowledgement loses no event (idempotence implies it; said here).
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
}


def event_source(
    fmt: str,
    data: str | Path | None = None,
    seed: int = 0,
    column_map: Mapping[str, str] | None = None,
    event_map: Mapping[str, str] | None = None,
    n_items: int | None = None,
) -> Iterable[Event]:
    """Events of a file (time order) or the endless synthetic drift stream.

    ``column_map``/``event_map`` rename CSV columns and behaviour names
    (see :func:`model.data.datasets.load_events`); skipped rows are reported on stderr.
    ``n_items`` sizes the synthetic catalogue (default: the built-in one).
    """
    if fmt == "synthetic":
        from model.data.synthetic import SyntheticStream

        if data is not None:
            raise ConfigError("--data is not read with --format synthetic (the stream is made up)")
        return SyntheticStream(seed=seed, n_items=n_items)
    if fmt not in SOURCES:
        raise ConfigError(f"unknown format {fmt!r} (choose from {', '.join(SOURCES)})")
    if data is None:
        raise ConfigError(f"--data PATH is required for --format {fmt}")
    from model.data.datasets import bad_rows_message, load_events

    result = load_events(data, fmt, column_map=column_map, event_map=event_map)
    report = bad_rows_message(result, data)
    if report:
        print(f"interest-stream: {report}", file=sys.stderr)
    return result.events


@dataclass
class PublishStats:
    """Totals over a publisher's life (every ``publish`` and ``send`` call)."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Publisher:
    """A producer of events on the configured events topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        conf = PRODUCER_DEFAULTS | dict(settings.kafka.client)
        self._producer = make_client(Producer, settings.kafka.client_config(**conf))
        self._stats = PublishStats()
        self._first_error: str | None = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def check_connection(self, timeout: float = 10.0, stop: threading.Event | None = None) -> None:
        """Raise one clear error when the broker cannot be reached (``stop``: see
        :func:`stream.kafka.clients.list_topics`)."""
        kafka, events = self.settings.kafka, self.settings.topics.events
        list_topics(self._producer, kafka.bootstrap_servers, timeout, events, stop)

    def send(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Produce raw bytes (tests use this for malformed input)."""
        while True:
            try:
                self._producer.produce(
                    self.settings.topics.events,
                    value,
                    key,
                    headers=headers,
                    on_delivery=self._on_delivery,
                )
                self._stats.sent += 1
                return
            except BufferError:
                self._producer.poll(0.05)

    def publish(
        self,
        events: Iterable[Event],
        rate: float | None = None,
        limit: int | None = None,
        progress: bool = False,
        stop: threading.Event | None = None,
    ) -> PublishStats:
        """Send ``events`` (at most ``limit``, about ``rate`` per second); wait for delivery."""
        if rate is not None and not rate > 0:
            raise ConfigError("--rate must be a positive number of events per second")
        if limit is not None and limit < 0:
            raise ConfigError("--limit must not be negative")
        it: Iterator[Event] = iter(events)
        if limit is not None:
            it = itertools.islice(it, limit)
        total = len(events) if isinstance(events, Sized) else None
        if limit is not None:
            total = limit if total is None else min(limit, total)
        bar = _progress(total) if progress else None
        t0 = time.monotonic()
        try:
            for i, ev in enumerate(it):
                if stop is not None and stop.is_set():
                    break
                if rate is not None:
                    ahead = t0 + i / rate - time.monotonic()
                    if ahead > 0.001 and stop is not None and stop.wait(ahead):
                        break
                    if ahead > 0.001 and stop is None:
                        time.sleep(ahead)
                key, value = encode_event(ev)
                self.send(key, value)
                if i % 1000 == 999:
                    self._producer.poll(0)
                    if bar is not None:
                        bar.update(1000)
            self.flush()
            if bar is not None:
                bar.update(self._stats.sent - bar.n)
        finally:
            if bar is not None:
                bar.close()
        self._stats.elapsed_s += time.monotonic() - t0
        return self._stats

    def flush(self, timeout: float = 60.0) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise KafkaClientError(f"{left} event(s) not acknowledged by the broker in {timeout}s")
        if self._first_error is not None:
            raise KafkaClientError(
                f"{self._stats.failed} event(s) could not be delivered: {self._first_error}"
            )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._stats.delivered += 1
        else:
            self._stats.failed += 1
            self._first_error = self._first_error or f"{err.str()} ({err.name()})"

    @property
    def stats(self) -> PublishStats:
        return self._stats

    def close(self) -> None:
        self._producer.flush(10)


def _progress(total: int | None):  # noqa: ANN202 - tqdm's type is private
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )
