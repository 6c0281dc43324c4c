"""Kafka client construction: a setting librdkafka rejects is one clear error."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from core.errors import ConfigError

__all__ = ["make_client"]


def make_client(cls: type, conf: dict[str, Any]) -> Any:
    """A confluent-kafka client; a setting librdkafka rejects becomes one ConfigError."""
    try:
        return cls(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, KafkaError) else str(err)
        raise ConfigError(f"Kafka client setting rejected: {text}") from None
