"""Collisionless, growing item vocabulary: string id -> dense row, plus categories.

Rows are handed out in arrival order and never reused, so tables indexed by
row (embeddings, counters) only ever grow at the end.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from model.persist import ModelState

__all__ = ["ItemVocab"]


class ItemVocab:
    """Item ids and their category rows; category row 0 means "unknown"."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.categories: list[str | None] = [None]
        self._cat_index: dict[str, int] = {}
        self._item_cat = np.zeros(64, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_categories(self) -> int:
        """Number of category rows including the "unknown" row 0."""
        return len(self.categories)

    def add(self, item_id: str, category: str | None = None) -> int:
        """Row of ``item_id``, creating it on first sight; fills in a late category."""
        row = self.index.get(item_id)
        if row is None:
            row = len(self.ids)
            self.ids.append(item_id)
            self.index[item_id] = row
            if row >= len(self._item_cat):
                grown = np.zeros(2 * len(self._item_cat), dtype=np.int64)
                grown[: len(self._item_cat)] = self._item_cat
                self._item_cat = grown
        if category and self._item_cat[row] == 0:
            cat = self._cat_index.get(category)
            if cat is None:
                cat = self._cat_index[category] = len(self.categories)
                self.categories.append(category)
            self._item_cat[row] = cat
        return row

    def rows(self, item_ids: Iterable[str]) -> list[int]:
        """Rows of the known items among ``item_ids`` (unknown ones are dropped)."""
        index = self.index
        return [index[i] for i in item_ids if i in index]

    def item_categories(self) -> np.ndarray:
        """int64[n_items]: category row of every item (0 = unknown)."""
        return self._item_cat[: len(self.ids)]

    def state_dict(self) -> ModelState:
        return ModelState(
            {"item_cat": self.item_categories().copy()},
            {"items": list(self.ids), "categories": list(self.categories)},
        )

    def load_state_dict(self, state: ModelState) -> None:
        ids = [str(i) for i in state.meta["items"]]
        cats = state.meta["categories"]
        item_cat = np.asarray(state.arrays["item_cat"], dtype=np.int64)
        if len(item_cat) != len(ids) or not cats or cats[0] is not None:
            raise ValueError("vocabulary arrays do not match its ids")
        if len(item_cat) and (item_cat.min() < 0 or item_cat.max() >= len(cats)):
            raise ValueError("item category out of range")
        self.ids = ids
        self.index = {item: row for row, item in enumerate(ids)}
        self.categories = [None, *[str(c) for c in cats[1:]]]
        self._cat_index = {c: i for i, c in enumerate(self.categories) if c is not None}
        self._item_cat = np.zeros(max(64, len(ids)), dtype=np.int64)
        self._item_cat[: len(ids)] = item_cat
