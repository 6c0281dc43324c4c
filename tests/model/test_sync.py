"""Copies of the interest model stay one model: deltas by item id, seeded rows, the twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import DataError
from core.types import Event
from engine.replay.pull import evaluate_models
from engine.replay.scaleout import ScaledOut
from model.data.synthetic import SyntheticStream
from model.factory import create_model
from model.persist import ModelState, model_to_bytes
from model.snapshot import model_from_bytes
from model.step import process_batch
from model.sync import COUNTS, PARAMS, decode_delta, encode_delta
from state.views import MemoryStates
from stream.cli.evaluate import main as cli_main

T0 = 1767225600000


def _events(n: int, seed: int = 3, items: int = 30) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [
        Event(f"u{rng.integers(40)}", f"i{rng.integers(items)}", "click", T0 + i, f"c{i % 4}")
        for i in range(n)
    ]


def _rows_by_id(model, table: str, agreed: bool = False) -> dict[str, np.ndarray]:  # noqa: ANN001
    weight = model.tables[table].base if agreed else model.tables[table].weight
    return {i: weight[r].numpy().copy() for i, r in model.vocab.index.items()}


def test_deltas_round_trip_and_garbage_is_one_clear_error() -> None:
    state = ModelState({"x": np.arange(6, dtype=np.float16).reshape(2, 3)}, {"ids": ["a", "é"]})
    delta = decode_delta(encode_delta(PARAMS, "interest-3", state, {"worker": "w", "seq": 4}))
    assert delta.kind == PARAMS and delta.header == {
        "worker": "w",
        "seq": 4,
        "version": "interest-3",
    }
    assert delta.state.meta == {"ids": ["a", "é"]}
    assert delta.state.arrays["x"].dtype == np.float16
    assert np.array_equal(delta.state.arrays["x"], state.arrays["x"])
    good = encode_delta(COUNTS, "v", state)
    for bad in (b"", b"garbage", good[:20], good[:4] + b"\x00" * 40, b"ISd\x07" + good[4:]):
        with pytest.raises(DataError):
            decode_delta(bad)


def test_an_item_starts_from_the_same_vector_wherever_its_row_is() -> None:
    a, b = create_model("interest", seed=5), create_model("interest", seed=5)
    events = _events(200)
    view = MemoryStates()
    process_batch(events[:1], view, a, score=False)
    process_batch(events[100:101], view, b, score=False)
    process_batch(events[100:101], view, a, score=False)  # the same item, another row in a
    process_batch(events[:1], view, b, score=False)
    item = events[100].item_id
    assert a.vocab.index[item] != b.vocab.index[item]
    for table in ("emb_in", "emb_out", "cat_in"):
        row_a, row_b = a.vocab.index[item], b.vocab.index[item]
        if table.startswith("cat"):
            row_a, row_b = (
                a.vocab.categories_of(np.array(row_a)),
                b.vocab.categories_of(np.array(row_b)),
            )
        assert torch.equal(a.tables[table].weight[row_a], b.tables[table].weight[row_b])
    other = create_model("interest", seed=6)
    process_batch(events[:1], view, other, score=False)
    assert not torch.equal(other.emb_in[0], a.emb_in[0])  # the seed still matters


def _share_counts(copies) -> None:  # noqa: ANN001
    deltas = [c.count_delta() for c in copies]
    for d in deltas:
        if d is not None:
            wire = decode_delta(encode_delta(COUNTS, "interest-3", d)).state
            for c in copies:
                c.apply_count_delta(wire)


def test_copies_that_share_counts_count_what_one_model_counts() -> None:
    events = _events(1500)
    one, views = create_model("interest"), MemoryStates()
    copies = [create_model("interest") for _ in range(2)]
    for c in copies:
        c.start_sharing()
    views2 = [MemoryStates(), MemoryStates()]
    for i in range(0, len(events), 50):
        batch = events[i : i + 50]
        process_batch(batch, views, one, score=False)
        for w, c in enumerate(copies):
            mine = [ev for ev in batch if int(ev.user_id[1:]) % 2 == w]
            process_batch(mine, views2[w], c, score=False)
        _share_counts(copies)
    for c in copies:
        assert sorted(c.vocab.index) == sorted(one.vocab.index)
        for item, row in one.vocab.index.items():
            r = c.vocab.index[item]
            assert c.pop_l.at(np.array([r]))[0] == one.pop_l.at(np.array([row]))[0]
            nbr, val = c.cooc.neighbours(r)
            ref_nbr, ref_val = one.cooc.neighbours(row)
            mine = dict(zip([c.vocab.ids[n] for n in nbr], val.tolist(), strict=True))
            ref = dict(zip([one.vocab.ids[n] for n in ref_nbr], ref_val.tolist(), strict=True))
            assert mine.keys() == ref.keys()
            assert np.allclose([mine[k] for k in ref], list(ref.values()), rtol=1e-5)


def test_parameter_changes_add_up_and_own_ones_are_adopted_after_a_restart() -> None:
    events = _events(600)
    copies = [create_model("interest", seed=1) for _ in range(2)]
    views = [MemoryStates(), MemoryStates()]
    for c in copies:
        c.start_sharing()
    for i in range(0, 300, 50):
        for w, c in enumerate(copies):
            mine = [ev for ev in events[i : i + 50] if int(ev.user_id[1:]) % 2 == w]
            process_batch(mine, views[w], c, score=False)
        _share_counts(copies)
    start = [_rows_by_id(c, "emb_out") for c in copies]
    before_restart = model_from_bytes(model_to_bytes(copies[0]))  # a snapshot of copy 0
    wires = []
    for c in copies:
        wires.append([encode_delta(PARAMS, "interest-3", p) for p in c.param_delta(4096)])
        c.param_delta_shared()
    assert len(wires[0]) > 1  # cut into parts of about 4 KiB
    for w, c in enumerate(copies):
        for data in wires[1 - w]:
            c.apply_param_delta(decode_delta(data).state)
    merged = [_rows_by_id(c, "emb_out") for c in copies]
    agreed = [_rows_by_id(c, "emb_out", agreed=True) for c in copies]
    fresh = copies[0].tables["emb_out"]
    for item in merged[0]:
        assert np.allclose(agreed[0][item], agreed[1][item], atol=1e-6)  # one model
        # what each copy kept unshared is float16 rounding, nothing more
        assert np.allclose(merged[0][item], agreed[0][item], atol=1e-4)
        assert np.allclose(merged[1][item], agreed[1][item], atol=1e-4)
        start_vec = fresh._fresh(1, [f"emb_out/{item}"])[0].numpy()
        # init + both changes = start0 + start1 - init
        expected = start[0][item] + start[1][item] - start_vec
        assert np.allclose(agreed[0][item], expected, atol=1e-3)
    dense = [c.alpha.detach().numpy() for c in copies]
    assert np.allclose(dense[0], dense[1], atol=1e-6)
    # Copy 0 restarts from the snapshot taken before it shared: its own delta, read
    # back, replaces what it had not shared, and the other's is added.
    restarted = before_restart
    restarted.start_sharing()
    for data in wires[0]:
        restarted.apply_param_delta(decode_delta(data).state, adopt=True)
    for data in wires[1]:
        restarted.apply_param_delta(decode_delta(data).state)
    again = _rows_by_id(restarted, "emb_out")
    assert all(np.allclose(again[i], agreed[0][i], atol=1e-6) for i in agreed[0])
    assert restarted.param_delta(1 << 20) == []  # nothing left to share


def test_the_twin_of_one_worker_is_the_model_itself() -> None:
    events = list(SyntheticStream(seed=4, n_events=2500))
    plain = evaluate_models({"m": create_model("interest")}, events[:500], events[500:])
    twin = ScaledOut([create_model("interest")], sync_every_s=0.0)
    one = evaluate_models({"m": twin}, events[:500], events[500:])
    assert one["m"].hits == plain["m"].hits
    two = ScaledOut([create_model("interest") for _ in range(2)], sync_every_s=0.0)
    evaluate_models({"m": two}, events[:500], events[500:])
    assert two.memory_events() == [len(events), len(events)]
    assert two.merges > 0 and two.bytes_sent[COUNTS] > 0 and two.bytes_sent[PARAMS] > 0
    alone = ScaledOut([create_model("popular") for _ in range(2)])
    assert not alone.sharing  # a model that cannot share learns alone


def test_cli_workers_reports_each_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "w.json"
    code = cli_main(
        ["evaluate", "--events", "1500", "--models", "interest,popular", "--workers", "1,2"]
        + ["--json", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["workers"]) == {"1", "2"} and result["sync_every_s"] == 2.0
    assert set(result["workers"]["2"]["models"]) == {"interest", "popular"}
    err = capsys.readouterr().err
    assert "Recall@10 | 1 worker(s) | 2 worker(s)" in err
    for bad in ("0", "two", "1,,x"):
        assert cli_main(["evaluate", "--events", "100", "--workers", bad]) == 2
        assert "--workers takes counts" in capsys.readouterr().err


def test_a_step_taken_while_a_share_is_in_flight_is_shared_the_next_time() -> None:
    # The worker takes a batch's gradient step while the batch (and the parameter
    # change it shares) commits: what that step learnt must not count as shared.
    events = _events(300)
    model, view = create_model("interest", seed=1), MemoryStates()
    model.start_sharing()
    for i in range(0, 200, 50):  # items first seen in a batch are trained from the next
        process_batch(events[i : i + 50], view, model, score=False)
    assert model.param_delta(1 << 20)  # taken now, delivered after the next step
    before = [p.detach().clone() for p in model.params.dense()]
    result = process_batch(events[200:300], view, model, score=False, learn="later")
    assert result.finish_learning is not None
    result.finish_learning()  # the step in flight
    stepped = [p.detach() - b for p, b in zip(model.params.dense(), before, strict=True)]
    model.param_delta_shared()
    left = [
        p.detach() - b for p, b in zip(model.params.dense(), model.sharing.dense_base, strict=True)
    ]
    assert any(float(s.abs().sum()) > 0 for s in stepped)
    for change, unshared in zip(stepped, left, strict=True):
        assert torch.allclose(change, unshared, atol=1e-7)  # still to be shared
    trained = model.tables["emb_out"].trained_rows()
    assert trained.size > 0  # the rows that step trained are still to be shared
    assert model.param_delta(1 << 20)
    model.param_delta_shared()
    for p, b in zip(model.params.dense(), model.sharing.dense_base, strict=True):
        assert torch.allclose(p.detach(), b)
    assert model.tables["emb_out"].trained_rows().size == 0
