"""Shared top-K retrieval: one score matrix per micro-batch, exclusions, ``topk``.

Every model here scores a whole batch of user states at once as a
float32[B, V] matrix over its item vocabulary, so ranking is a matmul or a
gather plus one ``torch.topk`` — never a Python loop over items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.types import UserState
from model.persist import ModelState
from model.vocab import ItemVocab

__all__ = ["BaseRanker", "top_k"]


def top_k(
    scores: torch.Tensor, exclude: Sequence[Sequence[int]], k: int
) -> list[list[tuple[int, float]]]:
    """Best ``k`` (row, score) per row of ``scores`` (float32[B, V]), best first.

    ``exclude[b]`` lists item rows that row ``b`` must not return. Items with
    score ``-inf`` (excluded or unscorable) are never returned, so a row may
    come back shorter than ``k``.
    """
    b, v = scores.shape
    if v == 0 or b == 0:
        return [[] for _ in range(b)]
    scores = scores.clone()
    bi = [i for i, rows in enumerate(exclude) for _ in rows]
    if bi:
        ri = [r for rows in exclude for r in rows]
        scores[torch.tensor(bi), torch.tensor(ri)] = float("-inf")
    vals, idx = torch.topk(scores, min(k, v), dim=1)
    out: list[list[tuple[int, float]]] = []
    for vrow, irow in zip(vals.tolist(), idx.tolist(), strict=True):
        out.append([(i, s) for i, s in zip(irow, vrow, strict=True) if s != float("-inf")])
    return out


class BaseRanker:
    """Vocabulary, exclusions and batched ranking; subclasses supply ``scores``.

    ``exclude_seen`` drops every item the user has touched (the FluRS
    protocol); otherwise only purchased items are dropped.
    """

    name = "base"
    version = "base-1"

    def __init__(self, exclude_seen: bool = False) -> None:
        self.exclude_seen = exclude_seen
        self.vocab = ItemVocab()

    def state_dict(self) -> ModelState:
        """The vocabulary; subclasses add what they learnt (see :mod:`model.persist`)."""
        state = ModelState()
        state.add("vocab", self.vocab.state_dict())
        return state

    def load_state_dict(self, state: ModelState) -> None:
        self.vocab.load_state_dict(state.part("vocab"))

    def scores(self, user_ids: Sequence[str], states: Sequence[UserState]) -> torch.Tensor:
        """float32[B, V] scores of every vocabulary item for each user."""
        raise NotImplementedError

    def excluded_rows(self, state: UserState) -> list[int]:
        return self.vocab.rows(state.seen if self.exclude_seen else state.purchased)

    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item_id, score) for each user, best first."""
        if not user_ids:
            return []
        if len(self.vocab) == 0:
            return [[] for _ in user_ids]
        s = self.scores(user_ids, states)
        ranked = top_k(s, [self.excluded_rows(st) for st in states], k)
        ids = self.vocab.ids
        return [[(ids[r], float(v)) for r, v in row] for row in ranked]

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        return self.rank_many([user_id], [state], k)[0]

    def _add_items(self, events: Sequence) -> np.ndarray:
        """Rows (int64[n]) of the events' items, adding new ones to the vocabulary."""
        return np.fromiter(
            (self.vocab.add(ev.item_id, ev.category) for ev in events),
            dtype=np.int64,
            count=len(events),
        )
