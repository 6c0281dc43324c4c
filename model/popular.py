"""(Decayed) popularity: the simplest honest model and the first baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.types import Event, UserState
from model.persist import ModelState
from model.retrieval import BaseRanker
from model.signals import DecayedCounts

__all__ = ["DecayedPopularity", "MostPopular"]


class DecayedPopularity(BaseRanker):
    """Item score = number of events on it, fading with ``half_life`` events.

    ``half_life=None`` is the classic most-popular baseline (no forgetting).
    """

    name = "popular-decayed"
    version = "popular-2"

    def __init__(self, half_life: float | None = 5000.0, exclude_seen: bool = False) -> None:
        self.config = {"half_life": half_life, "exclude_seen": exclude_seen}
        super().__init__(exclude_seen)
        self.half_life = half_life
        self.counts = DecayedCounts(half_life)

    def state_dict(self) -> ModelState:
        state = super().state_dict()
        state.add("counts", self.counts.state_dict())
        return state

    def load_state_dict(self, state: ModelState) -> None:
        super().load_state_dict(state)
        self.counts.load_state_dict(state.part("counts"))

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        self.counts.add(self._add_items(events))

    def scores(self, user_ids: Sequence[str], states: Sequence[UserState]) -> torch.Tensor:
        pop = torch.from_numpy(self.counts.values(len(self.vocab)).astype(np.float32))
        return pop.expand(len(states), -1)


class MostPopular(DecayedPopularity):
    """Most-popular baseline: counts never fade."""

    name = "popular"
    version = "popular-nodecay-1"

    def __init__(self, exclude_seen: bool = False) -> None:
        super().__init__(None, exclude_seen)
        self.config = {"exclude_seen": exclude_seen}
