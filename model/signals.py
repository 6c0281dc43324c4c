"""Count-based signals shared by the baselines and the interest model.

* :class:`DecayedCounts` — per-item event counts that fade with a half-life
  measured in events (``None``: never fade). Used for (trending) popularity.
* :class:`CoOccurrence` — a dense item x item matrix of decayed, distance
  weighted "b followed a in one user's history" counts. It is the memory of a
  sequential item-kNN: strong on sparse data and instantly updated, where
  embeddings need many steps to learn the same pairs.

Both keep values multiplied by ``exp(rate * t)`` so that decay costs nothing
per event; they renormalise before the factor could overflow.
"""

from __future__ import annotations

import math

import numpy as np

from model.persist import ModelState

__all__ = ["DecayedCounts", "CoOccurrence", "recent_window"]

_RESCALE_AT = 30.0  # exp(30) ~ 1e13: far from float32/float64 limits


def _rate(half_life: float | None) -> float:
    return 0.0 if not half_life else math.log(2.0) / half_life


class DecayedCounts:
    """float64[n_items] counts with exponential forgetting in event time."""

    def __init__(self, half_life: float | None = None) -> None:
        self.half_life = half_life
        self.rate = _rate(half_life)
        self.t = 0.0
        self._values = np.zeros(256, dtype=np.float64)

    def _grow(self, n: int) -> None:
        if n > len(self._values):
            size = len(self._values)
            while size < n:
                size *= 2
            grown = np.zeros(size, dtype=np.float64)
            grown[: len(self._values)] = self._values
            self._values = grown

    def add(self, rows: np.ndarray, weights: np.ndarray | float = 1.0) -> None:
        """Count events on item ``rows`` (int[n]) in order; each advances time by one."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        self._grow(int(rows.max()) + 1)
        times = self.t + 1.0 + np.arange(rows.size, dtype=np.float64)
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), rows.shape)
        np.add.at(self._values, rows, w * np.exp(self.rate * times))
        self.t += rows.size
        if self.rate * self.t > _RESCALE_AT:
            self._values *= math.exp(-self.rate * self.t)
            self.t = 0.0

    def at(self, rows: np.ndarray) -> np.ndarray:
        """float64[len(rows)]: current decayed counts of ``rows`` only (0 for unseen rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        ok = (rows >= 0) & (rows < len(self._values))
        out = np.where(ok, self._values[np.where(ok, rows, 0)], 0.0)
        return out * math.exp(-self.rate * self.t)

    def values(self, n: int) -> np.ndarray:
        """float64[n]: current decayed counts of rows ``0..n-1``."""
        self._grow(n)
        return self._values[:n] * math.exp(-self.rate * self.t)

    def state_dict(self) -> ModelState:
        return ModelState({"values": self._values.copy()}, {"t": self.t})

    def load_state_dict(self, state: ModelState) -> None:
        self._values = np.array(state.arrays["values"], dtype=np.float64)
        self.t = float(state.meta["t"])


class CoOccurrence:
    """Dense float32[cap, cap] decayed co-occurrence counts, growing with the vocabulary.

    Items at rows >= ``max_items`` are not tracked (memory is cap^2 * 4 bytes).
    """

    def __init__(self, half_life: float | None = None, max_items: int = 8192) -> None:
        self.rate = _rate(half_life)
        self.max_items = max_items
        self.t = 0.0
        self._m = np.zeros((256, 256), dtype=np.float32)

    @property
    def size(self) -> int:
        return self._m.shape[0]

    def state_dict(self) -> ModelState:
        return ModelState({"m": self._m.copy()}, {"t": self.t})

    def load_state_dict(self, state: ModelState) -> None:
        m = np.array(state.arrays["m"], dtype=np.float32)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"co-occurrence matrix of shape {m.shape}")
        self._m = m
        self.t = float(state.meta["t"])

    def _grow(self, n: int) -> None:
        n = min(n, self.max_items)
        size = self._m.shape[0]
        if n <= size:
            return
        while size < n:
            size *= 2
        size = min(size, self.max_items)
        grown = np.zeros((size, size), dtype=np.float32)
        old = self._m.shape[0]
        grown[:old, :old] = self._m
        self._m = grown

    def add(self, src: np.ndarray, dst: np.ndarray, weights: np.ndarray, n_events: int) -> None:
        """Add ``weights[p]`` to pair ``(src[p], dst[p])``; time advances by ``n_events``."""
        self.t += n_events
        if self.rate * self.t > _RESCALE_AT:
            self._m *= np.float32(math.exp(-self.rate * self.t))
            self.t = 0.0
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        if src.size == 0:
            return
        self._grow(int(max(src.max(), dst.max())) + 1)
        keep = (src < self._m.shape[0]) & (dst < self._m.shape[0])
        w = np.asarray(weights, dtype=np.float64)[keep] * math.exp(self.rate * self.t)
        np.add.at(self._m, (src[keep], dst[keep]), w.astype(np.float32))

    def rows(self, rows: np.ndarray, n: int) -> np.ndarray:
        """float32[len(rows), n]: decayed counts from each row to items ``0..n-1``.

        Rows or columns beyond the tracked capacity read as zero.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((rows.size, n), dtype=np.float32)
        size = self._m.shape[0]
        ok = rows < size
        width = min(n, size)
        if ok.any():
            out[ok, :width] = self._m[rows[ok], :width]
        out *= np.float32(math.exp(-self.rate * self.t))
        return out

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Decayed counts of pairs ``(rows, cols)`` (broadcast together); 0 if untracked."""
        rows, cols = np.broadcast_arrays(np.asarray(rows), np.asarray(cols))
        size = self._m.shape[0]
        ok = (rows < size) & (cols < size)
        out = np.where(ok, self._m[np.where(ok, rows, 0), np.where(ok, cols, 0)], 0.0)
        return out.astype(np.float32) * np.float32(math.exp(-self.rate * self.t))

    def weighted_sum(
        self,
        rows: np.ndarray,
        weights: np.ndarray,
        n: int,
        cols: np.ndarray | None = None,
        max_cells: int = 4_000_000,
    ) -> np.ndarray:
        """float32[B, K, C]: ``sum_l weights[b, k, l] * C[rows[b, l], cols]``.

        ``rows`` is int64[B, L], ``weights`` float32[B, K, L] (0 for padding);
        ``cols`` defaults to all items ``0..n-1``. Batched gathers + matmuls,
        chunked over B so the gathered block stays under ``max_cells`` floats.
        """
        b, k, L = weights.shape
        size = self._m.shape[0]
        width = min(n, size)
        c = n if cols is None else len(cols)
        out = np.zeros((b, k, c), dtype=np.float32)
        if b == 0 or L == 0:
            return out
        tracked = rows < size
        safe = np.where(tracked, rows, 0)
        w = np.where(tracked[:, None, :], weights, 0.0).astype(np.float32)
        dest: slice | np.ndarray
        if cols is None:
            view, dest = self._m[:, :width], slice(0, width)
        else:
            ok = cols < size
            view, dest = self._m[:, cols[ok]], np.flatnonzero(ok)
        step = max(1, max_cells // max(L * view.shape[1], 1))
        for lo in range(0, b, step):
            block = view[safe[lo : lo + step]]  # [b', L, C']
            out[lo : lo + step, :, dest] = w[lo : lo + step] @ block
        out *= np.float32(math.exp(-self.rate * self.t))
        return out


def recent_window(
    rows: list[int], types: list[int], window: int, decay: float, type_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The newest ``window`` recent item rows (oldest first) and their weights.

    weight = type_weights[type] * decay ** age, where age 0 is the newest event.
    Returns (int64[n], float32[n]).
    """
    rows = rows[-window:]
    types = types[-window:]
    n = len(rows)
    ages = np.arange(n - 1, -1, -1, dtype=np.float32)
    w = type_weights[np.asarray(types, dtype=np.int64)] * np.power(decay, ages, dtype=np.float32)
    return np.asarray(rows, dtype=np.int64), w.astype(np.float32)
