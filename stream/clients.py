"""Kafka client construction: a setting librdkafka rejects is one clear error."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from core.errors import ConfigError

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
    client: Any, seconds: float, topic: str | None = None, stop: threading.Event | None = None
) -> Any:
    """``client.list_topics`` given ``seconds`` to reach the cluster, in waits of at most half
    a second: Ctrl-C (KeyboardInterrupt, or ``stop`` set by a signal handler) ends the wait
    at once instead of after the whole timeout. Raises the client's KafkaException."""
    deadline = time.monotonic() + seconds
    while True:
        wait = max(0.05, min(_SLICE_S, deadline - time.monotonic()))
        try:
            if topic is None:
                return client.list_topics(timeout=wait)
            return client.list_topics(topic, timeout=wait)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in _UNREACHABLE:
                raise
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt from None
            if time.monotonic() >= deadline:
                raise
