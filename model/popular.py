"""(Decayed) popularity: the simplest honest model and the first baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.retrieval import BaseRanker
from model.signals import DecayedCounts
from model.types import Event, UserState

__all__ = ["DecayedPopularity", "MostPopular"]


class DecayedPopularity(BaseRanker):
    """Item score = number of events on it, fading with ``half_life`` events.

    ``half_life=None`` is the classic most-popular baseline (no forgetting).
    """

    version = "popular-2"

    def __init__(self, half_life: float | None = 5000.0, exclude_seen: bool = False) -> None:
        super().__init__(exclude_seen)
        self.half_life = half_life
        self.counts = DecayedCounts(half_life)

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        self.counts.add(self._add_items(events))

    def scores(self, user_ids: Sequence[str], states: Sequence[UserState]) -> torch.Tensor:
        pop = torch.from_numpy(self.counts.values(len(self.vocab)).astype(np.float32))
        return pop.expand(len(states), -1)


class MostPopular(DecayedPopularity):
    """Most-popular baseline: counts never fade."""

    version = "popular-nodecay-1"

    def __init__(self, exclude_seen: bool = False) -> None:
        super().__init__(None, exclude_seen)
