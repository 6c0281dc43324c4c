"""Candidate loops and row-wise training against brute force; the candidate ranker's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.types import Event, UserState
from model.counts import cand_kernels as kern
from model.data.synthetic import SyntheticStream
from model.factory import create_model
from model.interest.model import InterestModel
from model.retrieval import RowMarks
from model.rowtable import RowTable
from model.step import process_batch
from state.views import MemoryStates
from tests.helpers import replay


def test_keep_mask_drops_padding_repeats_and_excluded_rows() -> None:
    rng = np.random.default_rng(0)
    marks = RowMarks()
    for keep_first in (False, True):
        cand = rng.integers(-1, 30, (40, 25))
        exclude = rng.integers(-1, 30, (40, 6))
        keep = marks.keep(cand, exclude, 30, keep_first=keep_first)
        for b in range(40):
            seen: set[int] = set()
            for c, x in enumerate(cand[b]):
                want = x >= 0 and x not in seen and (x not in exclude[b] or (keep_first and c == 0))
                assert keep[b, c] == want, (b, c)
                if want:
                    seen.add(int(x))


def test_dense_ids_number_distinct_rows_in_order_of_appearance() -> None:
    rng = np.random.default_rng(1)
    marks = RowMarks()
    for _ in range(5):
        values = rng.integers(-1, 500, (17, 9))
        uniq, pos = marks.dense_ids(values, 500)
        flat = values.ravel()
        _, first = np.unique(flat[flat >= 0], return_index=True)
        assert uniq.tolist() == flat[flat >= 0][np.sort(first)].tolist()
        assert (pos[values < 0] == -1).all()
        assert (uniq[pos[values >= 0]] == values[values >= 0]).all()


def test_user_categories_and_category_share_match_a_histogram() -> None:
    rng = np.random.default_rng(2)
    cats = rng.integers(0, 12, (30, 20))
    w = rng.uniform(0.0, 1.0, (30, 20)).astype(np.float32)
    scratch = np.zeros(12, dtype=np.float32)
    top = np.empty((30, 3), dtype=np.int64)
    share = np.empty((30, 3), dtype=np.float32)
    kern.user_categories(cats, w, scratch, top, share)
    cand_cats = rng.integers(0, 12, (30, 15))
    out = np.zeros((30, 15), dtype=np.float32)
    kern.category_share(cats, w, cand_cats, scratch, out)
    assert (scratch == 0).all()  # left clean for the next call
    for b in range(30):
        hist = np.zeros(12)
        np.add.at(hist, cats[b], w[b])
        hist[0] = 0.0  # category 0 is "unknown": no evidence
        hist /= hist.sum()
        order = sorted(range(1, 12), key=lambda c: (-hist[c], c))[:3]
        assert top[b].tolist() == order
        np.testing.assert_allclose(share[b], hist[order], rtol=1e-5)
        np.testing.assert_allclose(out[b], hist[cand_cats[b]], rtol=1e-5, atol=1e-7)


def test_row_table_steps_equal_adam_when_every_row_is_touched() -> None:
    gen = torch.Generator().manual_seed(0)
    table = RowTable(width=4, std=0.1, lr=0.01, generator=gen)
    table.ensure(6)
    rows = np.arange(6)
    table.reset(rows)
    param = torch.nn.Parameter(table.weight[:6].clone())
    adam = torch.optim.Adam([param], lr=0.01)
    target = torch.randn(6, 4, generator=gen)
    for _ in range(5):
        leaf = table.gather(rows, grad=True)
        ((leaf - target) ** 2).sum().backward()
        table.step(rows, leaf.grad)
        adam.zero_grad()
        ((param - target) ** 2).sum().backward()
        adam.step()
    torch.testing.assert_close(table.weight[:6], param.detach(), rtol=1e-5, atol=1e-6)


def test_row_table_moves_only_touched_rows_and_reset_forgets_history() -> None:
    gen = torch.Generator().manual_seed(1)
    table = RowTable(width=3, std=0.1, lr=0.1, generator=gen)
    table.ensure(4)
    table.reset(np.arange(4))
    before = table.weight.clone()
    leaf = table.gather(np.array([2]), grad=True)
    leaf.sum().backward()
    table.step(np.array([2]), leaf.grad)
    changed = (table.weight != before).any(dim=1).tolist()
    assert changed[:4] == [False, False, True, False]
    table.reset(np.array([2]))
    assert table.steps[2] == 0 and (table.exp_avg[2] == 0).all()
    assert not torch.equal(table.weight[2], before[2])  # a fresh random row


@pytest.mark.parametrize("exhaustive_rows", [10_000, 0], ids=["exhaustive", "candidates"])
@pytest.mark.parametrize("exclude_seen", [True, False], ids=["seen", "purchased"])
def test_lists_never_hold_excluded_items_and_are_full(
    exhaustive_rows: int, exclude_seen: bool
) -> None:
    events = list(SyntheticStream(seed=5, n_events=3000))
    model = InterestModel(seed=0, exclude_seen=exclude_seen, exhaustive_rows=exhaustive_rows)
    views, _ = replay(model, events, 100)
    users = sorted(views.states, key=lambda u: -views.states[u].n_events)[:60]
    states = [views.states[u] for u in users]
    lists = model.rank_many(users, states, 10)
    for st, ranked in zip(states, lists, strict=True):
        items = [i for i, _ in ranked]
        banned = set(st.seen if exclude_seen else st.purchased)
        assert not banned & set(items)
        assert len(items) == len(set(items)) == 10  # hundreds of items: enough candidates
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True)
    if exhaustive_rows == 0:
        # The candidate path really ranked bounded lists, not the catalogue.
        ctx = model._context(states)
        cand = model.memories.candidates(ctx, model.vocab, model.marks)
        assert cand.shape[1] < len(model.vocab)


def test_candidate_path_same_seed_same_lists() -> None:
    events = list(SyntheticStream(seed=4, n_events=1500))

    def run() -> list[list[str]]:
        torch.manual_seed(123)  # must not matter: the model owns its generator
        model, views = create_model("interest", seed=9, exhaustive_rows=0), MemoryStates()
        out = []
        for i in range(0, len(events), 64):
            out += process_batch(events[i : i + 64], views, model, keep_lists=True).lists
        return out

    assert run() == run()


def test_a_user_who_excluded_nearly_everything_gets_what_is_left() -> None:
    model = InterestModel(seed=0, exhaustive_rows=0, exclude_seen=True)
    events = [Event(f"u{i % 7}", f"i{i % 12}", "click", 1000 + i, "c") for i in range(200)]
    replay(model, events, 50)
    st = UserState()
    st.seen = [f"i{i}" for i in range(10)]
    ranked = model.rank("someone", st, 10)
    assert sorted(i for i, _ in ranked) == ["i10", "i11"]
