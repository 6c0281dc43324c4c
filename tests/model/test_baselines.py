"""Baselines on tiny hand-made streams where the right answer is known."""

from __future__ import annotations

from core.types import Event, UserState
from model.baselines.classic import IncrementalMF, SequentialItemKNN
from model.baselines.popular import DecayedPopularity, MostPopular
from model.step import process_batch
from state.views import MemoryStates
from tests.helpers import ev as _ev


def test_most_popular_ranks_by_count_and_excludes_purchases() -> None:
    model = MostPopular()
    views = MemoryStates()
    stream = [
        _ev("a", "x", 1),
        _ev("b", "x", 2),
        _ev("c", "x", 3),
        _ev("a", "y", 4),
        _ev("b", "y", 5),
        _ev("c", "z", 6),
        _ev("d", "x", 7, "purchase"),
    ]
    res = process_batch(stream, views, model, k=3)
    lists = {r.user_id: [i for i, _ in r.items] for r in res.recommendations}
    assert lists["a"] == ["x", "y", "z"]
    assert lists["d"] == ["y", "z"]  # bought x, so it is gone


def test_decayed_popularity_prefers_what_is_trending() -> None:
    model = DecayedPopularity(half_life=3)
    stream = [_ev(f"u{i}", "old", i) for i in range(10)] + [
        _ev(f"v{i}", "new", 20 + i) for i in range(4)
    ]
    process_batch(stream, MemoryStates(), model, k=2)
    assert model.rank("anyone", UserState(), 2)[0][0] == "new"


def test_item_knn_recommends_what_followed_the_last_item() -> None:
    model = SequentialItemKNN(window=3)
    views = MemoryStates()
    history = []
    t = 0
    for u in range(20):  # everyone watches a -> b, half also watch c -> d
        for item in ("a", "b") + (("c", "d") if u % 2 else ()):
            t += 1
            history.append(_ev(f"u{u}", item, t))
    history += [_ev(f"pop{i}", "p", 1000 + i) for i in range(30)]  # p is the most popular
    process_batch(history, views, model, k=3)
    res = process_batch([_ev("new", "c", 5000)], views, model, k=3)
    top = [i for i, _ in res.recommendations[0].items]
    assert top[0] == "d"


def test_incremental_mf_separates_two_taste_groups() -> None:
    model = IncrementalMF(dim=8, lr=0.1, seed=1, exclude_seen=True)
    views = MemoryStates()
    groups = {"g1": ["a", "b", "c", "d"], "g2": ["w", "x", "y", "z"]}
    t = 0
    for _ in range(30):
        batch = []
        for g, items in groups.items():
            for u in range(6):
                for item in items:
                    t += 1
                    batch.append(_ev(f"{g}-{u}", item, t))
        process_batch(batch, views, model, k=4)
    # A new member of group 1 who saw two of its items: the other two come first.
    process_batch([_ev("fresh", "a", t + 1), _ev("fresh", "b", t + 2)] * 10, views, model, k=2)
    top = {i for i, _ in model.rank("fresh", views.states["fresh"], 2)}
    assert top == {"c", "d"}


def test_popular_from_its_top_list_ranks_like_a_full_scan() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    stream = [
        Event(f"u{rng.integers(50)}", f"i{int(3000 * rng.random() ** 3)}", "click", i)
        for i in range(6000)
    ]
    full, top = MostPopular(exclude_seen=True), MostPopular(exclude_seen=True, exhaustive_rows=0)
    views = MemoryStates()
    for i in range(0, len(stream), 500):
        process_batch(stream[i : i + 500], views, full, score=False)
        process_batch(stream[i : i + 500], MemoryStates(), top, score=False)
    assert top.vocab.n_rows > 1000 and top.candidates([], []) is not None
    users = sorted(views.states)
    states = [views.states[u] for u in users]
    lists = zip(full.rank_many(users, states, 10), top.rank_many(users, states, 10), strict=True)
    for (a, b), st in zip(lists, states, strict=True):
        assert [s for _, s in a] == [s for _, s in b]  # the same counts (ties may swap items)
        assert not {i for i, _ in b} & set(st.seen)
