"""What the batch driver needs to know of a worker's settings (stream.config builds it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.refresh import RefreshPolicy

__all__ = ["DriverConfig", "OutputTopics"]


@dataclass(frozen=True)
class DriverConfig:
    """What the driver needs to know of the worker's settings."""

    events_topic: str = "interest.events"
    partitions: int = 4
    k: int = 10
    max_payload_bytes: int = 64 * 1024
    max_id_bytes: int = 256
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    refresh_budget_percent: int = 10
    id_key: bytes | None = field(default=None, repr=False)  # never printed
    log_ids: bool = False


@dataclass(frozen=True, slots=True)
class OutputTopics:
    """Where a batch's outputs go."""

    recommendations: str
    dead_letter: str
    changelog: str
