"""Top items by a decayed count, overall or per category, without scanning the catalogue.

:class:`TopIndex` keeps, for each group (a category, or one group for
"trending"), the rows with the highest count in a :class:`~model.counts.signals.DecayedCounts`.
Decay multiplies every count by the same factor, so the order of two rows only
changes when one of them is counted again: merging a batch's touched rows into
their groups' current lists keeps every list exact. A batch costs
O((touched rows + touched groups x list size) log), whatever the catalogue.

Lists hold ``size + slack`` rows so that rows removed by :meth:`TopIndex.forget`
(recycled item rows) rarely leave a list short; when one does, the group is
rebuilt from every row seen, once, at the next update.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import DataError
from model.counts.signals import DecayedCounts
from model.persist import ModelState

__all__ = ["TopIndex"]


class TopIndex:
    """The rows with the largest ``counts`` in each group, best first.

    Call :meth:`update` with every row whose count changed (after
    ``counts.add``), with the row's group (e.g. its category row; omitted: 0).

    >>> counts = DecayedCounts(half_life=100.0)
    >>> index = TopIndex(counts, size=2)
    >>> rows = np.array([0, 1, 1, 2, 2, 2])
    >>> counts.add(rows)
    >>> index.update(rows)
    >>> index.top(0)[0].tolist()
    [2, 1]
    """

    def __init__(self, counts: DecayedCounts, size: int, slack: int | None = None) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.counts = counts
        self.size = int(size)
        self.slack = self.size // 2 if slack is None else int(slack)
        self._cap = self.size + self.slack
        self._members = np.full((1, self._cap), -1, dtype=np.int64)
        self._group = np.full(256, -1, dtype=np.int64)  # group of each row, -1: none
        self._short: set[int] = set()  # groups to rebuild from every row seen

    @property
    def n_groups(self) -> int:
        return len(self._members)

    def _ensure(self, n_rows: int, n_groups: int) -> None:
        if n_rows > len(self._group):
            size = len(self._group)
            while size < n_rows:
                size *= 2
            grown = np.full(size, -1, dtype=np.int64)
            grown[: len(self._group)] = self._group
            self._group = grown
        if n_groups > len(self._members):
            size = len(self._members)
            while size < n_groups:
                size *= 2
            table = np.full((size, self._cap), -1, dtype=np.int64)
            table[: len(self._members)] = self._members
            self._members = table

    def update(self, rows: np.ndarray, groups: np.ndarray | None = None) -> None:
        """Merge touched ``rows`` (int[n]) of ``groups`` (int[n], default 0) into the lists."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        groups = (
            np.zeros_like(rows)
            if groups is None
            else np.broadcast_to(np.asarray(groups, dtype=np.int64), rows.shape)
        )
        if rows.size:
            # Last group given for a row wins (a category can arrive late).
            rev_rows, first = np.unique(rows[::-1], return_index=True)
            rows, groups = rev_rows, groups[::-1][first]
            self._ensure(int(rows.max()) + 1, int(groups.max()) + 1)
            old = self._group[rows]
            for r, g in zip(
                rows[(old >= 0) & (old != groups)], old[(old >= 0) & (old != groups)], strict=True
            ):
                self._drop(int(g), np.array([r]))
            self._group[rows] = groups
            self._merge(np.unique(groups), rows, groups)
        if self._short:
            self._rebuild()

    def _merge(self, gs: np.ndarray, rows: np.ndarray, groups: np.ndarray) -> None:
        """Lists of groups ``gs`` := best of (their members + ``rows``), by current count."""
        members = self._members[gs]
        cand = np.concatenate([members.ravel(), rows])
        gidx = np.concatenate(
            [np.repeat(np.arange(len(gs)), self._cap), np.searchsorted(gs, groups)]
        )
        ok = cand >= 0
        cand, gidx = cand[ok], gidx[ok]
        cand, first = np.unique(cand, return_index=True)  # a touched member appears twice
        gidx = gidx[first]
        vals = self.counts.at(cand)
        order = np.lexsort((cand, -vals, gidx))  # by group, count desc, row
        cand, gidx = cand[order], gidx[order]
        starts = np.searchsorted(gidx, np.arange(len(gs)))
        pos = np.arange(len(cand)) - starts[gidx]
        keep = pos < self._cap
        out = np.full((len(gs), self._cap), -1, dtype=np.int64)
        out[gidx[keep], pos[keep]] = cand[keep]
        self._members[gs] = out

    def _drop(self, group: int, rows: np.ndarray) -> None:
        lst = self._members[group]
        gone = np.isin(lst, rows) & (lst >= 0)
        if not gone.any():
            return
        kept = lst[(lst >= 0) & ~gone]
        lst[:] = -1
        lst[: len(kept)] = kept
        if len(kept) < self.size:
            self._short.add(group)

    def _rebuild(self) -> None:
        """Refill short groups from every row seen: one O(rows seen) pass for all of them."""
        gs = np.array(sorted(self._short), dtype=np.int64)
        self._short.clear()
        rows = np.flatnonzero(np.isin(self._group, gs))
        self._members[gs] = -1
        self._merge(gs, rows, self._group[rows])

    def forget(self, rows: np.ndarray) -> None:
        """Remove ``rows`` (item rows being recycled) from every list.

        Their counts must be cleared by the owner of ``counts``; lists that
        fall below ``size`` are rebuilt at the next :meth:`update`.
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        rows = rows[(rows >= 0) & (rows < len(self._group))]
        groups = self._group[rows]
        for g in np.unique(groups[groups >= 0]):
            self._drop(int(g), rows[groups == g])
        self._group[rows] = -1

    def top(self, group: int = 0, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(int64[k'], float64[k']): the best ``k`` (default ``size``) rows of ``group``."""
        items, values = self.top_many(np.array([group]), self.size if k is None else k)
        n = int((items[0] >= 0).sum())
        return items[0, :n], values[0, :n]

    def top_many(self, groups: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(int64[G, k], float64[G, k]): the best rows of each of ``groups`` (-1, 0 padded)."""
        if self._short:
            self._rebuild()
        k = self.size if k is None else min(k, self._cap)
        groups = np.asarray(groups, dtype=np.int64).ravel()
        ok = (groups >= 0) & (groups < len(self._members))
        items = np.full((len(groups), k), -1, dtype=np.int64)
        items[ok] = self._members[groups[ok], :k]
        values = np.where(items >= 0, self.counts.at(items.ravel()).reshape(items.shape), 0.0)
        return items, values

    def state_dict(self) -> ModelState:
        """Arrays and scalars (the counts themselves are saved by their owner)."""
        return ModelState(
            {"members": self._members.copy(), "group": self._group.copy()},
            {"size": self.size, "slack": self.slack, "short": sorted(self._short)},
        )

    def load_state_dict(self, saved: ModelState) -> None:
        """Restore a :meth:`state_dict`; malformed input raises DataError."""
        state: dict[str, Any] = {**saved.meta, **saved.arrays}
        try:
            members = np.asarray(state["members"], dtype=np.int64)
            group = np.asarray(state["group"], dtype=np.int64)
            size, slack = int(state["size"]), int(state["slack"])
            short = {int(g) for g in state["short"]}
            if members.ndim != 2 or members.shape[1] != size + slack or group.ndim != 1:
                raise ValueError("inconsistent arrays")
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad top-items state: {exc}") from None
        self.size, self.slack, self._cap = size, slack, size + slack
        self._members, self._group, self._short = members.copy(), group.copy(), short
