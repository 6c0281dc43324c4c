"""Per-batch cost and memory of :class:`model.counts.cooc.SparseCoOccurrence` by catalogue size.

A synthetic long-tail stream: items in categories of 100, popularity Zipf(1)
overall and within each category; every event pairs its item with a window
of 30 recent items (70% from the item's category), so a 500-event batch is
15,000 pairs, added in both directions: 30,000 pair updates. After a warm-up
of ``--warmup`` events (rows fill up: popular ones reach ``max_neighbours``)
it times, per batch of 500 users with windows of 30:

* ``add``      — the 30,000 pair updates;
* ``scores``   — per-user candidate scores, K=2 weightings, 500 candidates each;
* ``top``      — per-user top-200 items by neighbour score (the kNN candidate source);
* ``shared``   — ``weighted_sum`` over 2,048 shared sampled columns (as the
  interest model's training step uses today);

and once: ``forget`` of 1,000 rows (a full pass over the stored pairs). It also
times :class:`model.counts.topitems.TopIndex` updates for a batch's 500 items: trending
(top 200 overall) and top 50 per category. With
``--numpy`` it also times a pure-numpy prototype of ``add`` and ``scores`` on
fixed-width rows (replace-the-lightest on a miss, no probability), to compare
with the compiled loops.

    python -m bench.cooc_cost --items 10000,100000,1000000 [--neighbours 128] [--numpy]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from model.counts.cooc import SparseCoOccurrence
from model.counts.signals import DecayedCounts
from model.counts.topitems import TopIndex

__all__ = ["main"]

BATCH, WINDOW, CAT = 500, 30, 100


class _Stream:
    def __init__(self, n_items: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n_items
        p = 1.0 / np.arange(1, n_items + 1)
        self.cdf = np.cumsum(p / p.sum())
        q = 1.0 / np.arange(1, CAT + 1)
        self.cat_cdf = np.cumsum(q / q.sum())

    def items(self, size: int | tuple[int, ...]) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(size)), self.n - 1)

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(item int64[B], window int64[B, W]) for one batch."""
        item = self.items(BATCH)
        local = np.searchsorted(self.cat_cdf, self.rng.random((BATCH, WINDOW)))
        same = np.minimum((item // CAT * CAT)[:, None] + local, self.n - 1)
        window = np.where(self.rng.random((BATCH, WINDOW)) < 0.7, same, self.items((BATCH, WINDOW)))
        return item, window


def _pairs(item: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = window.ravel()
    dst = np.repeat(item, WINDOW)
    w = np.tile(0.95 ** np.arange(WINDOW - 1, -1, -1), BATCH)
    keep = src != dst
    s, d, w = src[keep], dst[keep], w[keep]
    return np.concatenate([s, d]), np.concatenate([d, s]), np.concatenate([w, w])


class _NumpyRows:
    """Fixed-width numpy prototype: hits, appends and replace-the-lightest, all vectorised."""

    def __init__(self, n: int, m: int) -> None:
        self.nbr = np.full((n, m), -1, dtype=np.int32)
        self.val = np.zeros((n, m), dtype=np.float32)
        self.m = m

    def add(self, src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> None:
        key, inv = np.unique(src * (1 << 32) + dst, return_inverse=True)
        wsum = np.bincount(inv, w).astype(np.float32)
        s, d = key >> 32, (key & 0xFFFFFFFF).astype(np.int32)
        match = self.nbr[s] == d[:, None]  # [U, M]
        hit = match.any(1)
        self.val[s[hit], match[hit].argmax(1)] += wsum[hit]
        s, d, x = s[~hit], d[~hit], wsum[~hit]
        order = np.lexsort((-x, s))  # per row, heaviest newcomers first
        s, d, x = s[order], d[order], x[order]
        first = np.searchsorted(s, s)
        rank = np.arange(len(s)) - first
        slots = np.argsort(self.val[s] + (self.nbr[s] < 0) * -1e30, axis=1)  # empty, then light
        ok = rank < self.m
        col = slots[ok, rank[ok]]
        s, d, x = s[ok], d[ok], x[ok]
        self.nbr[s, col] = d
        self.val[s, col] = x

    def scores(self, rows: np.ndarray, w: np.ndarray, cand: np.ndarray) -> np.ndarray:
        b, k, L = w.shape
        nbr, val = self.nbr[rows], self.val[rows]  # [B, L, M]
        ukey = np.arange(b)[:, None] * (1 << 32) + cand
        order = np.argsort(ukey, axis=None)
        skey = ukey.ravel()[order]
        qkey = np.arange(b)[:, None, None] * (1 << 32) + nbr
        pos = np.minimum(np.searchsorted(skey, qkey.ravel()), len(skey) - 1)
        found = (skey[pos] == qkey.ravel()) & (nbr.ravel() >= 0)
        col = order[pos[found]] % cand.shape[1]
        out = np.zeros((b, k, cand.shape[1]), dtype=np.float32)
        bi = np.repeat(np.arange(b), L * self.m)[found]
        li = np.tile(np.repeat(np.arange(L), self.m), b)[found]
        v = val.ravel()[found]
        for kk in range(k):
            flat = np.bincount(
                bi * cand.shape[1] + col, w[bi, kk, li] * v, minlength=b * cand.shape[1]
            )
            out[:, kk] = flat.reshape(b, -1)
        return out


def _time(fn: Callable[[], object], repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000.0


def _run(n: int, m: int, warmup: int, repeat: int, with_numpy: bool) -> None:
    stream = _Stream(n, seed=n)
    co = SparseCoOccurrence(max_neighbours=m)
    t0 = time.perf_counter()
    for _ in range(warmup // BATCH):
        co.add(*_pairs(*stream.batch()), BATCH)
    fill = time.perf_counter() - t0
    batches = [_pairs(*stream.batch()) for _ in range(repeat)]
    it = iter(batches)
    add_ms = _time(lambda: co.add(*next(it), BATCH), repeat)
    _, window = stream.batch()
    rng = np.random.default_rng(1)
    w2 = rng.uniform(0.1, 1, (BATCH, 2, WINDOW)).astype(np.float32)
    cand = stream.items((BATCH, 500))
    cols = np.unique(stream.items(2048))
    for fn in (
        lambda: co.scores(window, w2, cand),
        lambda: co.top_items(window, w2[:, 0], 200),
        lambda: co.weighted_sum(window, w2, n, cols),
        lambda: co.pairs(np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)),
    ):
        fn()  # the first call of a process loads (or compiles) the loop
    score_ms = _time(lambda: co.scores(window, w2, cand), repeat)
    top_ms = _time(lambda: co.top_items(window, w2[:, 0], 200), repeat)
    shared_ms = _time(lambda: co.weighted_sum(window, w2, n, cols), repeat)
    rows = int((co._start[: co.n_rows] >= 0).sum())
    full = int((co._length[: co.n_rows] == m).sum())
    mem, pairs, slots = co.memory_bytes(), co.n_pairs, int(co._top[0])
    forget_ms = _time(lambda: co.forget(rng.integers(0, n, 1000)), 1)
    print(
        f"{n:>9,} rows  {rows:>9,} with neighbours ({full:,} full), {pairs:>11,} pairs, "
        f"{mem / 2**20:7.1f} MiB = {mem / max(rows, 1):6.0f} B/used row, "
        f"{slots * 8 / max(pairs, 1):4.1f} B/pair in blocks; warm-up {fill:.1f}s"
    )
    print(
        f"{'':>9}       per batch: add {add_ms:6.2f} ms  scores {score_ms:6.2f} ms  "
        f"top {top_ms:6.2f} ms  shared {shared_ms:6.2f} ms;  forget(1000) {forget_ms:6.1f} ms"
    )
    counts = DecayedCounts(half_life=5000.0)
    trending, by_cat = TopIndex(counts, 200), TopIndex(counts, 50)

    def index_batch() -> None:
        item = stream.batch()[0]
        counts.add(item)
        trending.update(item)
        by_cat.update(item, item // CAT)

    for _ in range(200):
        index_batch()
    index_ms = _time(index_batch, repeat)
    print(f"{'':>9}       top index: counts + trending + per-category update {index_ms:6.2f} ms")
    if with_numpy:
        ref = _NumpyRows(n, m)
        for _ in range(min(warmup, 200_000) // BATCH):
            ref.add(*_pairs(*stream.batch()))
        it = iter(batches)
        np_add = _time(lambda: ref.add(*next(it)), repeat)
        np_scores = _time(lambda: ref.scores(window, w2, cand), max(repeat // 4, 1))
        print(
            f"{'':>9}       numpy prototype: add {np_add:6.2f} ms  scores {np_scores:6.2f} ms "
            f"(dense [rows, {m}] arrays: {(ref.nbr.nbytes + ref.val.nbytes) / 2**20:.0f} MiB)"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="10000,100000,1000000")
    p.add_argument("--neighbours", type=int, default=128)
    p.add_argument("--warmup", type=int, default=500_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--numpy", action="store_true")
    args = p.parse_args(argv)
    print(
        f"batch {BATCH} events x window {WINDOW} = {2 * BATCH * WINDOW:,} pair updates; "
        f"max_neighbours {args.neighbours}, warm-up {args.warmup:,} events"
    )
    for n in (int(x) for x in args.items.split(",")):
        _run(n, args.neighbours, args.warmup, args.repeat, args.numpy)


if __name__ == "__main__":
    main()
