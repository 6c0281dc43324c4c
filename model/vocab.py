"""Collisionless item vocabulary with expiry: string id -> dense row, plus categories.

Rows are handed out in arrival order. With ``expire_after_ms`` set, an item
not seen for that long (in event time: the largest ``ts`` seen so far) is
dropped and its row goes on a free list, to be handed to the next new item;
categories expire the same way. A category's clock moves with every event on
one of its items, so it never expires before its last item does.

Models own per-row tables (embeddings, counts, co-occurrence); when
:meth:`ItemVocab.expire` returns rows, the model resets them before they can
be handed out again (see :meth:`model.retrieval.BaseRanker._recycle`). User
states hold item ids, never rows, so nothing outside the model refers to a row.

Memory per item: the id string and its dict entry (about 100 bytes for short
ids), 8 bytes of category row, 8 of last-seen time and 1 of live flag.

>>> vocab = ItemVocab(expire_after_ms=1000)
>>> vocab.add_events([("a", "c1", 0), ("b", None, 0), ("a", None, 1500)]).tolist()
[0, 1, 0]
>>> vocab.expire()  # b was last seen at 0, more than 1000 ms before 1500
(array([1]), array([], dtype=int64))
>>> vocab.add("c"), len(vocab), vocab.n_rows  # c reuses b's row
(1, 2, 2)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import numpy as np

from model.persist import ModelState

__all__ = ["ItemVocab"]

# Sweeps run when event time has moved on by this share of the expiry time, so an
# item lives at most 1 + 1/8 expiry times after its last event.
SWEEP_SHARE = 8
_NEVER = np.iinfo(np.int64).min


def _grown(old: np.ndarray, need: int, fill: int | bool) -> np.ndarray:
    if need <= len(old):
        return old
    size = max(len(old), 64)
    while size < need:
        size *= 2
    new = np.full(size, fill, dtype=old.dtype)
    new[: len(old)] = old
    return new


class ItemVocab:
    """Item ids and their category rows; category row 0 means "unknown" and never expires."""

    def __init__(self, expire_after_ms: int | None = None) -> None:
        self.expire_after_ms = expire_after_ms
        self.ids: list[str | None] = []  # None: a free row
        self.index: dict[str, int] = {}
        self.categories: list[str | None] = [None]
        self._cat_index: dict[str, int] = {}
        self._item_cat = np.zeros(64, dtype=np.int64)
        self._last_seen = np.full(64, _NEVER, dtype=np.int64)
        self._live = np.zeros(64, dtype=np.bool_)
        self._cat_last_seen = np.full(64, _NEVER, dtype=np.int64)
        self._free: list[int] = []  # heaps: the lowest free row is reused first
        self._fresh: list[int] = []  # rows handed out by the last add_events
        self._fresh_cats: list[int] = []
        self._cat_free: list[int] = []
        self.now = _NEVER  # largest event time seen (ms)
        self._swept = _NEVER  # event time of the last sweep

    def __len__(self) -> int:
        """Number of live items."""
        return len(self.index)

    @property
    def n_rows(self) -> int:
        """1 + the highest item row handed out: the length of per-row tables."""
        return len(self.ids)

    @property
    def n_categories(self) -> int:
        """Number of category rows including the "unknown" row 0 (and free rows)."""
        return len(self.categories)

    def add(self, item_id: str, category: str | None = None) -> int:
        """Row of ``item_id``, creating it on first sight; fills in a late category."""
        row = self.index.get(item_id)
        if row is None:
            if self._free:
                row = heapq.heappop(self._free)
                self.ids[row] = item_id
            else:
                row = len(self.ids)
                self.ids.append(item_id)
                self._item_cat = _grown(self._item_cat, row + 1, 0)
                self._last_seen = _grown(self._last_seen, row + 1, _NEVER)
                self._live = _grown(self._live, row + 1, False)
            self.index[item_id] = row
            self._fresh.append(row)
            self._live[row] = True
            self._last_seen[row] = self.now
        if category and self._item_cat[row] == 0:
            cat = self._cat_index.get(category)
            if cat is None:
                if self._cat_free:
                    cat = heapq.heappop(self._cat_free)
                    self.categories[cat] = category
                else:
                    cat = len(self.categories)
                    self.categories.append(category)
                    self._cat_last_seen = _grown(self._cat_last_seen, cat + 1, _NEVER)
                self._cat_index[category] = cat
                self._fresh_cats.append(cat)
                self._cat_last_seen[cat] = self.now
            self._item_cat[row] = cat
        return row

    def add_events(self, events: Iterable[tuple[str, str | None, int]]) -> np.ndarray:
        """Rows (int64[n]) of ``(item_id, category, ts)`` triples; their clocks move to ``ts``.

        :meth:`fresh` then tells which item and category rows were handed out.
        """
        self._fresh, self._fresh_cats = [], []
        rows, times = [], []
        for item_id, category, ts in events:
            rows.append(self.add(item_id, category))
            times.append(ts)
        out = np.asarray(rows, dtype=np.int64)
        if out.size:
            ts_arr = np.asarray(times, dtype=np.int64)
            np.maximum.at(self._last_seen, out, ts_arr)
            np.maximum.at(self._cat_last_seen, self._item_cat[out], ts_arr)
            self.now = max(self.now, int(ts_arr.max()))
            if self._swept == _NEVER and self.now != _NEVER:
                self._swept = self.now
                self._first_clock()
        return out

    def _first_clock(self) -> None:
        # Items and categories added before any event time (item metadata) count as
        # seen at the first one, not at the dawn of time: else the first sweep drops them.
        n, nc = self.n_rows, self.n_categories
        early = self._live[:n] & (self._last_seen[:n] == _NEVER)
        self._last_seen[:n][early] = self.now
        cats = self._cat_last_seen[:nc]
        named = np.array([c is not None for c in self.categories[1:nc]], dtype=bool)
        cats[1:][(cats[1:] == _NEVER) & named] = self.now

    def fresh(self) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, category rows) handed out by the last :meth:`add_events`, in order."""
        return np.asarray(self._fresh, dtype=np.int64), np.asarray(self._fresh_cats, dtype=np.int64)

    def sweep_due(self, now: int | None = None) -> bool:
        """Whether event time (``now``, default the latest seen) calls for :meth:`expire`."""
        if self.expire_after_ms is None or self._swept == _NEVER:
            return False
        now = self.now if now is None else max(self.now, now)
        return now - self._swept >= max(self.expire_after_ms // SWEEP_SHARE, 1)

    def expire(self, now: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Free the items and categories not seen for ``expire_after_ms`` before ``now``.

        Returns (item rows, category rows) freed, ascending; the caller resets
        whatever it keeps per row before the rows are handed out again. One
        vectorised pass over the rows: call it when :meth:`sweep_due`.
        """
        empty = np.zeros(0, dtype=np.int64)
        if self.expire_after_ms is None:
            return empty, empty
        now = self.now if now is None else max(self.now, now)
        self._swept = now
        cutoff = now - self.expire_after_ms
        n = self.n_rows
        rows = np.flatnonzero(self._live[:n] & (self._last_seen[:n] < cutoff))
        for row in rows.tolist():
            item = self.ids[row]
            assert item is not None
            del self.index[item]
            self.ids[row] = None
            heapq.heappush(self._free, row)
        self._live[rows] = False
        self._item_cat[rows] = 0
        self._last_seen[rows] = _NEVER
        nc = self.n_categories
        cats = np.flatnonzero(self._cat_last_seen[:nc] < cutoff)
        cats = cats[cats > 0]
        cats = cats[[self.categories[c] is not None for c in cats.tolist()]]
        for cat in cats.tolist():
            name = self.categories[cat]
            assert name is not None
            del self._cat_index[name]
            self.categories[cat] = None
            heapq.heappush(self._cat_free, cat)
        self._cat_last_seen[cats] = _NEVER
        return rows.astype(np.int64), cats.astype(np.int64)

    def category_index(self, name: str) -> int:
        """Row of category ``name`` ("": the unknown category, 0), -1 when there is none."""
        return self._cat_index.get(name, -1) if name else 0

    def item_categories(self) -> np.ndarray:
        """int64[n_rows]: category row of every item row (0 = unknown or free)."""
        return self._item_cat[: self.n_rows]

    def categories_of(self, rows: np.ndarray) -> np.ndarray:
        """int64 category rows of item ``rows`` (any shape; negative rows: 0, unknown)."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows >= 0, self._item_cat[np.maximum(rows, 0)], 0)

    def live(self) -> np.ndarray:
        """bool[n_rows]: which rows hold an item (the others are free)."""
        return self._live[: self.n_rows]

    def live_rows(self) -> np.ndarray:
        """int64[n]: the rows that hold an item, ascending."""
        return np.flatnonzero(self.live())

    def last_seen(self, rows: np.ndarray) -> np.ndarray:
        """int64[len(rows)]: event time (ms) each row's item was last seen."""
        return self._last_seen[np.asarray(rows, dtype=np.int64)]

    def state_dict(self) -> ModelState:
        n, nc = self.n_rows, self.n_categories
        return ModelState(
            {
                "item_cat": self.item_categories().copy(),
                "last_seen": self._last_seen[:n].copy(),
                "cat_last_seen": self._cat_last_seen[:nc].copy(),
            },
            {
                "items": list(self.ids),
                "categories": list(self.categories),
                "now": int(self.now),
                "swept": int(self._swept),
            },
        )

    def load_state_dict(self, state: ModelState) -> None:
        ids = [None if i is None else str(i) for i in state.meta["items"]]
        cats = state.meta["categories"]
        item_cat = np.asarray(state.arrays["item_cat"], dtype=np.int64)
        last_seen = np.asarray(state.arrays["last_seen"], dtype=np.int64)
        cat_seen = np.asarray(state.arrays["cat_last_seen"], dtype=np.int64)
        if len(item_cat) != len(ids) or len(last_seen) != len(ids) or len(cat_seen) != len(cats):
            raise ValueError("vocabulary arrays do not match its ids")
        if not cats or cats[0] is not None:
            raise ValueError("category row 0 must be the unknown category")
        if len(item_cat) and (item_cat.min() < 0 or item_cat.max() >= len(cats)):
            raise ValueError("item category out of range")
        self.ids = ids
        self.index = {item: row for row, item in enumerate(ids) if item is not None}
        if len(self.index) != sum(i is not None for i in ids):
            raise ValueError("an item id appears twice")
        self.categories = [None, *[None if c is None else str(c) for c in cats[1:]]]
        self._cat_index = {c: i for i, c in enumerate(self.categories) if c is not None}
        size = max(64, len(ids))
        self._item_cat = np.zeros(size, dtype=np.int64)
        self._item_cat[: len(ids)] = item_cat
        self._last_seen = np.full(size, _NEVER, dtype=np.int64)
        self._last_seen[: len(ids)] = last_seen
        self._live = np.zeros(size, dtype=np.bool_)
        self._live[: len(ids)] = [i is not None for i in ids]
        self._cat_last_seen = np.full(max(64, len(cats)), _NEVER, dtype=np.int64)
        self._cat_last_seen[: len(cats)] = cat_seen
        self._free = [r for r, i in enumerate(ids) if i is None]  # ascending: a valid heap
        self._cat_free = [c for c, name in enumerate(self.categories) if c and name is None]
        self.now, self._swept = int(state.meta["now"]), int(state.meta["swept"])
