"""The interest model's learning side: optimiser steps on the next-item softmax.

Each event whose item had a row before its batch is a target: the user's
context before the event should score the item first. A step is one
event-type-weighted cross-entropy (purchase > favourite > cart > click) over
the columns of :meth:`Training.blocks`: every live row for small catalogues
(the full softmax), otherwise the user's own candidates plus negatives shared
by the batch (other users' targets and uniform draws). The tables step only
the rows the batch gathered (:class:`~model.rowtable.RowTable`), the dense
parameters take their dense Adam, the content part its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from core.types import EVENT_INDEX, Event
from model.interest.content import ContentPart
from model.interest.memories import EVENT_WEIGHTS, Context
from model.interest.params import InterestParams
from model.interest.ranking import Ranking

__all__ = ["Training"]


class Training:
    """Steps of ``params`` (and ``content``) on scores from ``ranking``.

    ``rng`` draws the sampled negatives (``n_negatives`` per step); a batch
    learns in steps of at most ``step_events`` events.
    """

    def __init__(
        self,
        params: InterestParams,
        ranking: Ranking,
        content: ContentPart | None,
        rng: np.random.Generator,
        n_negatives: int,
        step_events: int,
    ) -> None:
        self.params, self.ranking, self.content = params, ranking, content
        self.rng, self.n_negatives = rng, n_negatives
        self.step_events = max(1, step_events)
        self.last_loss: float | None = None  # of the last optimiser step (ReportsLoss)

    def learn(
        self,
        events: Sequence[Event],
        rows: np.ndarray,
        known: np.ndarray,
        ctx: Context,
        batch_no: int,
    ) -> None:
        """Learn from the events on ``known`` items (bool[n]; the others have no trained row).

        ``rows`` (int64[n]) are the events' items, ``ctx`` the users' contexts
        before them; the rows stepped are marked changed at ``batch_no``.
        """
        if not known.any():
            return
        known_at = np.flatnonzero(known)
        # A long batch (a worker catching up) learns in steps of the usual
        # size: as many optimiser steps as if the events had come in time.
        for lo in range(0, len(known_at), self.step_events):
            idx = known_at[lo : lo + self.step_events]
            types = [EVENT_INDEX[events[int(i)].event] for i in idx]
            self.step(ctx.take(idx), rows[idx], types, batch_no)

    def blocks(
        self, ctx: Context, targets: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Columns of the training softmax (blocks), each user's target column, the keep mask.

        Small catalogues: one block, every live row (the full softmax).
        Otherwise a per-user block (int64[B, C]: the target first, then the
        user's candidates) and a block of negatives shared by the batch
        (int64[S]: other users' targets and uniform draws). The mask (bool[B, C + S])
        drops padding, repeats and excluded items except the target.
        """
        b = len(targets)
        vocab, marks = self.params.vocab, self.ranking.marks
        n = vocab.n_rows
        if self.ranking.every_row():
            cols = vocab.live_rows()
            tgt = np.searchsorted(cols, targets)
            keep = marks.keep(np.broadcast_to(cols, (b, len(cols))), ctx.exclude, n)
            keep[np.arange(b), tgt] = True
            return [cols], tgt, keep
        cand = self.ranking.candidates(ctx)
        own = np.concatenate([targets[:, None], cand], axis=1)
        draws = self.rng.integers(0, n, self.n_negatives)
        shared = np.unique(np.concatenate([targets, draws[vocab.live()[draws]]]))
        if len(shared) > self.n_negatives:
            shared = np.sort(self.rng.choice(shared, self.n_negatives, replace=False))
        every = np.concatenate([own, np.broadcast_to(shared, (b, len(shared)))], axis=1)
        keep = marks.keep(every, ctx.exclude, n, keep_first=True)
        return [own, shared], np.zeros(b, dtype=np.int64), keep

    def step(self, ctx: Context, targets: np.ndarray, types: list[int], batch_no: int) -> None:
        """One optimiser step: ``targets`` (int64[B] rows) of the users of ``ctx``."""
        blocks, tgt, keep = self.blocks(ctx, targets)
        logits, leaves = self.ranking.logits(ctx, blocks, train=True)
        loss = _ce(logits.masked_fill(~torch.from_numpy(keep), -1e9), tgt, types)
        self.last_loss = float(loss.detach())
        opt = self.params.opt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.content is not None:
            self.content.step(len(targets))
        tables = self.params.tables
        emb_in, emb_out = tables["emb_in"], tables["emb_out"]
        for table, rows, leaf in leaves:
            table.step(rows, leaf.grad)
            if table is emb_out or table is emb_in:
                self.params.mark_changed(rows, batch_no)


def _ce(logits: torch.Tensor, tgt: np.ndarray, types: Sequence[int]) -> torch.Tensor:
    """Event-type-weighted mean cross-entropy of the targets (float32[B, C] logits)."""
    weights = torch.from_numpy(EVENT_WEIGHTS[list(types)])
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(tgt), reduction="none")
    return (loss * weights).sum() / weights.sum()
