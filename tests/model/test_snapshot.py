"""Models save and load themselves: a restored model ranks and learns exactly like the original
(compact snapshots: item embeddings within float16 rounding, everything else exact)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, DataError
from model.data.synthetic import SyntheticStream
from model.factory import _REGISTRY, create_model, model_spec
from model.persist import Persistent, decode, model_to_bytes, read_header, snapshot_bytes
from model.snapshot import load_snapshot, model_from_bytes, save_snapshot
from model.step import process_batch
from state.views import MemoryStates


def _continue(model, views: MemoryStates, events, lo: int, hi: int) -> list[list[str]]:
    lists = []
    for i in range(lo, hi, 100):
        lists += process_batch(events[i : i + 100], views, model, keep_lists=True).lists
    return lists


@pytest.mark.parametrize("name", list(_REGISTRY))
def test_every_registered_model_continues_identically_after_a_round_trip(name: str) -> None:
    events = list(SyntheticStream(seed=6, n_events=2400))
    model, views = create_model(name, seed=3), MemoryStates()
    assert isinstance(model, Persistent) and model.name == model_spec(name).build().name
    _continue(model, views, events, 0, 1200)  # past 256 rows: the tables have grown
    clone = model_from_bytes(model_to_bytes(model, compact=False))
    assert type(clone) is type(model) and clone.config == model.config
    assert clone.vocab.ids == model.vocab.ids
    views2 = MemoryStates()
    views2.states = {u: st.copy() for u, st in views.states.items()}
    assert _continue(model, views, events, 1200, 2400) == _continue(
        clone, views2, events, 1200, 2400
    )


def test_compact_snapshots_store_item_embeddings_as_float16_and_the_rest_exactly() -> None:
    events = list(SyntheticStream(seed=6, n_events=1500))
    model, views = create_model("interest", seed=3), MemoryStates()
    _continue(model, views, events, 0, 1500)
    exact, compact = model_to_bytes(model, compact=False), model_to_bytes(model)
    header = read_header(compact)
    half = json.loads(header["half"])
    assert header["format"] == "interest-model-3"
    tables = ("bias", "cat_in", "cat_out", "emb_in", "emb_out")
    assert sorted(half) == [f"{t}.weight" for t in tables]
    rows = model.vocab.n_rows
    saved = sum(2 * model.tables[t].width * rows for t in ("bias", "emb_in", "emb_out"))
    assert len(exact) - len(compact) >= saved  # two bytes less per weight
    _, want = decode(exact)
    _, got = decode(compact)
    assert set(got.arrays) == set(want.arrays)
    for name, value in want.arrays.items():
        back = got.arrays[name]
        assert back.dtype == value.dtype, name  # read back as float32, like the model keeps it
        if name in half:
            np.testing.assert_allclose(back, value, rtol=2**-11, atol=2**-24, err_msg=name)
        else:
            np.testing.assert_array_equal(back, value, err_msg=name)
    clone = model_from_bytes(compact)
    assert clone.vocab.ids == model.vocab.ids


def test_snapshots_of_the_previous_format_are_read() -> None:
    model = create_model("interest", seed=1, dim=8)
    process_batch(list(SyntheticStream(seed=2, n_events=300)), MemoryStates(), model)
    state = model.state_dict()
    old = snapshot_bytes(model.name, model.version, model.config, state, compact=False)
    # What format 2 wrote: the same arrays, no "half" in the header.
    meta, body = read_header(old), old[8 + int.from_bytes(old[:8], "little") :]
    del meta["half"]
    meta["format"] = "interest-model-2"
    head = json.loads(old[8 : 8 + int.from_bytes(old[:8], "little")])
    head["__metadata__"] = meta
    text = json.dumps(head).encode()
    v2 = len(text).to_bytes(8, "little") + text + body
    clone = model_from_bytes(v2)
    assert clone.vocab.ids == model.vocab.ids
    assert np.array_equal(clone.emb_in.numpy(), model.emb_in.numpy())


def test_snapshot_files_are_written_and_read_back(tmp_path: Path) -> None:
    model = create_model("interest", seed=1, dim=8)
    process_batch(list(SyntheticStream(seed=2, n_events=300)), MemoryStates(), model)
    path = tmp_path / "model.safetensors"
    save_snapshot(model, path)
    assert not path.with_name(path.name + ".tmp").exists()
    header = read_header(path.read_bytes())
    assert header["model"] == "interest" and header["version"] == model.version
    assert load_snapshot(path).vocab.ids == model.vocab.ids


def test_unreadable_snapshots_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a snapshot")
    with pytest.raises(DataError, match="cannot read model snapshot"):
        load_snapshot(bad)
    with pytest.raises(DataError, match="cannot read model snapshot"):
        load_snapshot(tmp_path / "missing.safetensors")
    popular = create_model("popular")
    data = model_to_bytes(popular)
    with pytest.raises(DataError):
        model_from_bytes(data[: len(data) // 2])
    # A snapshot of another version of the model is refused, not half loaded.
    older = data.replace(popular.version.encode(), b"popular-nodecay-0")
    assert older != data
    with pytest.raises(DataError, match="cannot be loaded into"):
        model_from_bytes(older)


def test_the_registry_builds_every_model_by_name() -> None:
    for name, spec in _REGISTRY.items():
        model = create_model(name, seed=1)
        assert hasattr(model, "learn_many") and spec.name == name
    assert model_spec("interest-static").static and not model_spec("interest").static
    with pytest.raises(ConfigError, match="unknown model 'magic'"):
        create_model("magic")
