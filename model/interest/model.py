"""The interest model: learned embeddings blended with co-occurrence and recency signals.

For a user with recent items ``r_1..r_L`` (newest last, event types ``t_j``)
and long-term vector ``lt`` (kept in the user's state), the score of item i is
a learned blend of

* ``emb``   — ``(q + g * lt) . (E_out[i] + C_out[cat i]) + b_i`` where the
  query ``q = sum_j a_j (E_in[r_j] + C_in[cat r_j])`` attends over recent items
  with ``a_j ∝ exp(w_type[t_j] - lambda * age_j)`` (learned type weights and decay);
* ``knn_s``, ``knn_l`` — sequential item-kNN over the recent items
  (co-occurrence learnt from the stream, short and long recency decay);
* ``cat``   — the recency-weighted share of recent events in item i's category
  (lets a brand-new item ride on its category at once);
* ``pop_s``, ``pop_l`` — log trending (short half-life) and long-run popularity;
* ``pop_b`` — popularity among users at the same stage (0, 1, 2-3, 4-7, ...,
  64+ events): newcomers tend to pick what other newcomers pick.

Each feature has a weight ``alpha_f + beta_f * cold(user)`` with
``cold = 1 / (1 + n_events / 3)``: the cold-start blend is learnt, so users
with few events lean on trending items and categories.

Cost per event does not depend on the catalogue. Each user is ranked over a
bounded candidate list (:meth:`model.interest.memories.CountMemories.candidates`: recent
items, their co-occurrence neighbours, trending, popular and same-stage items,
top items of the user's categories), features are gathered for those columns
only, and training is one step per micro-batch on the next-item softmax over
the same candidates plus shared sampled and in-batch negatives, events weighted
purchase > favourite > cart > click. Item and category embeddings are
:class:`~model.rowtable.RowTable` rows updated only where a batch touched them;
the small blend parameters keep a dense Adam. Catalogues of at most
``exhaustive_rows`` item rows are ranked over every item and trained on the
full softmax instead — the same code with every row as the candidates.

Items unseen for ``expire_days`` (event time) are forgotten and their rows reused.
An item's rows start from vectors seeded by its id, and copies of the model
(one per worker) share their counts and parameter changes by item id
(:mod:`model.sync`, :mod:`model.interest.sharing`).
Memory per item row: 1,176 bytes of embeddings, Adam moments and step counts
(dim 48; up to twice that while tables grow by doubling), about 400 bytes of
counts, top-list entries, vocabulary and scratch, and about 10 bytes per stored
co-occurrence neighbour (at most ``max_neighbours``): 2.1 KiB per item measured
with 54,000 long-tail items, 3.5 KiB with 9,000 busy ones (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import cast

import numpy as np
import torch
from torch import nn

from core.types import EVENT_INDEX, Event, UserState
from model.interest import sharing
from model.interest.content import INSTALL_BUDGET as CONTENT_BUDGET
from model.interest.content import ContentPart
from model.interest.memories import EVENT_WEIGHTS, Context, CountMemories, stage
from model.items import ItemMeta
from model.persist import ModelState, load_params, save_params
from model.retrieval import (
    DEFAULT_EXPIRE_DAYS,
    BaseRanker,
    RowMarks,
    lookup_ragged,
    pad_known,
    right_aligned,
)
from model.rowtable import RowTable

__all__ = ["InterestModel", "FEATURES", "EVENT_WEIGHTS", "EXHAUSTIVE_ROWS"]

FEATURES: tuple[str, ...] = ("emb", "knn_s", "knn_l", "cat", "pop_s", "pop_l", "pop_b")
# Up to this many item rows, every item is a candidate and training uses the
# full softmax (bench/RESULTS.md, "Catalogue scale", has the cost of both paths).
EXHAUSTIVE_ROWS = 2048
# Co-occurrence neighbours kept per item. ML-100K (FluRS, Recall@10, seed 0): 128 -> 0.2002,
# 256 -> 0.2025, 4,096 (exact) -> 0.2021; synthetic stream: no difference.
NEIGHBOURS = 256
# Most events one optimiser step learns from: the worker's usual micro-batch cap.
STEP_EVENTS = 500
_TABLES = ("emb_in", "emb_out", "bias", "cat_in", "cat_out")
_DENSE = ("type_w", "decay", "lt_gain", "alpha", "beta")
_Leaves = list[tuple[RowTable, np.ndarray, torch.Tensor]]


class InterestModel(BaseRanker):
    """Online-trained interest model (see the module docstring).

    ``fine_tune=False`` stops the optimiser but keeps the count memories
    (popularity, co-occurrence, vocabulary) learning; :meth:`freeze` stops
    both — the ``interest-static`` baseline: a model trained once and deployed,
    whose users' states still move.
    """

    name = "interest"
    version = "interest-3"

    def __init__(
        self,
        seed: int = 0,
        dim: int = 48,
        window: int = 30,
        lr: float = 0.003,
        short_half_life: float = 300.0,
        knn_decay: tuple[float, float] = (0.6, 0.95),
        exclude_seen: bool = False,
        fine_tune: bool = True,
        knn_norm: float = 0.5,
        stage_half_life: float | None = 2000.0,
        blend_lr: float | None = 0.05,
        exhaustive_rows: int = EXHAUSTIVE_ROWS,
        n_negatives: int = 512,
        max_neighbours: int = NEIGHBOURS,
        expire_days: float | None = DEFAULT_EXPIRE_DAYS,
        content: bool = True,
        step_events: int = STEP_EVENTS,
    ) -> None:
        # Constructor arguments as given, so the model can be cloned or snapshotted.
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config["knn_decay"] = list(knn_decay)  # JSON-able, as a snapshot stores it
        super().__init__(exclude_seen, expire_days)
        self.seed, self.dim, self.window = seed, dim, window
        self.fine_tune = fine_tune
        self.frozen = False
        self.exhaustive_rows, self.n_negatives = exhaustive_rows, n_negatives
        self.step_events = max(1, step_events)
        self._gen = torch.Generator().manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self._cat_marks = RowMarks()
        self.memories = CountMemories(
            short_half_life, stage_half_life, tuple(knn_decay), knn_norm, max_neighbours
        )
        self.cooc, self.pop_l = self.memories.cooc, self.memories.pop_l
        self.batches = 0  # learning steps so far: the clock of :meth:`changed_rows`
        self.last_loss: float | None = None  # of the last optimiser step (ReportsLoss)
        self._changed = np.zeros(0, dtype=np.int64)
        # (states, their context) of the last rank_many, for explain_many of the same list
        self._ranked: tuple[Sequence[UserState], Context] | None = None
        scale = 0.1 / np.sqrt(dim)
        self.tables = {
            name: RowTable(
                1 if name == "bias" else dim, 0.0 if name == "bias" else scale, lr, self._gen, seed
            )
            for name in _TABLES
        }
        self._ensure()
        for name in ("cat_in", "cat_out"):  # row 0: "unknown category"
            self.tables[name].reset(np.zeros(1, dtype=np.int64), [f"{name}/"])
        self._sharing = False  # counts only from apply_count_delta (see model.sync)
        self._pending: list[sharing.Contribution] = []
        self._dense_base: list[torch.Tensor] | None = None
        # (table, rows, sent, table clock when taken) and the dense changes of the last
        # param_delta, applied to the agreed values once delivered
        self._outbox: list[tuple[str, np.ndarray, np.ndarray, int]] = []
        self._dense_sent: list[torch.Tensor] = []
        self.type_w = nn.Parameter(torch.log(torch.from_numpy(EVENT_WEIGHTS.copy())))
        self.decay = nn.Parameter(torch.tensor(0.3))
        self.lt_gain = nn.Parameter(torch.tensor(0.5))
        self.alpha = nn.Parameter(torch.tensor([1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0]))
        self.beta = nn.Parameter(torch.zeros(len(FEATURES)))
        self._opt = torch.optim.Adam(self._dense(), lr=lr if blend_lr is None else blend_lr)
        # Item text (model/interest/content.py): None keeps the model as it is without metadata.
        self.content = ContentPart(dim, lr, blend_lr or lr) if content else None

    # parameters ---------------------------------------------------------------------
    @property
    def emb_in(self) -> torch.Tensor:
        return self.tables["emb_in"].weight

    @property
    def emb_out(self) -> torch.Tensor:
        return self.tables["emb_out"].weight

    def _dense(self) -> list[nn.Parameter]:
        return [self.type_w, self.decay, self.lt_gain, self.alpha, self.beta]

    def _params(self) -> list[torch.Tensor]:
        """Every trained tensor: the tables' weights, then the dense parameters."""
        return [t.weight for t in self.tables.values()] + list(self._dense())

    def _ensure(self) -> None:
        n, nc = self.vocab.n_rows, self.vocab.n_categories
        for name, table in self.tables.items():
            table.ensure(nc if name.startswith("cat") else n)
        if len(self._changed) < self.tables["emb_in"].capacity:
            grown = np.zeros(self.tables["emb_in"].capacity, dtype=np.int64)
            grown[: len(self._changed)] = self._changed
            self._changed = grown

    def _init_fresh(self) -> None:
        """Start the rows just handed out from vectors seeded by their item or category."""
        fresh, fresh_cats = self.vocab.fresh()
        ids, cats = self.vocab.ids, self.vocab.categories
        for name, table in self.tables.items():
            if name.startswith("cat"):
                table.reset(fresh_cats, [f"{name}/{cats[c]}" for c in fresh_cats.tolist()])
            else:
                table.reset(fresh, [f"{name}/{ids[r]}" for r in fresh.tolist()])
        if self.content is not None:
            self.content.attach(fresh, self.vocab)

    def changed_rows(self, since: int) -> np.ndarray:
        """Item rows whose embeddings or counts changed after learning step ``since``."""
        return np.flatnonzero(self._changed[: self.vocab.n_rows] > since)

    def freeze(self, keep_memories: bool = False) -> None:
        """Stop learning from the stream (``keep_memories``: only the optimiser stops)."""
        self.fine_tune = False
        self.frozen = not keep_memories

    # persistence (see model.persist) ------------------------------------------------
    def state_dict(self) -> ModelState:
        """Tables with their moments, dense parameters and Adam, count memories, random states."""
        state = super().state_dict()
        n, nc = self.vocab.n_rows, self.vocab.n_categories
        for name, table in self.tables.items():
            state.add(name, table.state_dict(nc if name.startswith("cat") else n))
        save_params(state, dict(zip(_DENSE, self._dense(), strict=True)), self._opt)
        state.add("memories", self.memories.state_dict())
        if self.content is not None and self.content.active:
            state.add("content", self.content.state_dict())
        state.arrays["changed"] = self._changed[:n].copy()
        if self._dense_base is not None:
            for name, base in zip(_DENSE, self._dense_base, strict=True):
                state.arrays[f"base.{name}"] = base.numpy().copy()
        state.arrays["rng.torch"] = self._gen.get_state().numpy().copy()
        state.meta.update(
            {
                "fine_tune": self.fine_tune,
                "frozen": self.frozen,
                "batches": self.batches,
                "rng.numpy": self._rng.bit_generator.state,
            }
        )
        return state

    def load_state_dict(self, state: ModelState) -> None:
        super().load_state_dict(state)
        for name, table in self.tables.items():
            table.load_state_dict(state.part(name))
        self._ensure()
        arrays = state.arrays
        load_params(arrays, dict(zip(_DENSE, self._dense(), strict=True)), self._opt)
        if f"base.{_DENSE[0]}" in arrays:
            self._dense_base = [
                torch.from_numpy(np.array(arrays[f"base.{name}"], dtype=np.float32))
                for name in _DENSE
            ]
        self.memories.load_state_dict(state.part("memories"))
        if self.content is not None and "content.vectors" in state.arrays:
            self.content.load_state_dict(state.part("content"))
        changed = np.asarray(arrays["changed"], dtype=np.int64)
        self._changed[: len(changed)] = changed
        self._gen.set_state(torch.from_numpy(np.array(arrays["rng.torch"])))
        self._rng.bit_generator.state = state.meta["rng.numpy"]
        self.fine_tune, self.frozen = bool(state.meta["fine_tune"]), bool(state.meta["frozen"])
        self.batches = int(state.meta["batches"])

    # user context ---------------------------------------------------------------
    def _context(self, states: Sequence[UserState]) -> Context:
        """Pack the users' recent windows into padded arrays (see :class:`Context`)."""
        b, L, d = len(states), self.window, self.dim
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
        exclude = self.excluded_matrix(states)
        return Context(rows, mask, types, ages, lt, cold, stages, exclude)

    def _columns(self, ctx: Context) -> np.ndarray:
        """int64[C] every live row (small catalogues) or int64[B, C] candidates per user."""
        if self.vocab.n_rows <= self.exhaustive_rows:
            return self.vocab.live_rows()
        return self.memories.candidates(ctx, self.vocab, self.marks, self._content_candidates(ctx))

    # scoring --------------------------------------------------------------------
    def _emb_scores(
        self, ctx: Context, blocks: Sequence[np.ndarray], train: bool
    ) -> tuple[list[torch.Tensor], _Leaves]:
        """float32[B, C_k] embedding part of the score for each block of columns.

        A block is int64[C] (the same columns for every user) or int64[B, C]
        (per user, -1: padding). Only the rows and categories that appear are
        gathered, each table once; with ``train`` the gathered rows are leaves
        whose gradients :meth:`_step` applies.
        """
        n, n_cats = self.vocab.n_rows, self.vocab.n_categories
        leaves: _Leaves = []

        def gather(name: str, rows: np.ndarray) -> torch.Tensor:
            out = self.tables[name].gather(rows, grad=train)
            if train and len(rows):
                leaves.append((self.tables[name], rows, out))
            return out

        def vectors(kind: str, rows: np.ndarray) -> torch.Tensor:
            # E[r] + C[cat r] for distinct ``rows``.
            ucat, cpos = self._cat_marks.dense_ids(self.vocab.categories_of(rows), n_cats)
            vec = gather(f"emb_{kind}", rows) + gather(f"cat_{kind}", ucat)[torch.from_numpy(cpos)]
            if kind == "in" and self.content is not None and self.content.active:
                vec = vec + self.content.project(rows)
            return vec

        mask = torch.from_numpy(ctx.mask)
        att = self.type_w[torch.from_numpy(ctx.types)] - nn.functional.softplus(
            self.decay
        ) * torch.from_numpy(ctx.ages)
        att = torch.softmax(att.masked_fill(~mask, -1e9), dim=1) * mask  # [B, L]
        q = self.lt_gain * torch.from_numpy(ctx.lt)
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
            p = torch.from_numpy(np.maximum(pos[lo : lo + cols.size], 0).reshape(cols.shape))
            lo += cols.size
            if cols.ndim == 1:
                out.append(q @ vec_out[p].T + bias[p])
            else:
                out.append(torch.bmm(vec_out[p], q.unsqueeze(2)).squeeze(2) + bias[p])
        if self.content is not None and self.content.active:
            out = [o + self.content.item_scores(q, c) for o, c in zip(out, blocks, strict=True)]
        return out, leaves

    def _logits(
        self, ctx: Context, blocks: Sequence[np.ndarray], train: bool = False
    ) -> tuple[torch.Tensor, _Leaves]:
        """float32[B, sum C_k] blended scores of the blocks of columns, side by side.

        Blocks and the rows to step as in :meth:`_emb_scores`.
        """
        embs, leaves = self._emb_scores(ctx, blocks, train)
        weights = self.alpha + torch.from_numpy(ctx.cold).unsqueeze(1) * self.beta  # [B, F]
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

    # ranking --------------------------------------------------------------------
    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item_id, score) per user, over their candidates; never an excluded item."""
        self._install_content()
        if not user_ids or len(self.vocab) == 0:
            return [[] for _ in user_ids]
        ctx = self._context(states)
        self._ranked = (states, ctx)  # explain_many of the same states reads it again
        cols = self._columns(ctx)
        with torch.no_grad():
            scores, _ = self._logits(ctx, [cols])
        b = len(states)
        cand = np.broadcast_to(cols, (b, cols.shape[-1]))
        keep = self.marks.keep(cand, ctx.exclude, self.vocab.n_rows)
        return self._top(scores, cand, keep, k)

    def _top(
        self, scores: torch.Tensor, cand: np.ndarray, keep: np.ndarray, k: int
    ) -> list[list[tuple[str, float]]]:
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

    def scores(
        self, user_ids: Sequence[str], states: Sequence[UserState], cols: np.ndarray | None = None
    ) -> torch.Tensor:
        ctx = self._context(states)
        with torch.no_grad():
            return self._logits(ctx, [self.vocab.live_rows() if cols is None else cols])[0]

    def update_state(self, state: UserState, ev: Event) -> None:
        """Move the user's long-term vector towards the item just touched (EMA)."""
        if state.long_term.shape != (self.dim,):
            state.long_term = np.zeros(self.dim, dtype=np.float32)
        row = self.vocab.index.get(ev.item_id)
        if row is None:  # unknown until learnt: never let an event shape its own score
            return
        # numpy views share memory with the tables; a torch op per event would
        # cost more than the whole update.
        emb_in, cat_in = self.tables["emb_in"].array(), self.tables["cat_in"].array()
        vec = emb_in[row] + cat_in[self.vocab.item_categories()[row]]
        rate = np.float32(max(1.0 / max(state.n_events, 1), 0.02))
        lt = state.long_term
        lt += rate * (vec - lt)

    def explain_many(
        self,
        user_ids: Sequence[str],
        states: Sequence[UserState],
        lists: Sequence[Sequence[tuple[str, float]]],
    ) -> list[tuple[str, ...]]:
        """Up to three recent items that contributed most (via co-occurrence) to each list."""
        if not states:
            return []
        ranked, self._ranked = self._ranked, None
        ctx = ranked[1] if ranked is not None and ranked[0] is states else self._context(states)
        listed = pad_known(*lookup_ragged([[i for i, _ in r] for r in lists], self.vocab.index))
        # contrib[u, l] = sum over u's listed items of the co-occurrence with recent item l
        pair = self.cooc.pairs(ctx.rows[:, :, None], listed[:, None, :])  # [U, L, K]
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

    # learning -------------------------------------------------------------------
    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        """One optimiser step on the batch's next-item softmax, then update memories."""
        self.learn_later(events, before)()

    def learn_later(
        self, events: Sequence[Event], before: Sequence[UserState]
    ) -> Callable[[], None]:
        """What learning must do with the batch itself; returns the call that finishes it.

        Now: new items get rows, and when sharing, the batch's counts are queued
        (they go out in the batch's checkpoint). The returned call takes the
        optimiser step and, when not sharing, adds the counts (after the step:
        a target's own pairs must not be a feature of its score). Between the
        two, the model may rank (one batch behind on the step) but not learn.
        """
        if self.frozen:
            return _nothing
        self._install_content()
        self._expire(events)
        index = self.vocab.index
        known = np.fromiter((ev.item_id in index for ev in events), dtype=bool, count=len(events))
        rows = self._add_items(events)
        self._ensure()
        self._init_fresh()
        self.batches += 1
        batch_no = self.batches
        ctx = self._context(before)
        if self._sharing:  # counted when the contribution comes back (apply_count_delta)
            self._pending.append(sharing.contribution(events, rows, ctx, self.vocab))

        def finish() -> None:
            if self.fine_tune and known.any():
                # Items first seen in this batch have no trained row yet: no target.
                known_at = np.flatnonzero(known)
                # A long batch (a worker catching up) learns in steps of the usual
                # size: as many optimiser steps as if the events had come in time.
                for lo in range(0, len(known_at), self.step_events):
                    idx = known_at[lo : lo + self.step_events]
                    types = [EVENT_INDEX[events[int(i)].event] for i in idx]
                    self._step(ctx.take(idx), rows[idx], types, batch_no)
            if not self._sharing:
                weights = EVENT_WEIGHTS[[EVENT_INDEX[ev.event] for ev in events]]
                self.memories.remember(rows, ctx, weights, self.vocab)
                self._changed[rows] = batch_no

        return finish

    def warm_up(self) -> None:
        """Take throwaway copies of this model through two small made-up batches.

        What loads at a model's first use (compiled loops from numba's cache,
        modules imported on demand, torch's autograd) took ~0.1 s of a worker's
        first batch; a worker calls this before it consumes. Both ranking paths
        run: every item (small catalogues) and candidates (large ones). This
        model is not touched.
        """
        from model.step import process_batch
        from state.views import MemoryStates

        kinds = list(EVENT_INDEX)
        events = [
            Event(f"u{i % 6}", f"i{(i * 7) % 24}", kinds[i % len(kinds)], 1_000 * i, f"c{i % 3}")
            for i in range(96)
        ]
        for rows in (self.exhaustive_rows, 8):
            copy = InterestModel(**{**self.config, "exhaustive_rows": rows})
            view = MemoryStates()
            for lo in (0, 48):
                result = process_batch(events[lo : lo + 48], view, copy, score=False, learn="later")
                if result.finish_learning is not None:
                    result.finish_learning()

    def _train_blocks(
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
        n = self.vocab.n_rows
        if n <= self.exhaustive_rows:
            cols = self.vocab.live_rows()
            tgt = np.searchsorted(cols, targets)
            keep = self.marks.keep(np.broadcast_to(cols, (b, len(cols))), ctx.exclude, n)
            keep[np.arange(b), tgt] = True
            return [cols], tgt, keep
        cand = self.memories.candidates(ctx, self.vocab, self.marks, self._content_candidates(ctx))
        own = np.concatenate([targets[:, None], cand], axis=1)
        draws = self._rng.integers(0, n, self.n_negatives)
        shared = np.unique(np.concatenate([targets, draws[self.vocab.live()[draws]]]))
        if len(shared) > self.n_negatives:
            shared = np.sort(self._rng.choice(shared, self.n_negatives, replace=False))
        every = np.concatenate([own, np.broadcast_to(shared, (b, len(shared)))], axis=1)
        keep = self.marks.keep(every, ctx.exclude, n, keep_first=True)
        return [own, shared], np.zeros(b, dtype=np.int64), keep

    def _step(self, ctx: Context, targets: np.ndarray, types: list[int], batch_no: int) -> None:
        blocks, tgt, keep = self._train_blocks(ctx, targets)
        logits, leaves = self._logits(ctx, blocks, train=True)
        loss = _ce(logits.masked_fill(~torch.from_numpy(keep), -1e9), tgt, types)
        self.last_loss = float(loss.detach())
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        if self.content is not None:
            self.content.step(len(targets))
        for table, rows, leaf in leaves:
            table.step(rows, leaf.grad)
            if table is self.tables["emb_out"] or table is self.tables["emb_in"]:
                self._changed[rows] = batch_no

    def _recycle(self, rows: np.ndarray, categories: np.ndarray) -> None:
        self.memories.forget(rows)
        if self.content is not None:
            self.content.forget(rows)

    # item content (model/interest/content.py) ---------------------------------------------------
    def add_item_metadata(self, items: Sequence[ItemMeta]) -> None:
        """Queue item metadata; its text is encoded in the background (never waits for it)."""
        if self.content is not None and not self.frozen:
            self.content.add(items)

    def await_content(self) -> None:
        """Wait for the queued texts and install every vector (evaluator and tests)."""
        if self.content is not None and not self.frozen:
            self.content.wait()
            self._install_content(budget=None)

    def _install_content(self, budget: int | None = CONTENT_BUDGET) -> None:
        """Install the vectors encoded since the last call; their new rows start fresh."""
        if self.content is None or self.frozen or not self.content.pending:
            return
        rows = self.content.install(self.vocab, budget)
        if rows.size:
            self._ensure()
            fresh, fresh_cats = self.vocab.fresh()
            for name, table in self.tables.items():
                table.reset(fresh_cats if name.startswith("cat") else fresh)
            self._changed[rows] = self.batches

    def _content_candidates(self, ctx: Context) -> np.ndarray | None:
        if self.content is None or not self.content.active:
            return None
        return self.content.candidates(ctx)

    # sharing between copies (model.sync.Shared) --------------------------------------
    def start_sharing(self) -> None:
        """Count only what :meth:`apply_count_delta` brings; track parameter changes."""
        self._sharing = True
        for table in self.tables.values():
            table.track_changes()
        if self._dense_base is None:
            self._dense_base = [p.detach().clone() for p in self._dense()]

    def count_delta(self) -> ModelState | None:
        parts, self._pending = self._pending, []
        return sharing.merge_contributions(parts, self.window) if parts else None

    def apply_count_delta(self, delta: ModelState) -> int:
        return 0 if self.frozen else sharing.apply_counts(self, delta)

    def param_delta(self, max_bytes: int) -> list[ModelState]:
        self.start_sharing()
        assert self._dense_base is not None
        dense = {
            name: (p.detach() - base).numpy()
            for name, p, base in zip(_DENSE, self._dense(), self._dense_base, strict=True)
        }
        clocks = {name: table.clock for name, table in self.tables.items()}
        parts, outbox = sharing.param_parts(self.tables, dense, self.vocab, max_bytes)
        self._outbox = [(name, rows, sent, clocks[name]) for name, rows, sent in outbox]
        self._dense_sent = [torch.from_numpy(dense[name].copy()) for name in _DENSE]
        return parts

    def param_delta_shared(self) -> None:
        # What was sent, not the weights now: a step taken since (the worker shares
        # while the batch's step runs) is shared next time.
        for name, rows, sent, clock in self._outbox:
            self.tables[name].shared(rows, sent, clock)
        self._outbox = []
        if self._dense_base is not None and self._dense_sent:
            for base, change in zip(self._dense_base, self._dense_sent, strict=True):
                base += change
        self._dense_sent = []

    def apply_param_delta(self, delta: ModelState, adopt: bool = False) -> None:
        sharing.apply_params(self, delta, adopt)
        base = self._dense_base
        with torch.no_grad():
            for i, (name, param) in enumerate(zip(_DENSE, self._dense(), strict=True)):
                if f"dense.{name}" not in delta.arrays:
                    continue
                d = torch.from_numpy(np.asarray(delta.arrays[f"dense.{name}"], dtype=np.float32))
                if base is not None:
                    base[i] += d
                    param.copy_(base[i] if adopt else param + d)
                else:
                    param.add_(d)

    def drop_unshared(self) -> None:
        for table in self.tables.values():
            table.drop_unshared()
        if self._dense_base is not None:
            with torch.no_grad():
                for param, base in zip(self._dense(), self._dense_base, strict=True):
                    param.copy_(base)


def _nothing() -> None:
    return None


def _ce(logits: torch.Tensor, tgt: np.ndarray, types: Sequence[int]) -> torch.Tensor:
    """Event-type-weighted mean cross-entropy of the targets (float32[B, C] logits)."""
    weights = torch.from_numpy(EVENT_WEIGHTS[list(types)])
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(tgt), reduction="none")
    return (loss * weights).sum() / weights.sum()
