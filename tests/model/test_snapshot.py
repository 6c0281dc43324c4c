"""Snapshots: a restored model ranks and keeps learning exactly like the original."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from model.evaluate import MemoryStates
from model.interest import InterestModel
from model.snapshot import load_snapshot, save_snapshot
from model.step import process_batch
from model.synthetic import SyntheticStream
from stream.errors import DataError


def test_restored_model_continues_identically(tmp_path: Path) -> None:
    events = list(SyntheticStream(seed=6, n_events=2400))
    model, views = InterestModel(seed=3, dim=16), MemoryStates()
    for i in range(0, 1200, 100):  # 1200 events: the tables have grown past 256 rows
        process_batch(events[i:i + 100], views, model)
    path = tmp_path / "model.safetensors"
    save_snapshot(model, path)
    clone = load_snapshot(path)
    assert clone.vocab.ids == model.vocab.ids and clone.config == model.config
    # Both continue on the same events, each with its own copy of the states.
    views2 = MemoryStates()
    views2.states = copy.deepcopy(views.states)
    out = []
    for m, v in ((model, views), (clone, views2)):
        lists = []
        for i in range(1200, 2400, 100):
            lists += process_batch(events[i:i + 100], v, m, keep_lists=True).lists
        out.append(lists)
    assert out[0] == out[1]


def test_unreadable_snapshot_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a snapshot")
    with pytest.raises(DataError, match="cannot read model snapshot"):
        load_snapshot(bad)
    with pytest.raises(DataError):
        load_snapshot(tmp_path / "missing.safetensors")
