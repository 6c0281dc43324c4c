"""One exception tree for the whole service.

Every error a user can cause (bad config, unreachable broker, unreadable file)
is an :class:`InterestStreamError`; the CLI prints its message on one line and
exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

__all__ = [
    "InterestStreamError",
    "ConfigError",
    "BrokerError",
    "KafkaClientError",
    "DataError",
]


class InterestStreamError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(InterestStreamError):
    """A setting is missing, malformed or contradictory."""

    exit_code = 2


class BrokerError(InterestStreamError):
    """The embedded Kafka broker could not be fetched, started or stopped."""


class KafkaClientError(InterestStreamError):
    """A Kafka operation failed; ``code`` keeps librdkafka's error name."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message if code is None else f"{message} ({code})")
        self.code = code


class DataError(InterestStreamError):
    """An input file cannot be read or parsed."""
