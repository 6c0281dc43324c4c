"""(Decayed) popularity: the simplest honest model and the first baseline.

Lists come from a :class:`~model.counts.topitems.TopIndex` of the most counted items,
kept up to date batch by batch, so ranking costs the same at a thousand items
or ten million. Catalogues of at most ``exhaustive_rows`` rows are ranked over
every row instead (the same scores; a user who excluded most of the top list
still gets a full one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.types import Event, UserState
from model.counts.signals import DecayedCounts
from model.counts.topitems import TopIndex
from model.persist import ModelState
from model.retrieval import DEFAULT_EXPIRE_DAYS, BaseRanker

__all__ = ["DecayedPopularity", "MostPopular", "EXHAUSTIVE_ROWS", "TOP_SIZE"]

# Up to this many item rows, every row is a candidate: scoring 2,048 columns costs
# about what drawing candidates does (docs/model/results-history.md, "Catalogue scale").
EXHAUSTIVE_ROWS = 2048
# Items kept in the top list (plus half as many spare): a user who has excluded
# (bought or, under the FluRS protocol, seen) most of them gets a shorter list.
TOP_SIZE = 500


class DecayedPopularity(BaseRanker):
    """Item score = number of events on it, fading with ``half_life`` events.

    ``half_life=None`` is the classic most-popular baseline (no forgetting).
    """

    name = "popular-decayed"
    version = "popular-3"

    def __init__(
        self,
        half_life: float | None = 5000.0,
        exclude_seen: bool = False,
        expire_days: float | None = DEFAULT_EXPIRE_DAYS,
        exhaustive_rows: int = EXHAUSTIVE_ROWS,
    ) -> None:
        self.config = {
            "half_life": half_life,
            "exclude_seen": exclude_seen,
            "expire_days": expire_days,
            "exhaustive_rows": exhaustive_rows,
        }
        super().__init__(exclude_seen, expire_days)
        self.half_life = half_life
        self.exhaustive_rows = exhaustive_rows
        self.counts = DecayedCounts(half_life)
        self.top = TopIndex(self.counts, TOP_SIZE)
        self._ranked: list[tuple[str, float]] | None = None  # every user's list, before exclusions

    def state_dict(self) -> ModelState:
        state = super().state_dict()
        state.add("counts", self.counts.state_dict())
        state.add("top", self.top.state_dict())
        return state

    def load_state_dict(self, state: ModelState) -> None:
        super().load_state_dict(state)
        self.counts.load_state_dict(state.part("counts"))
        self.top.load_state_dict(state.part("top"))
        self._ranked = None

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        rows = self._add_items(events)
        self.counts.add(rows)
        self.top.update(rows)
        self._ranked = None

    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` per user: the one ranked list of the model, without what each excludes.

        Every user shares the model's list; it is ranked once after each change
        (score, then row: ties in a fixed order) and each user walks it past their
        excluded items, a few µs a user where ranking every user anew took tens.
        """
        if not user_ids:
            return []
        ranked = self._ranked
        if ranked is None:
            ranked = self._ranked = self._rank_all()
        first = ranked[:k]
        out: list[list[tuple[str, float]]] = []
        for st in states:
            excluded = st.seen if self.exclude_seen else st.purchased
            if not excluded:
                out.append(list(first))
                continue
            skip = set(excluded) if len(excluded) > 8 else excluded
            picked: list[tuple[str, float]] = []
            for pair in ranked:
                if pair[0] not in skip:
                    picked.append(pair)
                    if len(picked) == k:
                        break
            out.append(picked)
        return out

    def _rank_all(self) -> list[tuple[str, float]]:
        """(item id, score) of every candidate row, best first."""
        n = self.vocab.n_rows
        if n <= self.exhaustive_rows:
            rows = np.flatnonzero(self.vocab.live()[:n])
        else:
            top, _ = self.top.top_many(np.zeros(1, dtype=np.int64), self.top.size + self.top.slack)
            rows = top[0][top[0] >= 0]
        scores = self.counts.at(rows).astype(np.float32)
        order = np.lexsort((rows, -scores))  # best score first, ties by row
        ids = self.vocab.ids
        return [
            (str(ids[r]), v)
            for r, v in zip(rows[order].tolist(), scores[order].tolist(), strict=True)
        ]

    def _recycle(self, rows: np.ndarray, categories: np.ndarray) -> None:
        self.top.forget(rows)
        self.counts.forget(rows)
        self._ranked = None

    def candidates(self, user_ids: Sequence[str], states: Sequence[UserState]) -> np.ndarray | None:
        if self.vocab.n_rows <= self.exhaustive_rows:
            return None
        rows, _ = self.top.top_many(np.zeros(1, dtype=np.int64), self.top.size + self.top.slack)
        return np.broadcast_to(rows, (len(states), rows.shape[1]))

    def scores(
        self, user_ids: Sequence[str], states: Sequence[UserState], cols: np.ndarray | None = None
    ) -> torch.Tensor:
        if cols is None:
            pop = self.counts.values(self.vocab.n_rows).astype(np.float32)
            return torch.from_numpy(pop).expand(len(states), -1)
        pop = self.counts.at(cols[0]).astype(np.float32)  # the same list for every user
        return torch.from_numpy(pop).expand(len(states), -1)


class MostPopular(DecayedPopularity):
    """Most-popular baseline: counts never fade."""

    name = "popular"
    version = "popular-nodecay-2"

    def __init__(
        self,
        exclude_seen: bool = False,
        expire_days: float | None = DEFAULT_EXPIRE_DAYS,
        exhaustive_rows: int = EXHAUSTIVE_ROWS,
    ) -> None:
        super().__init__(None, exclude_seen, expire_days, exhaustive_rows)
        self.config = {
            "exclude_seen": exclude_seen,
            "expire_days": expire_days,
            "exhaustive_rows": exhaustive_rows,
        }
