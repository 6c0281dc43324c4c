"""The model's health metrics, as Prometheus reads them (no broker needed)."""

from __future__ import annotations

import math

import torch
from prometheus_client import CollectorRegistry

from core.types import Event
from engine.batch import PartitionBatch, Source
from engine.isolation import ModelGuard
from engine.metrics import WorkerMetrics
from model.capabilities import capabilities
from state.store import MemoryStore
from tests.helpers import exposed
from tests.stream.helpers import TinyPopularity

TS = 1_780_000_000_000


class _Lossy(TinyPopularity):
    name = "lossy"
    version = "lossy-1"

    def __init__(self) -> None:
        super().__init__()
        self.last_loss: float | None = None


def test_a_model_without_a_loss_has_no_loss_series_and_its_version_is_shown():
    metrics = WorkerMetrics.create(CollectorRegistry())
    metrics.observe_model(capabilities(TinyPopularity()), steps=2)
    metrics.observe_loss(capabilities(TinyPopularity()))
    shown = exposed(metrics.registry)
    assert "interest_training_loss" not in shown  # absent, not a misleading 0
    assert shown["interest_model_steps_total"] == [({}, 2.0)]
    assert shown["interest_model_info"] == [({"model": "tiny-pop", "version": "tiny-pop-1"}, 1.0)]
    assert "interest_model_last_snapshot_timestamp_seconds" not in shown


def test_the_loss_is_the_last_batch_s_and_nan_stays_nan():
    metrics, model = WorkerMetrics.create(CollectorRegistry()), _Lossy()
    caps = capabilities(model)
    metrics.observe_model(caps)
    metrics.observe_loss(caps)  # before any batch: no loss yet
    assert "interest_training_loss" not in exposed(metrics.registry)
    model.last_loss = 0.75
    metrics.observe_model(caps, steps=1)
    metrics.observe_loss(caps)
    assert exposed(metrics.registry)["interest_training_loss"] == [({}, 0.75)]
    model.last_loss = float("nan")  # what the not-finite alert looks for
    metrics.observe_model(caps, steps=1)
    metrics.observe_loss(caps)
    ((_, loss),) = exposed(metrics.registry)["interest_training_loss"]
    assert math.isnan(loss)
    assert exposed(metrics.registry)["interest_model_steps_total"] == [({}, 2.0)]


def test_a_new_model_version_replaces_the_old_info_series():
    metrics, model = WorkerMetrics.create(CollectorRegistry()), _Lossy()
    metrics.observe_model(capabilities(model))
    model.version = "lossy-2"
    metrics.observe_model(capabilities(model))
    assert exposed(metrics.registry)["interest_model_info"] == [
        ({"model": "lossy", "version": "lossy-2"}, 1.0)
    ]


def test_the_snapshot_time_is_read_when_scraped():
    metrics = WorkerMetrics.create(CollectorRegistry())
    saved: list[float] = []
    metrics.snapshot_timestamp.set_function(lambda: saved[-1] if saved else None)
    assert "interest_model_last_snapshot_timestamp_seconds" not in exposed(metrics.registry)
    saved.append(1_780_000_000.5)
    assert exposed(metrics.registry)["interest_model_last_snapshot_timestamp_seconds"] == [
        ({}, 1_780_000_000.5)
    ]


class _FailsAfterLearning(TinyPopularity):
    """Takes a torch optimiser step, then raises on batches with item ``boom`` (a late bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self._opt = torch.optim.SGD([self.weight], lr=0.1)

    def learn_many(self, events, before) -> None:  # noqa: ANN001
        self._opt.zero_grad()
        (self.weight * len(events)).sum().backward()
        self._opt.step()
        super().learn_many(events, before)
        if len(events) > 1 and any(ev.item_id == "boom" for ev in events):
            raise RuntimeError("bookkeeping failed")


class _FailsBeforeLearning(TinyPopularity):
    """Raises on a batch holding ``boom`` before learning anything; single events are fine."""

    def learn_many(self, events, before) -> None:  # noqa: ANN001
        if len(events) > 1 and any(ev.item_id == "boom" for ev in events):
            raise RuntimeError("cannot learn this batch")
        super().learn_many(events, before)


def _batch(items: list[str]) -> PartitionBatch:
    batch = PartitionBatch("ev", 0, 0, len(items) - 1, messages=len(items))
    for i, item in enumerate(items):
        batch.events.append(Event(f"u{i % 3}", item, "click", TS + i))
        batch.sources.append(Source("ev", 0, i, f"u{i % 3}".encode(), b"{}", TS + i))
    return batch


def test_a_step_counts_as_learnt_only_when_learn_many_returned():
    part = MemoryStore().open_partition("ev", 0)
    guard = ModelGuard(10, lambda kind, text, exc: None)
    model = _FailsAfterLearning()
    assert guard.step(_batch(["i1", "i2", "i3"]), part, capabilities(model)).learnt
    # learn_many raised after the optimiser step: the events are applied one by one
    # without learning again, so no learning step completed.
    out = guard.step(_batch(["i1", "boom", "i3"]), part, capabilities(model))
    assert len(out.applied) == 3 and not out.learnt
    # Raised before learning: the events are learnt one by one.
    out = guard.step(_batch(["i1", "boom", "i3"]), part, capabilities(_FailsBeforeLearning()))
    assert len(out.applied) == 3 and out.learnt
