"""Bounded sparse item co-occurrence: the kNN memory for catalogues of millions of items.

:class:`SparseCoOccurrence` keeps, for every item row, at most
``max_neighbours`` neighbour rows with their (optionally decayed) weights. When
a full row meets a new neighbour of weight x, the newcomer takes the place of
the lightest entry (weight v) with probability x / (v + x), as in Space-Saving
(Metwally et al., 2005; Schelter et al., SSDBM 2019, for co-occurrence) but
without inheriting v: a neighbour that keeps coming back gets in after about
v / x tries and is then counted exactly, while one-off pairs rarely displace
anything. Stored weights are exact since the neighbour entered its row, and an
update costs O(max_neighbours) whatever the catalogue.

Decay works as in :mod:`model.counts.signals`: stored weights are multiplied by
``exp(rate * t)`` so that time passing costs nothing per pair.

Memory: 13 bytes of row header (+ 4 bytes of scoring scratch) per item row,
plus 8 bytes (int32 neighbour + float32 weight) per slot of the row's block.
Blocks hold 4, 8, 16, ... slots up to ``max_neighbours``, so a row with n
neighbours uses fewer than 2n slots, and the arena grows by doubling: a full
row of 128 costs about 1 KiB, a long-tail item with a handful of neighbours
under 100 bytes (measured figures in ``docs/model/results-history.md``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.errors import DataError
from model.counts import cooc_kernels as kern
from model.persist import ModelState

__all__ = ["SparseCoOccurrence", "STATE_FORMAT", "DEFAULT_NEIGHBOURS", "warm_up"]

STATE_FORMAT = "sparse-cooc-1"
# Recall@10 of item-kNN on the first 30% of MovieLens-100K (FluRS protocol): 64 -> 0.158,
# 128 -> 0.169, 256 -> 0.172 (dense: 0.171); flat on the synthetic stream. 128 costs
# about 3 ms per 30,000 pair updates and 11 ms to score 500 users x 500 candidates.
DEFAULT_NEIGHBOURS = 128
_RESCALE_AT = 30.0  # as model.counts.signals: exp(30) ~ 1e13, far from float32 limits


def _grown(old: np.ndarray, size: int, fill: float | int) -> np.ndarray:
    new = np.full(size, fill, dtype=old.dtype)
    new[: len(old)] = old
    return new


class SparseCoOccurrence:
    """Decayed co-occurrence counts with at most ``max_neighbours`` neighbours per row.

    Rows are item rows (0, 1, 2, ... as handed out by the vocabulary); there is
    no cap on their number. ``half_life`` is in events (None: never fade).
    Not thread-safe: the scoring loops share a scratch map.

    >>> co = SparseCoOccurrence(max_neighbours=4)
    >>> co.add(np.array([0, 0, 1]), np.array([1, 2, 0]), np.array([1.0, 2.0, 1.0]), 3)
    >>> co.neighbours(0)
    (array([2, 1]), array([2., 1.], dtype=float32))
    >>> co.pairs(np.array([1, 2]), np.array([0, 0])).tolist()
    [1.0, 0.0]
    """

    def __init__(
        self, half_life: float | None = None, max_neighbours: int = DEFAULT_NEIGHBOURS
    ) -> None:
        if max_neighbours < 1:
            raise ValueError("max_neighbours must be at least 1")
        self.half_life = half_life
        self.rate = 0.0 if not half_life else math.log(2.0) / half_life
        self.max_neighbours = int(max_neighbours)
        self.t = 0.0
        unit = kern.UNIT
        limit = -(-self.max_neighbours // unit) * unit  # blocks are whole units
        sizes = [unit]
        while sizes[-1] < limit:
            sizes.append(min(2 * sizes[-1], limit))
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._clear(256, 4096)

    def _clear(self, n_rows: int, n_slots: int) -> None:
        self.n_rows = 0  # 1 + the highest row ever added
        self._start = np.full(n_rows, -1, dtype=np.int64)
        self._length = np.zeros(n_rows, dtype=np.int32)
        self._klass = np.zeros(n_rows, dtype=np.int8)
        self._slot = np.full(n_rows, -1, dtype=np.int32)  # scratch for the scoring loops
        self._nbr = np.zeros(n_slots, dtype=np.int32)
        self._val = np.zeros(n_slots, dtype=np.float32)
        self._top = np.zeros(1, dtype=np.int64)
        self._draws = np.zeros(1, dtype=np.int64)  # coin tosses so far (see add_pairs)
        self._free = np.full(len(self._sizes), -1, dtype=np.int64)

    # storage --------------------------------------------------------------------
    def _ensure_rows(self, n: int) -> None:
        self.n_rows = max(self.n_rows, n)
        size = len(self._start)
        if n <= size:
            return
        while size < n:
            size *= 2
        self._start = _grown(self._start, size, -1)
        self._length = _grown(self._length, size, 0)
        self._klass = _grown(self._klass, size, 0)
        self._slot = _grown(self._slot, size, -1)

    def _grow_arena(self) -> None:
        size = 2 * len(self._nbr)
        self._nbr = _grown(self._nbr, size, 0)
        self._val = _grown(self._val, size, 0.0)

    @property
    def n_pairs(self) -> int:
        """Number of stored (row, neighbour) entries."""
        return int(self._length[: self.n_rows].sum())

    def memory_bytes(self) -> int:
        """Bytes held by the row headers, the scratch map and the arena."""
        arrays = (self._start, self._length, self._klass, self._slot, self._nbr, self._val)
        return sum(a.nbytes for a in arrays)

    def _scale(self) -> np.float32:
        return np.float32(math.exp(-self.rate * self.t))

    # learning -------------------------------------------------------------------
    def add(
        self, src: np.ndarray, dst: np.ndarray, weights: np.ndarray | float, n_events: int
    ) -> None:
        """Add ``weights[p]`` to pair ``(src[p], dst[p])``; time advances by ``n_events``.

        ``src``/``dst`` are int[P] rows (negative ones are skipped), ``weights``
        float[P] or a scalar. Pairs are applied in order, so a row that fills
        up within the batch already replaces its lightest entries.
        """
        self.t += n_events
        if self.rate * self.t > _RESCALE_AT:
            self._val[: self._top[0]] *= np.float32(math.exp(-self.rate * self.t))
            self.t = 0.0
        src = np.ascontiguousarray(src, dtype=np.int64).ravel()
        dst = np.ascontiguousarray(dst, dtype=np.int64).ravel()
        if src.size == 0:
            return
        if src.shape != dst.shape:
            raise ValueError("src and dst must have the same length")
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), src.shape)
        w = np.ascontiguousarray(w * math.exp(self.rate * self.t), dtype=np.float32)
        self._ensure_rows(int(max(src.max(), dst.max())) + 1)
        done = 0
        while True:
            done = kern.add_pairs(
                self._start,
                self._length,
                self._klass,
                self._nbr,
                self._val,
                self._sizes,
                self._free,
                self._top,
                self.max_neighbours,
                src,
                dst,
                w,
                done,
                self._draws,
            )
            if done >= src.size:
                return
            self._grow_arena()

    def forget(self, rows: np.ndarray) -> None:
        """Drop ``rows`` (e.g. items whose row is about to be reused) and every entry naming them.

        Costs one pass over all stored pairs, however few rows: call it with
        every expired row of a sweep at once.
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        rows = rows[(rows >= 0) & (rows < len(self._start))]
        if rows.size == 0:
            return
        dead = np.zeros(len(self._start), dtype=np.bool_)
        dead[rows] = True
        kern.forget_rows(
            self._start, self._length, self._klass, self._nbr, self._val, self._free, dead
        )

    # reading --------------------------------------------------------------------
    def neighbours(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64[n], float32[n]): the stored neighbours of ``row``, heaviest first."""
        if not 0 <= row < len(self._start) or self._start[row] < 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        off, n = int(self._start[row]), int(self._length[row])
        nbr = self._nbr[off : off + n].astype(np.int64)
        val = self._val[off : off + n] * self._scale()
        order = np.argsort(-val, kind="stable")
        return nbr[order], val[order]

    def top_neighbours(self, rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64[R, m], float32[R, m]): each row's ``m`` heaviest neighbours (-1, 0 padded)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64).ravel()
        items = np.full((rows.size, m), -1, dtype=np.int64)
        scores = np.zeros((rows.size, m), dtype=np.float32)
        if rows.size and m > 0:
            kern.top_neighbours(
                self._start, self._length, self._nbr, self._val, rows, m, items, scores
            )
        return items, scores * self._scale()

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float32 decayed weights of pairs ``(rows, cols)`` (broadcast together); 0 if absent."""
        r, c = np.broadcast_arrays(
            np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        )
        out = np.empty(r.shape, dtype=np.float32)
        kern.lookup_pairs(
            self._start,
            self._length,
            self._nbr,
            self._val,
            np.ascontiguousarray(r).ravel(),
            np.ascontiguousarray(c).ravel(),
            out.reshape(-1),
        )
        return out * self._scale()

    def rows(self, rows: np.ndarray, n: int) -> np.ndarray:
        """float32[R, n]: dense decayed weights from each row to items ``0..n-1``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 1)  # one "user" per row
        return self.weighted_sum(rows, np.ones((len(rows), 1, 1), dtype=np.float32), n)[:, 0]

    def scores(self, rows: np.ndarray, weights: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """float32[B, K, C]: ``sum_l weights[b, k, l] * C[rows[b, l], cand[b, c]]``.

        ``rows`` int[B, L] (negative: padding), ``weights`` float32[B, K, L],
        ``cand`` int[B, C] per-user candidate rows (negative: padding, scores 0).
        Costs O(B * (C + L * max_neighbours)), not O(catalogue).
        """
        rows, w = self._users(rows, weights)
        cand = np.ascontiguousarray(cand, dtype=np.int64)
        out = np.zeros((w.shape[0], w.shape[1], cand.shape[1]), dtype=np.float32)
        if out.size and rows.size:
            kern.candidate_scores(
                self._start, self._length, self._nbr, self._val, rows, w, cand, self._slot, out
            )
            out *= self._scale()
        return out

    def weighted_sum(
        self,
        rows: np.ndarray,
        weights: np.ndarray,
        n: int,
        cols: np.ndarray | None = None,
        shift: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """float32[B, K, C]: as :meth:`scores` with the same columns for every user.

        ``cols`` int[C] shared candidates, or None for all items ``0..n-1``
        (then the output alone is O(B * n): for small catalogues). ``shift``
        (int64[B, L] event types of the rows, float32[K] ratios): the weights
        are geometric in position (``weights[b, k, l] = ratio[k] * weights[b, k,
        l + 1]`` for the same row and type), so a context that is another's moved
        on by one event is computed from that one (equal to float rounding).
        """
        rows, w = self._users(rows, weights)
        if cols is not None:
            cols = np.asarray(cols, dtype=np.int64)
            return self.scores(rows, w, np.broadcast_to(cols, (w.shape[0], cols.size)))
        out = np.zeros((w.shape[0], w.shape[1], n), dtype=np.float32)
        if out.size and rows.size:
            arena = (self._start, self._length, self._nbr, self._val)
            if shift is None:
                kern.dense_scores(*arena, rows, w, out)
            else:
                types = np.ascontiguousarray(shift[0], dtype=np.int64)
                ratio = np.ascontiguousarray(shift[1], dtype=np.float32)
                kern.dense_scores_shifted(*arena, rows, types, w, ratio, out)
            out *= self._scale()
        return out

    def top_items(
        self,
        rows: np.ndarray,
        weights: np.ndarray,
        m: int,
        exclude: np.ndarray | None = None,
        col_counts: np.ndarray | None = None,
        col_power: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(int64[B, m], float32[B, m]): per user the ``m`` best items by neighbour score.

        The score of item i is ``sum_l weights[b, l] * C[rows[b, l], i]``
        (``weights`` float32[B, L]), times ``max(col_counts[i], 1) ** -col_power``
        when ``col_counts`` (float64[n], e.g. item counts) is given; only
        neighbours of the user's rows can score, so this is the kNN candidate
        source. ``exclude`` int[B, E] (-1 padded) lists rows to leave out.
        Unfilled places hold -1 and 0.
        """
        rows, w = self._users(rows, np.asarray(weights)[:, None, :])
        b = w.shape[0]
        items = np.full((b, m), -1, dtype=np.int64)
        scores = np.zeros((b, m), dtype=np.float32)
        if b == 0 or m <= 0 or rows.size == 0:
            return items, scores
        ex = (
            np.zeros((b, 0), dtype=np.int64)
            if exclude is None
            else np.ascontiguousarray(exclude, dtype=np.int64).reshape(b, -1)
        )
        kern.top_items(
            self._start,
            self._length,
            self._nbr,
            self._val,
            rows,
            np.ascontiguousarray(w[:, 0, :]),
            ex,
            m,
            self._slot,
            np.zeros(0) if col_counts is None else np.asarray(col_counts, dtype=np.float64),
            0.0 if col_counts is None else float(col_power),
            items,
            scores,
        )
        return items, scores * self._scale()

    @staticmethod
    def _users(rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        w = np.ascontiguousarray(weights, dtype=np.float32)
        if (
            rows.ndim != 2
            or w.ndim != 3
            or w.shape[0] != rows.shape[0]
            or w.shape[2] != rows.shape[1]
        ):
            raise ValueError(
                f"rows [B, L] and weights [B, K, L] expected, got {rows.shape} and {w.shape}"
            )
        return rows, w

    # snapshots ------------------------------------------------------------------
    def state_dict(self) -> ModelState:
        """Compact CSR copy: ``indptr`` int64[R+1], ``indices`` int32, ``values`` float32.

        Values are stored weights (multiplied by ``exp(rate * t)``) with the clock
        ``t``; ``draws`` seeds the replacement coin; scalars are plain JSON-able values.
        """
        n = self.n_rows
        start = self._start[:n]
        lengths = np.where(start >= 0, self._length[:n], 0).astype(np.int64)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        nnz = int(indptr[-1])
        idx = np.repeat(start, lengths) + (np.arange(nnz) - np.repeat(indptr[:-1], lengths))
        arrays = {
            "indptr": indptr,
            "indices": self._nbr[idx].copy(),
            "values": self._val[idx].copy(),
        }
        meta = {
            "format": STATE_FORMAT,
            "t": float(self.t),
            "draws": int(self._draws[0]),
            "half_life": self.half_life,
            "max_neighbours": self.max_neighbours,
        }
        return ModelState(arrays, meta)

    def load_state_dict(self, saved: ModelState) -> None:
        """Replace the contents with a :meth:`state_dict`; malformed input raises DataError.

        Rows longer than this object's ``max_neighbours`` keep their heaviest entries.
        """
        state: dict[str, Any] = {**saved.meta, **saved.arrays}
        try:
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"format {state.get('format')!r}")
            indptr = np.asarray(state["indptr"], dtype=np.int64)
            indices = np.asarray(state["indices"], dtype=np.int32)
            values = np.asarray(state["values"], dtype=np.float32)
            t = float(state["t"])
            draws = int(state.get("draws", 0))
            n = len(indptr) - 1
            lengths = np.diff(indptr)
            if (
                n < 0
                or indptr[0] != 0
                or (lengths < 0).any()
                or indptr[-1] != len(indices)
                or len(values) != len(indices)
                or (indices < 0).any()
                or (indices >= max(n, 1)).any()
            ):
                raise ValueError("inconsistent arrays")
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad co-occurrence state: {exc}") from None
        limit = self.max_neighbours
        if (lengths > limit).any():
            keep = np.ones(len(indices), dtype=bool)
            for r in np.flatnonzero(lengths > limit):
                lo, hi = indptr[r], indptr[r + 1]
                keep[lo + np.argsort(-values[lo:hi], kind="stable")[limit:]] = False
            indices, values = indices[keep], values[keep]
            lengths = np.minimum(lengths, limit)
            indptr = np.concatenate([[0], np.cumsum(lengths)])
        # Smallest block class that holds each row; rows laid out one after another.
        klass = np.searchsorted(self._sizes, lengths).astype(np.int8)
        block = np.where(lengths > 0, self._sizes[klass], 0)
        start = np.concatenate([[0], np.cumsum(block)[:-1]]).astype(np.int64)
        slots = int(block.sum())
        self._clear(max(n, 256), max(4096, 1 << max(slots - 1, 0).bit_length()))
        self._ensure_rows(n)
        self._start[:n] = np.where(lengths > 0, start, -1)
        self._length[:n] = lengths
        self._klass[:n] = np.where(lengths > 0, klass, 0)
        dest = np.repeat(start, lengths) + (
            np.arange(len(indices)) - np.repeat(indptr[:-1], lengths)
        )
        self._nbr[dest] = indices
        self._val[dest] = values
        self._top[0] = slots
        self._draws[0] = draws
        self.t = t


def warm_up() -> None:
    """Run every compiled loop once on tiny data, so numba loads or compiles (and caches) them.

    The first call of a loop in a process costs ~0.1 s with numba's on-disk cache
    and several seconds without it: call this at start-up, or when building an image.
    """
    co = SparseCoOccurrence(half_life=10.0, max_neighbours=4)
    co.add(np.arange(12) % 6, np.arange(12) % 5 + 1, np.ones(12), 12)
    rows = np.array([[0, 1, -1]])
    w = np.ones((1, 2, 3), dtype=np.float32)
    co.scores(rows, w, np.array([[1, 2, 3]]))
    co.weighted_sum(rows, w, 6)
    co.top_items(rows, w[:, 0], 2)
    co.top_neighbours(np.array([0]), 2)
    co.pairs(np.array([0]), np.array([1]))
    co.forget(np.array([5]))
