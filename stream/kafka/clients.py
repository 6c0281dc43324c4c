"""Kafka client construction: a setting librdkafka rejects is one clear error."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from core.errors import ConfigError, KafkaClientError

__all__ = ["make_client", "list_topics"]

# Longest single wait for metadata: a signal is served between two.
_SLICE_S = 0.5
_UNREACHABLE = (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)


def make_client(cls: type, conf: dict[str, Any]) -> Any:
    """A confluent-kafka client; a setting librdkafka rejects becomes one ConfigError."""
    try:
        return cls(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, KafkaError) else str(err)
        raise ConfigError(f"Kafka client setting rejected: {text}") from None


def list_topics(
    client: Any,
    bootstrap: str | None,
    seconds: float,
    topic: str | None = None,
    stop: threading.Event | None = None,
) -> Any:
    """``client.list_topics`` given ``seconds`` to reach the cluster at ``bootstrap``, in
    waits of at most half a second: Ctrl-C (KeyboardInterrupt, or ``stop`` set by a signal
    handler) ends the wait at once instead of after the whole timeout. A cluster that does
    not answer (or refuses) is one KafkaClientError, "cannot reach Kafka at ...".
    """
    deadline = time.monotonic() + seconds
    while True:
        wait = max(0.05, min(_SLICE_S, deadline - time.monotonic()))
        try:
            if topic is None:
                return client.list_topics(timeout=wait)
            return client.list_topics(topic, timeout=wait)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retry = isinstance(err, KafkaError) and err.code() in _UNREACHABLE
            if retry and stop is not None and stop.is_set():
                raise KeyboardInterrupt from None
            if not retry or time.monotonic() >= deadline:
                name = err.name() if isinstance(err, KafkaError) else None
                raise KafkaClientError(f"cannot reach Kafka at {bootstrap}", name) from None
