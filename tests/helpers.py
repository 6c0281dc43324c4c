"""Helpers the tests of every package share (each written once here)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.types import Event
from model.capabilities import RankingModel
from model.interest.encoder import load_encoder
from model.step import process_batch
from state.views import MemoryStates

__all__ = ["ev", "exposed", "needs_encoder", "replay"]

# Tests of item text need the encoder's weights (make install puts them in).
needs_encoder = pytest.mark.skipif(load_encoder() is None, reason="no text encoder installed")


def ev(user: str, item: str, ts: int = 0, kind: str = "click") -> Event:
    """An event, a click by default."""
    return Event(user, item, kind, ts)


def exposed(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """What a /metrics endpoint serving ``registry`` would show, by sample name."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def replay(
    model: RankingModel,
    events: Sequence[Event],
    batch: int = 50,
    views: MemoryStates | None = None,
) -> tuple[MemoryStates, list[list[str]]]:
    """``events`` through the pure step in batches of ``batch``: the states, and the list
    each event was scored against."""
    views = MemoryStates() if views is None else views
    lists: list[list[str]] = []
    for i in range(0, len(events), batch):
        lists += process_batch(events[i : i + batch], views, model, keep_lists=True).lists
    return views, lists
