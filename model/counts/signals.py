"""Count-based signals shared by the baselines and the interest model.

* :class:`DecayedCounts` — per-item event counts that fade with a half-life
  measured in events (``None``: never fade). Used for (trending) popularity.
  Values are kept multiplied by ``exp(rate * t)`` so that decay costs nothing
  per event; they are renormalised before the factor could overflow.
* :func:`recent_window` — the weighted tail of a user's history.

Co-occurrence lives in :mod:`model.counts.cooc` (bounded and sparse).
"""

from __future__ import annotations

import math

import numpy as np

from model.persist import ModelState

__all__ = ["DecayedCounts", "recent_window"]

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
        self._max = 0.0  # running maximum of the stored values (an upper bound after forget)

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
        self._max = max(self._max, float(self._values[rows].max()))
        self.t += rows.size
        if self.rate * self.t > _RESCALE_AT:
            factor = math.exp(-self.rate * self.t)
            self._values *= factor
            self._max *= factor
            self.t = 0.0

    def at(self, rows: np.ndarray) -> np.ndarray:
        """float64[len(rows)]: current decayed counts of ``rows`` only (0 for unseen rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        ok = (rows >= 0) & (rows < len(self._values))
        out = np.where(ok, self._values[np.where(ok, rows, 0)], 0.0)
        return out * math.exp(-self.rate * self.t)

    def values(self, n: int) -> np.ndarray:
        """float64[n]: current decayed counts of rows ``0..n-1`` (O(n): for small catalogues)."""
        self._grow(n)
        return self._values[:n] * math.exp(-self.rate * self.t)

    def stored(self) -> tuple[np.ndarray, float]:
        """The stored values (a view; rows past its end count 0) and the factor that
        turns them into current counts (1.0 when counts never fade)."""
        return self._values, math.exp(-self.rate * self.t)

    def max(self) -> float:
        """The largest current count, without a scan.

        Exact while nothing is forgotten; after :meth:`forget` it may be the
        count of a forgotten row until :meth:`refresh_max`.
        """
        return self._max * math.exp(-self.rate * self.t)

    def forget(self, rows: np.ndarray) -> None:
        """Zero the counts of ``rows`` (item rows about to be reused)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        self._values[rows[(rows >= 0) & (rows < len(self._values))]] = 0.0

    def refresh_max(self) -> None:
        """Recompute :meth:`max` exactly: one pass over every row (call it rarely)."""
        self._max = float(self._values.max(initial=0.0))

    def state_dict(self) -> ModelState:
        return ModelState({"values": self._values.copy()}, {"t": self.t, "max": self._max})

    def load_state_dict(self, state: ModelState) -> None:
        self._values = np.array(state.arrays["values"], dtype=np.float64)
        self.t = float(state.meta["t"])
        if "max" in state.meta:
            self._max = float(state.meta["max"])
        else:
            self.refresh_max()


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
