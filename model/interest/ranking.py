"""The interest model's scoring side: user contexts, columns, blended scores, top-k, reasons.

For a batch of users (:class:`~model.interest.memories.Context`, one per user)
and blocks of columns (item rows), :meth:`Ranking.logits` gives the blended
score of :mod:`model.interest.model`: the embedding part
(:meth:`Ranking.emb_scores`), the count features of
:class:`~model.interest.memories.CountMemories` and, once items have text,
the content part, each weighted ``alpha_f + beta_f * cold``. Ranking takes
every live row of small catalogues, otherwise each user's candidates
(:meth:`Ranking.columns`); training (:mod:`model.interest.training`) scores
its own blocks with the same call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import cast

import numpy as np
import torch
from torch import nn

from core.types import Event, UserState
from model.interest.content import ContentPart
from model.interest.memories import Context, CountMemories, stage
from model.interest.params import InterestParams
from model.retrieval import RowMarks, lookup_ragged, pad_known, right_aligned
from model.rowtable import RowTable

__all__ = ["Ranking", "Leaves"]

# (table, distinct rows, the gathered rows as a leaf) per table a training score read
Leaves = list[tuple[RowTable, np.ndarray, torch.Tensor]]
Ranked = list[tuple[str, float]]


class Ranking:
    """Scores of the interest model's ``params``, ``memories`` and ``content``.

    ``excluded`` gives, per state, the rows never to list (int64[B, E], -1
    padded); ``marks`` is the model's row scratch. Catalogues of at most
    ``exhaustive_rows`` rows are ranked over every row.
    """

    def __init__(
        self,
        params: InterestParams,
        memories: CountMemories,
        content: ContentPart | None,
        marks: RowMarks,
        excluded: Callable[[Sequence[UserState]], np.ndarray],
        window: int,
        exhaustive_rows: int,
    ) -> None:
        self.params, self.memories, self.content = params, memories, content
        self.vocab = params.vocab
        self.marks, self.excluded = marks, excluded
        self.window, self.exhaustive_rows = window, exhaustive_rows
        self._cat_marks = RowMarks()
        # (states, their context) of the last rank_many, for explain_many of the same list
        self._ranked: tuple[Sequence[UserState], Context] | None = None

    # user context and columns -------------------------------------------------------
    def context(self, states: Sequence[UserState]) -> Context:
        """Pack the users' recent windows into padded arrays (see :class:`Context`)."""
        b, L, d = len(states), self.window, self.params.dim
        # Each state's newest L items and their types, right-aligned (padding on the left).
        found, lens = lookup_ragged([st.recent_items[-L:] for st in states], self.vocab.index)
        rows = right_aligned(found, lens, L)
        kinds = np.fromiter(
            chain.from_iterable(st.recent_types[-L:] for st in states),
            dtype=np.int64,
            count=found.size,
        )
        types = right_aligned(kinds, lens, L, fill=0)
        lt = np.zeros((b, d), dtype=np.float32)
        for i, st in enumerate(states):
            if st.long_term.shape == (d,):
                lt[i] = st.long_term
        n_events = [sum(st.counts) for st in states]
        cold = np.array([1.0 / (1.0 + n / 3.0) for n in n_events], dtype=np.float32)
        stages = np.array([stage(n) for n in n_events], dtype=np.int64)
        # Items the model does not know (expired, or state restored elsewhere) are
        # padding, but they still count for the age of older items.
        mask = rows >= 0
        ages = np.broadcast_to(np.arange(L - 1, -1, -1, dtype=np.float32), (b, L)).copy()
        exclude = self.excluded(states)
        return Context(rows, mask, types, ages, lt, cold, stages, exclude)

    def every_row(self) -> bool:
        """Whether the catalogue is small enough to rank, and train on, every row."""
        return self.vocab.n_rows <= self.exhaustive_rows

    def columns(self, ctx: Context) -> np.ndarray:
        """int64[C] every live row (small catalogues) or int64[B, C] candidates per user."""
        if self.every_row():
            return self.vocab.live_rows()
        return self.candidates(ctx)

    def candidates(self, ctx: Context) -> np.ndarray:
        """int64[B, C] each user's candidates (-1 padded), content neighbours included."""
        extra = None
        if self.content is not None and self.content.active:
            extra = self.content.candidates(ctx)
        return self.memories.candidates(ctx, self.vocab, self.marks, extra)

    # scoring --------------------------------------------------------------------
    def emb_scores(
        self, ctx: Context, blocks: Sequence[np.ndarray], train: bool
    ) -> tuple[list[torch.Tensor], Leaves]:
        """float32[B, C_k] embedding part of the score for each block of columns.

        A block is int64[C] (the same columns for every user) or int64[B, C]
        (per user, -1: padding). Only the rows and categories that appear are
        gathered, each table once; with ``train`` the gathered rows are leaves
        whose gradients :meth:`model.interest.training.Training.step` applies.
        """
        n, n_cats = self.vocab.n_rows, self.vocab.n_categories
        p, content = self.params, self.content
        leaves: Leaves = []

        def gather(name: str, rows: np.ndarray) -> torch.Tensor:
            out = p.tables[name].gather(rows, grad=train)
            if train and len(rows):
                leaves.append((p.tables[name], rows, out))
            return out

        def vectors(kind: str, rows: np.ndarray) -> torch.Tensor:
            # E[r] + C[cat r] for distinct ``rows``.
            ucat, cpos = self._cat_marks.dense_ids(self.vocab.categories_of(rows), n_cats)
            return gather(f"emb_{kind}", rows) + gather(f"cat_{kind}", ucat)[torch.from_numpy(cpos)]

        mask = torch.from_numpy(ctx.mask)
        att = p.type_w[torch.from_numpy(ctx.types)] - nn.functional.softplus(
            p.decay
        ) * torch.from_numpy(ctx.ages)
        att = torch.softmax(att.masked_fill(~mask, -1e9), dim=1) * mask  # [B, L]
        q = p.lt_gain * torch.from_numpy(ctx.lt)
        u_in, pos_in = self.marks.dense_ids(ctx.rows, n)
        if len(u_in):
            ctx_vec = vectors("in", u_in)[torch.from_numpy(np.maximum(pos_in, 0))]  # [B, L, d]
            q = q + (att.unsqueeze(2) * ctx_vec).sum(1)
        b = ctx.rows.shape[0]
        u_out, pos = self.marks.dense_ids(np.concatenate([c.ravel() for c in blocks]), n)
        if len(u_out) == 0:
            return [torch.zeros((b, c.shape[-1])) for c in blocks], leaves
        vec_out = vectors("out", u_out)
        bias = gather("bias", u_out)[:, 0]
        out: list[torch.Tensor] = []
        lo = 0
        for cols in blocks:
            at = torch.from_numpy(np.maximum(pos[lo : lo + cols.size], 0).reshape(cols.shape))
            lo += cols.size
            if cols.ndim == 1:
                out.append(q @ vec_out[at].T + bias[at])
            else:
                out.append(torch.bmm(vec_out[at], q.unsqueeze(2)).squeeze(2) + bias[at])
        if content is not None and content.active:
            pop = self.memories.pop_l
            out = [
                o + content.item_scores(q, c, pop.at(c), ctx.cold)
                for o, c in zip(out, blocks, strict=True)
            ]
        return out, leaves

    def logits(
        self, ctx: Context, blocks: Sequence[np.ndarray], train: bool = False
    ) -> tuple[torch.Tensor, Leaves]:
        """float32[B, sum C_k] blended scores of the blocks of columns, side by side.

        Blocks and the rows to step as in :meth:`emb_scores`.
        """
        embs, leaves = self.emb_scores(ctx, blocks, train)
        p = self.params
        weights = p.alpha + torch.from_numpy(ctx.cold).unsqueeze(1) * p.beta  # [B, F]
        out = []
        for cols, emb in zip(blocks, embs, strict=True):
            counts = torch.from_numpy(self.memories.features(ctx, cols, self.vocab))  # [B, 6, C]
            # sum_f w_f * feature_f: one [1, 6] x [6, C] product per user, no [B, C, F] copies
            mixed = torch.bmm(weights[:, None, 1:], counts).squeeze(1)
            score = emb * weights[:, :1] + mixed
            if self.content is not None and self.content.active:
                seen = self.memories.pop_l.at(cols)
                score = score + self.content.score(ctx, cols, seen, ctx.cold)
            out.append(score)
        return torch.cat(out, dim=1), leaves

    def scores(self, states: Sequence[UserState], cols: np.ndarray | None = None) -> torch.Tensor:
        """float32[B, C] scores of columns ``cols`` (None: every live row)."""
        ctx = self.context(states)
        with torch.no_grad():
            return self.logits(ctx, [self.vocab.live_rows() if cols is None else cols])[0]

    # ranking --------------------------------------------------------------------
    def rank_many(self, states: Sequence[UserState], k: int) -> list[Ranked]:
        """Top-``k`` (item_id, score) per state, over its columns; never an excluded item.

        The vocabulary must not be empty.
        """
        ctx = self.context(states)
        self._ranked = (states, ctx)  # explain_many of the same states reads it again
        cols = self.columns(ctx)
        with torch.no_grad():
            scores, _ = self.logits(ctx, [cols])
        b = len(states)
        cand = np.broadcast_to(cols, (b, cols.shape[-1]))
        keep = self.marks.keep(cand, ctx.exclude, self.vocab.n_rows)
        return self.top(scores, cand, keep, k)

    def top(self, scores: torch.Tensor, cand: np.ndarray, keep: np.ndarray, k: int) -> list[Ranked]:
        """The best ``k`` kept candidates (``cand`` int64[B, C]) of each row of ``scores``."""
        masked = scores.masked_fill(~torch.from_numpy(keep), float("-inf"))
        vals, idx = torch.topk(masked, min(k, masked.shape[1]), dim=1)
        picked = np.take_along_axis(cand, idx.numpy(), axis=1)
        name = cast(Callable[[int], str], self.vocab.ids.__getitem__)  # picked rows are live
        pairs = zip(picked.tolist(), vals.tolist(), strict=True)
        if bool(torch.isinf(vals).any()):  # fewer than k candidates somewhere: drop the fill
            return [
                [(name(r), v) for r, v in zip(rows, values, strict=True) if v != float("-inf")]
                for rows, values in pairs
            ]
        # The common case, without a Python step per item: ~10x faster on 1,000 users.
        return [list(zip(map(name, rows), values, strict=True)) for rows, values in pairs]

    def update_state(self, state: UserState, ev: Event) -> None:
        """Move the user's long-term vector towards the item just touched (EMA)."""
        dim = self.params.dim
        if state.long_term.shape != (dim,):
            state.long_term = np.zeros(dim, dtype=np.float32)
        row = self.vocab.index.get(ev.item_id)
        if row is None:  # unknown until learnt: never let an event shape its own score
            return
        # numpy views share memory with the tables; a torch op per event would
        # cost more than the whole update.
        tables = self.params.tables
        emb_in, cat_in = tables["emb_in"].array(), tables["cat_in"].array()
        vec = emb_in[row] + cat_in[self.vocab.item_categories()[row]]
        rate = np.float32(max(1.0 / max(state.n_events, 1), 0.02))
        lt = state.long_term
        lt += rate * (vec - lt)

    def explain_many(
        self, states: Sequence[UserState], lists: Sequence[Sequence[tuple[str, float]]]
    ) -> list[tuple[str, ...]]:
        """Up to three recent items that contributed most (via co-occurrence) to each list."""
        if not states:
            return []
        ranked, self._ranked = self._ranked, None
        ctx = ranked[1] if ranked is not None and ranked[0] is states else self.context(states)
        listed = pad_known(*lookup_ragged([[i for i, _ in r] for r in lists], self.vocab.index))
        # contrib[u, l] = sum over u's listed items of the co-occurrence with recent item l
        pair = self.memories.cooc.pairs(ctx.rows[:, :, None], listed[:, None, :])  # [U, L, K]
        contrib = (pair * (listed >= 0)[:, None, :]).sum(2) * ctx.mask  # [U, L]
        # Per user, recent items by contribution (ties: older first), each item once (an
        # item may fill several recent slots), the first three that contributed.
        u, n = contrib.shape
        order = np.argsort(-contrib, axis=1, kind="stable")
        rows = np.take_along_axis(ctx.rows, order, axis=1)
        repeat = ((rows[:, :, None] == rows[:, None, :]) & np.tri(n, k=-1, dtype=bool)).any(2)
        keep = (np.take_along_axis(contrib, order, axis=1) > 0) & ~repeat
        keep &= np.cumsum(keep, axis=1) <= 3
        # Nothing contributed: the newest recent item, if any.
        has = np.asarray(ctx.mask.any(axis=1)).tolist()
        newest = ctx.rows[np.arange(u), n - 1 - np.argmax(ctx.mask[:, ::-1], axis=1)].tolist()
        ids = self.vocab.ids
        picked: list[list[str]] = [[] for _ in range(u)]
        who, at = np.nonzero(keep)
        for i, row in zip(who.tolist(), rows[who, at].tolist(), strict=True):
            picked[i].append(str(ids[row]))
        return [
            tuple(p) if p or not has[i] else (str(ids[newest[i]]),) for i, p in enumerate(picked)
        ]
