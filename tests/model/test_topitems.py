"""TopIndex against a full sort of the counts after every batch."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import model.counts.cooc
import model.counts.topitems
from core.errors import DataError
from model.counts.signals import DecayedCounts
from model.counts.topitems import TopIndex
from model.persist import ModelState


def _truth(counts: DecayedCounts, groups: np.ndarray, group: int, k: int) -> list[int]:
    values = counts.values(len(groups))
    rows = np.flatnonzero((groups == group) & (values > 0))
    order = np.lexsort((rows, -values[rows]))
    return rows[order][:k].tolist()


def _run(
    index: TopIndex,
    counts: DecayedCounts,
    groups: np.ndarray,
    batches: int,
    rng: np.random.Generator,
    n: int,
    check: bool = True,
) -> None:
    p = 1.0 / np.arange(1, n + 1) ** 0.8
    p = rng.permutation(p / p.sum())
    for _ in range(batches):
        rows = rng.choice(n, 50, p=p)
        counts.add(rows, rng.uniform(0.5, 2.0, rows.size))
        index.update(rows, groups[rows])
        if check:
            for g in range(groups.max() + 1):
                assert index.top(g)[0].tolist() == _truth(counts, groups, g, index.size)


def test_lists_equal_a_full_sort_under_decay() -> None:
    rng = np.random.default_rng(0)
    n = 300
    groups = rng.integers(0, 6, n)
    counts = DecayedCounts(half_life=40.0)  # fast decay: old leaders must give way
    index = TopIndex(counts, size=7)
    _run(index, counts, groups, 40, rng, n)
    rows, values = index.top(2)
    np.testing.assert_allclose(values, counts.at(rows))
    assert (np.diff(values) <= 0).all()


def test_one_group_is_trending() -> None:
    counts = DecayedCounts(half_life=10.0)
    index = TopIndex(counts, size=3)
    old = np.repeat(np.arange(5), 20)
    counts.add(old)
    index.update(old)
    new = np.array([7, 8, 9] * 20)
    counts.add(new)
    index.update(new)
    assert sorted(index.top()[0].tolist()) == [7, 8, 9]


def test_forget_removes_rows_and_refills_short_lists() -> None:
    rng = np.random.default_rng(1)
    n = 200
    groups = rng.integers(0, 3, n)
    counts = DecayedCounts(half_life=None)
    index = TopIndex(counts, size=5, slack=1)
    _run(index, counts, groups, 20, rng, n, check=False)
    gone = np.array(index.top(0)[0][:3].tolist() + index.top(1)[0][:1].tolist())
    index.forget(gone)
    counts._values[gone] = 0.0  # the owner clears a recycled row's count
    for g in range(3):
        rows = index.top(g)[0].tolist()
        assert not set(rows) & set(gone.tolist())
        assert rows == _truth(counts, groups, g, 5)
    # A recycled row comes back as a new item in another group.
    counts.add(gone[:1], 1000.0)
    index.update(gone[:1], np.array([2]))
    assert index.top(2)[0][0] == gone[0]


def test_a_late_category_moves_the_row() -> None:
    counts = DecayedCounts()
    index = TopIndex(counts, size=2, slack=0)
    counts.add(np.array([0, 0, 1, 2]))
    index.update(np.array([0, 0, 1, 2]))  # all in group 0 ("unknown")
    counts.add(np.array([0]))
    index.update(np.array([0]), np.array([4]))
    assert index.top(4)[0].tolist() == [0]
    assert sorted(index.top(0)[0].tolist()) == [1, 2]
    items, values = index.top_many(np.array([4, 0, 99]), k=2)
    assert items[0].tolist() == [0, -1] and items[2].tolist() == [-1, -1]
    assert values[0, 0] == pytest.approx(3.0)


def test_state_dict_round_trip() -> None:
    rng = np.random.default_rng(2)
    n = 100
    groups = rng.integers(0, 4, n)
    counts = DecayedCounts(half_life=50.0)
    index = TopIndex(counts, size=4)
    _run(index, counts, groups, 10, rng, n, check=False)
    back = TopIndex(counts, size=1)
    back.load_state_dict(index.state_dict())
    for g in range(4):
        assert back.top(g)[0].tolist() == index.top(g)[0].tolist()
    with pytest.raises(DataError):
        back.load_state_dict(
            ModelState(
                {"members": np.zeros((2, 3)), "group": np.zeros(4)},
                {"size": 4, "slack": 2, "short": []},
            )
        )


@pytest.mark.parametrize("module", [model.counts.cooc, model.counts.topitems])
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
