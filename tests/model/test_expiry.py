"""Memories of the served models: exact counts, expiry, row reuse, bounded growth."""

from __future__ import annotations

import numpy as np
import pytest

from core.types import Event, UserState
from model.baselines.popular import MostPopular
from model.data.synthetic import SyntheticStream
from model.interest.memories import Context
from model.interest.model import InterestModel
from model.persist import model_to_bytes
from model.snapshot import model_from_bytes
from state.views import MemoryStates
from tests.helpers import replay

DAY = 86_400_000


def _phase(day: int, items: list[str], users: int, n: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [
        Event(
            f"u{rng.integers(users)}",
            items[int(len(items) * rng.random() ** 2)],
            "click",
            day * DAY + i * 1000,
            f"c{seed}",
        )
        for i in range(n)
    ]


def _brute_force_pairs(model: InterestModel, events: list[Event]) -> np.ndarray:
    """Dense pair weights as the model should count them: each event's item with the
    user's previous ``window`` items, weight decay**age, both directions."""
    n = model.vocab.n_rows
    dense = np.zeros((n, n))
    history: dict[str, list[str]] = {}
    decay = model.memories.knn_decay[1]
    for ev in events:
        j = model.vocab.index[ev.item_id]
        past = history.setdefault(ev.user_id, [])
        for age, item in enumerate(reversed(past[-model.window :])):
            r = model.vocab.index[item]
            if r != j:
                dense[r, j] += decay**age
                dense[j, r] += decay**age
        past.append(ev.item_id)
    return dense


def test_co_occurrence_memory_equals_a_brute_force_count() -> None:
    events = list(SyntheticStream(seed=3, n_users=40, n_events=1500))
    model = InterestModel(seed=0, max_neighbours=10_000, exhaustive_rows=0)
    replay(model, events)
    dense = _brute_force_pairs(model, events)
    n = model.vocab.n_rows
    got = model.cooc.rows(np.arange(n), n)
    np.testing.assert_allclose(got, dense, rtol=1e-4, atol=1e-5)
    # Bounded rows keep the heavy neighbours of the busiest items.
    small = InterestModel(seed=0, max_neighbours=32, exhaustive_rows=0)
    replay(small, events)
    busiest = np.argsort(-(dense > 0).sum(axis=1))[:20]
    agree = []
    for r in busiest:
        assert (dense[r] > 0).sum() > 32
        top = set(np.argsort(-dense[r], kind="stable")[:5].tolist())
        agree.append(len(top & set(small.cooc.neighbours(int(r))[0][:5].tolist())) / 5)
    assert np.mean(agree) >= 0.8


def test_expired_items_leave_nothing_behind_and_their_rows_start_fresh() -> None:
    model = InterestModel(seed=0, expire_days=30, exhaustive_rows=0)
    old = [f"old{i}" for i in range(40)]
    new = [f"new{i}" for i in range(30)]
    views, _ = replay(model, _phase(0, old, 20, 1000, seed=1))
    n_old = model.vocab.n_rows
    assert model.tables["emb_out"].steps[:n_old].max() > 5
    assert model.vocab.categories == [None, "c1"] and model.tables["cat_out"].steps[1] > 5
    phase2 = _phase(100, new, 20, 50, seed=2)
    replay(model, phase2, views=views)
    assert set(model.vocab.index) == {ev.item_id for ev in phase2}
    assert model.vocab.n_rows == n_old > len(model.vocab)  # new items took old items' rows
    # The old category went with its items; the new one took its row, trained afresh.
    assert model.vocab.categories == [None, "c2"]
    assert model.tables["cat_out"].steps[1] <= 1
    live = model.vocab.live_rows()
    # Each reused row learnt from one batch at most, and counts only its new item's events.
    assert model.tables["emb_out"].steps[live].max() <= 1
    counts = {model.vocab.index[i]: 0 for i in model.vocab.index}
    for ev in phase2:
        counts[model.vocab.index[ev.item_id]] += 1
    np.testing.assert_allclose(model.pop_l.at(live), [counts[r] for r in live])
    # Co-occurrence: only pairs from the new phase (none from an old item on a reused row).
    pairs = _brute_force_pairs(model, phase2)
    np.testing.assert_allclose(model.cooc.rows(live, n_old), pairs[live], rtol=1e-4, atol=1e-5)
    dead = np.flatnonzero(~model.vocab.live())
    assert model.cooc.rows(dead, n_old).sum() == 0
    # Top lists and candidates hold live rows only; old users' histories are unknown items.
    for index in model.memories._indexes().values():
        members = index.top_many(np.arange(index.n_groups))[0]
        assert set(members[members >= 0].tolist()) <= set(live.tolist())
    ctx: Context = model._context(list(views.states.values()))
    cand = model.memories.candidates(ctx, model.vocab, model.marks)
    assert set(cand[cand >= 0].tolist()) <= set(live.tolist())
    ranked = model.rank_many(list(views.states), list(views.states.values()), 10)
    assert all(item in model.vocab.index for lst in ranked for item, _ in lst)


@pytest.mark.parametrize("name", ["interest", "popular"])
def test_a_worker_that_runs_for_months_does_not_grow(name: str) -> None:
    model = InterestModel(seed=0, exhaustive_rows=0) if name == "interest" else MostPopular()
    views = MemoryStates()
    seen: set[str] = set()
    for month in range(8):  # the catalogue turns over every month
        items = [f"m{month}-{i}" for i in range(60)]
        events = _phase(30 * month, items, 30, 400, seed=month)
        seen |= {ev.item_id for ev in events}
        replay(model, events, 100, views)
    # The default expiry (90 days, swept every 11 days) keeps four to five months of items.
    assert model.vocab.n_rows <= 5 * 60 < len(seen)
    assert len(model.vocab) <= 5 * 60
    lists = model.rank_many(["u1"], [views.states["u1"]], 10)[0]
    assert all(item.startswith(("m7-", "m6-", "m5-", "m4-")) for item, _ in lists)


def test_popular_forgets_expired_items() -> None:
    model = MostPopular(expire_days=10)
    replay(model, [Event(f"u{i}", "star", "click", i) for i in range(30)])
    replay(model, [Event("v", "newcomer", "click", 20 * DAY)])
    assert [i for i, _ in model.rank("anyone", UserState(), 5)] == ["newcomer"]


@pytest.mark.parametrize("exhaustive_rows", [10_000, 0], ids=["exhaustive", "candidates"])
def test_snapshot_after_expiry_continues_identically(exhaustive_rows: int) -> None:
    model = InterestModel(seed=2, expire_days=30, exhaustive_rows=exhaustive_rows)
    old = [f"old{i}" for i in range(40)]
    views, _ = replay(model, _phase(0, old, 20, 600, seed=1))
    replay(model, _phase(60, [f"new{i}" for i in range(30)], 20, 300, seed=2), views=views)
    assert np.any(~model.vocab.live())  # rows were freed and some reused
    # Exact weights: float16 ones (compact) may swap two near-equal scores.
    clone = model_from_bytes(model_to_bytes(model, compact=False))
    views2 = MemoryStates()
    views2.states = {u: st.copy() for u, st in views.states.items()}
    later = _phase(61, [f"new{i}" for i in range(45)], 25, 300, seed=3)
    assert replay(model, later, views=views)[1] == replay(clone, later, views=views2)[1]
