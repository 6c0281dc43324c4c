"""SparseCoOccurrence against a brute-force dense count on small streams."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from core.errors import DataError
from model.counts.cooc import SparseCoOccurrence
from model.persist import ModelState


class Dense:
    """The reference: a float64 matrix with the same clock semantics, decayed exactly."""

    def __init__(self, n: int, half_life: float | None = None) -> None:
        self.m = np.zeros((n, n))
        self.rate = 0.0 if not half_life else math.log(2.0) / half_life

    def add(self, src: np.ndarray, dst: np.ndarray, w: np.ndarray, n_events: int) -> None:
        self.m *= math.exp(-self.rate * n_events)
        np.add.at(self.m, (src, dst), w)


def _stream(
    rng: np.random.Generator, n_items: int, n_batches: int, size: int, skew: float = 1.0
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    p = 1.0 / np.arange(1, n_items + 1) ** skew
    p /= p.sum()
    out = []
    for _ in range(n_batches):
        src = rng.choice(n_items, size, p=p)
        dst = rng.choice(n_items, size, p=p)
        keep = src != dst
        out.append((src[keep], dst[keep], rng.uniform(0.1, 1.0, keep.sum())))
    return out


def _both(
    n_items: int,
    limit: int,
    half_life: float | None = None,
    batches: int = 20,
    size: int = 200,
    seed: int = 0,
) -> tuple[SparseCoOccurrence, Dense]:
    rng = np.random.default_rng(seed)
    co, dense = SparseCoOccurrence(half_life, max_neighbours=limit), Dense(n_items, half_life)
    for src, dst, w in _stream(rng, n_items, batches, size):
        co.add(src, dst, w, 50)
        dense.add(src, dst, w, 50)
    return co, dense


def _as_dense(co: SparseCoOccurrence, n: int) -> np.ndarray:
    return co.rows(np.arange(n), n).astype(np.float64)


def test_rows_that_never_overflow_hold_exact_weights() -> None:
    co, dense = _both(n_items=40, limit=64)  # 39 possible neighbours: no row can overflow
    np.testing.assert_allclose(_as_dense(co, 40), dense.m, rtol=1e-5, atol=1e-6)
    assert co.n_pairs == int((dense.m > 0).sum())


def test_arena_and_row_growth_in_the_middle_of_a_batch_lose_nothing() -> None:
    # 3,000 rows x up to 16 neighbours: the 4,096-slot arena doubles several times per add.
    rng = np.random.default_rng(3)
    n = 3000
    co, dense = SparseCoOccurrence(max_neighbours=64), Dense(n)
    src = np.repeat(np.arange(n), 8)
    dst = rng.integers(0, n, src.size)
    keep = src != dst
    co.add(src[keep], dst[keep], 1.0, 1)
    dense.add(src[keep], dst[keep], np.ones(keep.sum()), 1)
    some = rng.choice(n, 50, replace=False)
    np.testing.assert_allclose(co.rows(some, n), dense.m[some], rtol=1e-6)


def test_full_rows_keep_the_heavy_hitters_and_the_dense_top_neighbours() -> None:
    limit, n = 8, 400
    rng = np.random.default_rng(1)
    co, dense = SparseCoOccurrence(max_neighbours=limit), Dense(n)
    heavy = np.array([5, 9, 13])
    for _ in range(60):
        # Row 0 meets 12 one-off neighbours per batch and each heavy one 3 times, shuffled:
        # a heavy one is 1/7 of the row's pairs, more than 1/limit (Space-Saving's bound).
        dst = np.concatenate([rng.integers(20, n, 12), np.repeat(heavy, 3)])
        rng.shuffle(dst)
        src = np.zeros_like(dst)
        co.add(src, dst, 1.0, len(dst))
        dense.add(src, dst, np.ones(len(dst)), len(dst))
    nbr, val = co.neighbours(0)
    assert len(nbr) == limit
    assert set(nbr[:3]) == set(heavy)
    # Stored weights are what arrived since the neighbour got in: never above the truth,
    # and the heavy ones, in early and never evicted, miss little.
    true = dense.m[0]
    assert (val <= true[nbr] + 1e-4).all()
    assert (co.pairs(0, heavy) >= 0.8 * true[heavy]).all()


def test_skewed_stream_top_neighbours_match_dense() -> None:
    co, dense = _both(n_items=300, limit=32, batches=60, size=400, seed=2)
    assert (co._length[: co.n_rows] <= 32).all()
    agree = []
    for r in range(20):  # the busiest rows: well past 32 distinct neighbours
        assert (dense.m[r] > 0).sum() > 32
        top_dense = set(np.argsort(-dense.m[r], kind="stable")[:5])
        top_sparse = set(co.neighbours(r)[0][:5])
        agree.append(len(top_dense & top_sparse) / 5)
    assert np.mean(agree) >= 0.8


def test_decay_matches_exact_exponential_fading_across_rescales() -> None:
    # half-life 5 events, 50 events per batch: exp(rate * t) passes the rescale threshold often.
    co, dense = _both(n_items=30, limit=64, half_life=5.0, batches=12)
    np.testing.assert_allclose(_as_dense(co, 30), dense.m, rtol=1e-4, atol=1e-12)
    co2 = SparseCoOccurrence(half_life=10.0)
    co2.add(np.array([0]), np.array([1]), 4.0, 1)
    co2.add(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 1.0, 10)
    assert co2.pairs(0, 1) == pytest.approx(2.0, rel=1e-6)


def test_forget_empties_rows_removes_references_and_reuses_blocks() -> None:
    co, dense = _both(n_items=60, limit=16, batches=10)
    gone = np.array([3, 7, 11])
    co.forget(gone)
    state = co.state_dict()
    assert not np.isin(state.arrays["indices"], gone).any()
    for r in gone:
        assert len(co.neighbours(int(r))[0]) == 0
    kept = np.setdiff1d(np.arange(60), gone)
    survivors = _as_dense(co, 60)[np.ix_(kept, kept)]
    assert (survivors > 0).sum() > 0
    # Recycled rows start from nothing and take freed blocks: the arena does not grow.
    top = int(co._top[0])
    co.add(np.array([3, 7]), np.array([7, 3]), 1.0, 2)
    assert co.neighbours(3)[0].tolist() == [7]
    assert co.pairs(7, 3) == pytest.approx(1.0)
    assert int(co._top[0]) == top


def test_state_dict_round_trip_through_safetensors(tmp_path) -> None:
    co, _ = _both(n_items=200, limit=8, half_life=500.0, batches=15)
    state = co.state_dict()
    save_file(state.arrays, str(tmp_path / "c.safetensors"))
    back = SparseCoOccurrence(half_life=500.0, max_neighbours=8)
    back.load_state_dict(ModelState(load_file(str(tmp_path / "c.safetensors")), state.meta))
    for key in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(back.state_dict().arrays[key], state.arrays[key])
    # Both go on identically, random replacements included.
    rng = np.random.default_rng(9)
    for src, dst, w in _stream(rng, 200, 5, 300):
        co.add(src, dst, w, 10)
        back.add(src, dst, w, 10)
    for key in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(back.state_dict().arrays[key], co.state_dict().arrays[key])


def test_loading_into_a_smaller_limit_keeps_the_heaviest() -> None:
    co, dense = _both(n_items=50, limit=64)
    small = SparseCoOccurrence(max_neighbours=4)
    small.load_state_dict(co.state_dict())
    for r in range(5):
        np.testing.assert_array_equal(small.neighbours(r)[0], co.neighbours(r)[0][:4])


def test_malformed_state_is_a_data_error() -> None:
    co = SparseCoOccurrence()
    state = _both(n_items=20, limit=8, batches=2)[0].state_dict()
    arrays, meta = state.arrays, state.meta
    with pytest.raises(DataError):
        co.load_state_dict(ModelState({**arrays, "indices": arrays["indices"][:-1]}, meta))
    with pytest.raises(DataError):
        co.load_state_dict(ModelState(arrays, {**meta, "format": "other"}))
    with pytest.raises(DataError):
        co.load_state_dict(ModelState({k: v for k, v in arrays.items() if k != "values"}, meta))


def _users(rng: np.random.Generator, n: int, b: int, L: int, k: int) -> tuple[np.ndarray, ...]:
    rows = rng.integers(0, n, (b, L))
    rows[:, :3] = -1  # padding
    w = rng.uniform(0, 1, (b, k, L)).astype(np.float32)
    w[:, :, 3] = 0.0
    return rows, w


def test_candidate_scores_equal_the_dense_sum_over_candidates() -> None:
    n = 80
    co, dense = _both(n_items=n, limit=128)
    rng = np.random.default_rng(4)
    rows, w = _users(rng, n, b=6, L=10, k=2)
    cand = rng.integers(0, n + 5, (6, 12))  # a few rows past the end: they score 0
    cand[:, 0] = cand[:, 5]  # a candidate listed twice
    cand[:, -1] = -1
    got = co.scores(rows, w, cand)
    m = np.vstack([dense.m, np.zeros((5, n))])
    m = np.hstack([m, np.zeros((n + 5, 5))])
    want = np.zeros_like(got)
    for b in range(6):
        real = rows[b] >= 0
        block = m[rows[b, real]][:, cand[b]] * (cand[b] >= 0)
        want[b] = w[b][:, real] @ block
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    shared = co.weighted_sum(rows, w, n, cols=np.arange(0, n, 3))
    np.testing.assert_allclose(shared, co.scores(rows, w, np.tile(np.arange(0, n, 3), (6, 1))))
    full = co.weighted_sum(rows, w, n)
    np.testing.assert_allclose(full, co.scores(rows, w, np.tile(np.arange(n), (6, 1))), rtol=1e-6)


def test_top_items_are_the_dense_top_among_neighbours() -> None:
    n = 120
    co, dense = _both(n_items=n, limit=128, batches=10)
    rng = np.random.default_rng(5)
    rows, w3 = _users(rng, n, b=5, L=8, k=1)
    w = w3[:, 0]
    exclude = np.full((5, 2), -1)
    exclude[:, 0] = rows[:, -1]
    items, scores = co.top_items(rows, w, 10, exclude=exclude)
    for b in range(5):
        real = rows[b] >= 0
        s = w[b, real] @ dense.m[rows[b, real]]
        s[exclude[b, 0]] = 0.0
        order = np.argsort(-s, kind="stable")[:10]
        order = order[s[order] > 0]
        np.testing.assert_array_equal(items[b, : len(order)], order)
        np.testing.assert_allclose(scores[b, : len(order)], s[order], rtol=1e-5)
        assert (items[b, len(order) :] == -1).all()


def test_top_items_with_column_normalisation_are_the_dense_top() -> None:
    n = 120
    co, dense = _both(n_items=n, limit=128, batches=10)
    rng = np.random.default_rng(6)
    rows, w3 = _users(rng, n, b=5, L=8, k=1)
    w = w3[:, 0]
    counts = rng.uniform(0.0, 50.0, n - 10)  # the last 10 items have no count: scale 1
    items, scores = co.top_items(rows, w, 10, col_counts=counts, col_power=0.5)
    scale = np.ones(n)
    scale[: n - 10] = np.maximum(counts, 1.0) ** -0.5
    for b in range(5):
        real = rows[b] >= 0
        s = (w[b, real] @ dense.m[rows[b, real]]) * scale
        order = np.argsort(-s, kind="stable")[:10]
        order = order[s[order] > 0]
        np.testing.assert_array_equal(items[b, : len(order)], order)
        np.testing.assert_allclose(scores[b, : len(order)], s[order], rtol=1e-5)


def test_pairs_and_top_neighbours_read_the_stored_weights() -> None:
    n = 50
    co, dense = _both(n_items=n, limit=64, batches=5)
    r = np.arange(n)[:, None]
    c = np.arange(n)[None, :]
    np.testing.assert_allclose(co.pairs(r, c), dense.m, rtol=1e-5)
    items, scores = co.top_neighbours(np.array([0, 1, n + 10]), 3)
    for q, row in enumerate([0, 1]):
        np.testing.assert_array_equal(items[q], co.neighbours(row)[0][:3])
        np.testing.assert_allclose(scores[q], np.sort(dense.m[row])[::-1][:3], rtol=1e-5)
    assert (items[2] == -1).all()


def test_rows_far_beyond_the_old_dense_cap_have_neighbours() -> None:
    co = SparseCoOccurrence(max_neighbours=8)
    co.add(np.array([3, 2_000_000]), np.array([2_000_000, 3]), np.array([2.0, 2.0]), 1)
    assert co.neighbours(2_000_000)[0].tolist() == [3]
    assert co.scores(np.array([[3]]), np.ones((1, 1, 1)), np.array([[2_000_000, 5]])).tolist() == [
        [[2.0, 0.0]]
    ]
    # Memory follows the rows in use, not the highest row: about 21 bytes of headers per row.
    assert co.memory_bytes() < 64 * 2**20


def test_without_a_writable_cache_the_loops_compile_in_process() -> None:
    # numba refuses cache=True when no cache dir is writable (a read-only image run
    # as another user); the kernels must then still load.
    code = (
        "import numba\n"
        "njit = numba.njit\n"
        "def refuse(*a, **k):\n"
        "    if k.get('cache'):\n"
        "        raise RuntimeError('cannot cache function: no locator available')\n"
        "    return njit(*a, **k)\n"
        "numba.njit = refuse\n"
        "import numpy as np\n"
        "import model.counts.cooc_kernels as kern\n"
        "from model.counts.cooc import SparseCoOccurrence\n"
        "co = SparseCoOccurrence()\n"
        "print(kern.CACHED, co.pairs(np.array([0]), np.array([1])).tolist())\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == ["False", "[0.0]"]


def test_windows_moved_on_by_one_event_score_as_computed_afresh() -> None:
    # Three users' consecutive windows, interleaved as in a training batch, plus
    # windows shared by two users and one that only looks like a shift (other types).
    n, L = 60, 8
    co, _ = _both(n_items=n, limit=16)  # full rows: the dropped item's row is capped too
    rng = np.random.default_rng(9)
    decay = np.array([0.6, 0.95], dtype=np.float32)
    rows, types = [], []
    seqs = {u: [] for u in range(3)}
    for _ in range(40):
        u = int(rng.integers(0, 3))
        window = ([-1] * L + seqs[u])[-L:]
        rows.append(window)
        types.append([0 if r < 0 else (r * 7 + u) % 4 for r in window])
        seqs[u].append(int(rng.integers(0, n)))
    rows.append(rows[5][1:] + [3])
    types.append([(t + 1) % 4 for t in types[5][1:]] + [1])  # same rows, other types
    rows.append(list(rows[-2]))  # the same window twice
    types.append(list(types[-2]))
    rows_a, types_a = np.array(rows, dtype=np.int64), np.array(types, dtype=np.int64)
    ages = np.arange(L - 1, -1, -1, dtype=np.float32)
    base = rng.uniform(0.5, 2.0, 4).astype(np.float32)[types_a] * (rows_a >= 0)
    w = (base[:, None, :] * decay[None, :, None] ** ages[None, None, :]).astype(np.float32)
    fresh = co.weighted_sum(rows_a, w, n)
    moved = co.weighted_sum(rows_a, w, n, shift=(types_a, decay))
    np.testing.assert_allclose(moved, fresh, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(moved[fresh == 0], 0.0)  # no rounding left where none is
    stored = np.vstack([_as_dense(co, n), np.zeros((1, n))])  # row -1: padding, nothing
    want = np.einsum("bkl,bli->bki", w, stored[rows_a])
    np.testing.assert_allclose(fresh, want, rtol=1e-4, atol=1e-5)
    assert (moved >= 0).all()


def test_a_window_left_without_neighbours_scores_exactly_zero() -> None:
    # Only row 0 has neighbours; once it drops out of the window nothing is left, and a
    # later normalisation by the row's largest score must not blow rounding up to 1.
    co = SparseCoOccurrence(max_neighbours=64)
    rng = np.random.default_rng(3)
    co.add(np.zeros(40, dtype=np.int64), np.arange(1, 41), rng.uniform(0.1, 9.0, 40), 1)
    rows = np.array([[0, 1, 2, 3], [1, 2, 3, 1]], dtype=np.int64)
    types = np.array([[1, 0, 2, 0], [0, 2, 0, 3]], dtype=np.int64)
    decay = np.array([0.6, 0.95], dtype=np.float32)
    ages = np.arange(3, -1, -1, dtype=np.float32)
    w = (rng.uniform(0.5, 3.0, (2, 1, 4)) * decay[None, :, None] ** ages).astype(np.float32)
    moved = co.weighted_sum(rows, w, 50, shift=(types, decay))
    assert moved[0].max() > 0
    np.testing.assert_array_equal(moved[1], 0.0)
    np.testing.assert_allclose(moved, co.weighted_sum(rows, w, 50), rtol=1e-5)
