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
with few events lean on trending items and categories. Everything is trained
by one Adam step per micro-batch on the next-item softmax (all items, or
sampled + in-batch negatives for large catalogues), events weighted
purchase > favourite > cart > click; the count memories are updated after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.types import EVENT_INDEX, Event, UserState
from model.persist import ModelState
from model.retrieval import BaseRanker
from model.signals import CoOccurrence, DecayedCounts

__all__ = ["InterestModel", "FEATURES", "EVENT_WEIGHTS"]

FEATURES: tuple[str, ...] = ("emb", "knn_s", "knn_l", "cat", "pop_s", "pop_l", "pop_b")
# Training weight of each event type, in EVENT_TYPES order (click, favourite, cart, purchase).
EVENT_WEIGHTS = np.array([1.0, 2.0, 1.5, 3.0], dtype=np.float32)
N_STAGES = 8
_PARAM_NAMES = (
    "emb_in",
    "emb_out",
    "bias",
    "cat_in",
    "cat_out",
    "type_w",
    "decay",
    "lt_gain",
    "alpha",
    "beta",
)
# Per-event decay of the category-share feature. 0.7 -> 0.6 halves the synthetic
# adaptation lag (median 3 -> 2 events) at no measurable cost in recall.
CAT_DECAY = 0.6


def _stage(n_events: int) -> int:
    """Experience bucket on a log scale: 0, 1, 2-3, 4-7, ..., 64+ events."""
    return min(int(n_events).bit_length(), N_STAGES - 1)


@dataclass(slots=True)
class _Context:
    """A batch of user contexts; B users, L recent slots (padded on the left)."""

    rows: np.ndarray  # int64[B, L] item rows (0 where padded)
    mask: np.ndarray  # bool[B, L] True for real items
    types: np.ndarray  # int64[B, L] event type index
    ages: np.ndarray  # float32[B, L] 0 for the newest event
    lt: np.ndarray  # float32[B, d] long-term vectors
    cold: np.ndarray  # float32[B] cold-start factor in (0, 1]
    stage: np.ndarray  # int64[B] experience bucket of the user (see _stage)
    exclude: list[list[int]]  # per user, item rows never to list (only when training)

    def take(self, idx: np.ndarray) -> _Context:
        """The contexts of users ``idx`` only."""
        return _Context(
            self.rows[idx],
            self.mask[idx],
            self.types[idx],
            self.ages[idx],
            self.lt[idx],
            self.cold[idx],
            self.stage[idx],
            [self.exclude[i] for i in idx] if self.exclude else [],
        )


class InterestModel(BaseRanker):
    """Online-trained interest model (see the module docstring).

    ``fine_tune=False`` stops the optimiser but keeps the count memories
    (popularity, co-occurrence, vocabulary) learning; :meth:`freeze` stops
    both — the ``interest-static`` baseline: a model trained once and deployed,
    whose users' states still move.
    """

    name = "interest"
    version = "interest-2"

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
        max_full_softmax: int = 20000,
        n_negatives: int = 2048,
        max_items: int = 8192,
        knn_norm: float = 0.5,
        stage_half_life: float | None = 2000.0,
        blend_lr: float | None = 0.05,
    ) -> None:
        # Constructor arguments as given, so the model can be cloned or snapshotted.
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config["knn_decay"] = list(knn_decay)  # JSON-able, as a snapshot stores it
        super().__init__(exclude_seen)
        self.seed, self.dim, self.window, self.lr = seed, dim, window, lr
        self.knn_decay = tuple(knn_decay)
        self.knn_norm = knn_norm
        self.fine_tune = fine_tune
        self.frozen = False
        self.max_full_softmax, self.n_negatives = max_full_softmax, n_negatives
        self._gen = torch.Generator().manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self.cooc = CoOccurrence(None, max_items)
        self.pop_s = DecayedCounts(short_half_life)
        # Popularity among users at the same stage (how many events they have):
        # newcomers pick from what other newcomers pick, not what regulars pick.
        self.pop_b = [DecayedCounts(stage_half_life) for _ in range(N_STAGES)]
        self.pop_l = DecayedCounts(None)
        self._cap, self._cat_cap = 0, 0
        self.emb_in = nn.Parameter(torch.empty(0, dim))
        self.emb_out = nn.Parameter(torch.empty(0, dim))
        self.bias = nn.Parameter(torch.empty(0))
        self.cat_in = nn.Parameter(torch.empty(0, dim))
        self.cat_out = nn.Parameter(torch.empty(0, dim))
        self.type_w = nn.Parameter(torch.log(torch.from_numpy(EVENT_WEIGHTS.copy())))
        self.decay = nn.Parameter(torch.tensor(0.3))
        self.lt_gain = nn.Parameter(torch.tensor(0.5))
        n_f = len(FEATURES)
        self.alpha = nn.Parameter(torch.tensor([1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0])[:n_f])
        self.beta = nn.Parameter(torch.zeros(n_f))
        params = self._params()
        # Group 0 holds the growing tables (see _grow); the blend may learn at its own pace.
        groups: list[dict[str, Any]] = [
            {"params": params[:5]},
            {"params": params[5:], "lr": lr if blend_lr is None else blend_lr},
        ]
        self._opt = torch.optim.Adam(groups, lr=lr)
        self._grow(256, 64)

    # parameters ---------------------------------------------------------------------
    def _params(self) -> list[nn.Parameter]:
        """The trained parameters, in :data:`_PARAM_NAMES` order."""
        return [
            self.emb_in,
            self.emb_out,
            self.bias,
            self.cat_in,
            self.cat_out,
            self.type_w,
            self.decay,
            self.lt_gain,
            self.alpha,
            self.beta,
        ]

    def _grow(self, n_items: int, n_cats: int) -> None:
        """Make room for ``n_items`` item rows and ``n_cats`` category rows.

        Tables double; Adam's moments are padded with zeros so training goes on.
        """

        def bigger(cur: int, need: int) -> int:
            size = max(cur, 1)
            while size < need:
                size *= 2
            return size

        new_cap, new_cat = bigger(self._cap, n_items), bigger(self._cat_cap, n_cats)
        if new_cap == self._cap and new_cat == self._cat_cap:
            return
        scale = 0.1 / np.sqrt(self.dim)
        plan = [
            ("emb_in", new_cap, scale),
            ("emb_out", new_cap, scale),
            ("bias", new_cap, 0.0),
            ("cat_in", new_cat, scale),
            ("cat_out", new_cat, scale),
        ]
        for name, rows, std in plan:
            old: nn.Parameter = getattr(self, name)
            extra = rows - old.shape[0]
            if extra <= 0:
                continue
            fresh = torch.randn((extra, *old.shape[1:]), generator=self._gen) * std
            new = nn.Parameter(torch.cat([old.data, fresh]))
            state = self._opt.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    pad = torch.zeros((extra, *old.shape[1:]))
                    state[key] = torch.cat([state[key], pad])
                self._opt.state[new] = state
            group = self._opt.param_groups[0]["params"]
            group[[p is old for p in group].index(True)] = new
            setattr(self, name, new)
        self._cap, self._cat_cap = new_cap, new_cat

    def freeze(self, keep_memories: bool = False) -> None:
        """Stop learning from the stream (``keep_memories``: only the optimiser stops)."""
        self.fine_tune = False
        self.frozen = not keep_memories

    # persistence (see model.persist) ------------------------------------------------
    def _count_memories(self) -> dict[str, DecayedCounts]:
        return {
            "pop_s": self.pop_s,
            "pop_l": self.pop_l,
            **{f"pop_b{i}": c for i, c in enumerate(self.pop_b)},
        }

    def state_dict(self) -> ModelState:
        """Parameters, Adam moments, count memories, vocabulary and random states."""
        state = super().state_dict()
        for name, param in zip(_PARAM_NAMES, self._params(), strict=True):
            state.arrays[f"param.{name}"] = param.detach().numpy().copy()
            for key, value in self._opt.state.get(param, {}).items():
                state.arrays[f"adam.{name}.{key}"] = value.detach().numpy().copy()
        state.add("cooc", self.cooc.state_dict())
        for name, counts in self._count_memories().items():
            state.add(name, counts.state_dict())
        state.arrays["rng.torch"] = self._gen.get_state().numpy().copy()
        state.meta.update(
            {
                "fine_tune": self.fine_tune,
                "frozen": self.frozen,
                "rng.numpy": self._rng.bit_generator.state,
            }
        )
        return state

    def load_state_dict(self, state: ModelState) -> None:
        super().load_state_dict(state)
        arrays = state.arrays
        self._grow(arrays["param.emb_in"].shape[0], arrays["param.cat_in"].shape[0])
        for name, param in zip(_PARAM_NAMES, self._params(), strict=True):
            value = torch.from_numpy(np.array(arrays[f"param.{name}"]))
            if value.shape != param.shape:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, the model {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value)
            moments = {
                key: torch.from_numpy(np.array(arrays[f"adam.{name}.{key}"]))
                for key in ("exp_avg", "exp_avg_sq", "step")
                if f"adam.{name}.{key}" in arrays
            }
            if moments:
                self._opt.state[param] = moments
        self.cooc.load_state_dict(state.part("cooc"))
        for name, counts in self._count_memories().items():
            counts.load_state_dict(state.part(name))
        self._gen.set_state(torch.from_numpy(np.array(arrays["rng.torch"])))
        self._rng.bit_generator.state = state.meta["rng.numpy"]
        self.fine_tune, self.frozen = bool(state.meta["fine_tune"]), bool(state.meta["frozen"])

    # user context ---------------------------------------------------------------
    def _context(self, states: Sequence[UserState], training: bool = False) -> _Context:
        """Pack the users' recent windows into padded arrays (see :class:`_Context`)."""
        b, L, d = len(states), self.window, self.dim
        rows = np.full((b, L), -1, dtype=np.int64)
        types = np.zeros((b, L), dtype=np.int64)
        lt = np.zeros((b, d), dtype=np.float32)
        cold = np.empty(b, dtype=np.float32)
        stage = np.empty(b, dtype=np.int64)
        index = self.vocab.index
        exclude: list[list[int]] = []
        for i, st in enumerate(states):
            recent = st.recent_items[-L:]
            if recent:
                n = len(recent)
                rows[i, L - n :] = [index.get(it, -1) for it in recent]
                types[i, L - n :] = st.recent_types[-L:]
            if st.long_term.shape == (d,):
                lt[i] = st.long_term
            cold[i] = 1.0 / (1.0 + st.n_events / 3.0)
            stage[i] = _stage(st.n_events)
            if training:
                exclude.append(self.excluded_rows(st))
        # Items the model has not learnt yet (e.g. state restored elsewhere) are
        # padding, but they still count for the age of older items.
        mask = rows >= 0
        rows[~mask] = 0
        ages = np.broadcast_to(np.arange(L - 1, -1, -1, dtype=np.float32), (b, L)).copy()
        return _Context(rows, mask, types, ages, lt, cold, stage, exclude)

    def _count_features(self, ctx: _Context, cols: np.ndarray | None) -> torch.Tensor:
        """float32[B, C, 5]: knn_s, knn_l, cat, pop_s, pop_l (no gradient)."""
        n = len(self.vocab)
        b = ctx.rows.shape[0]
        c = n if cols is None else len(cols)
        occ = self.pop_l.values(n).astype(np.float32)
        inv = 1.0 / np.sqrt(np.maximum(occ, 1.0))
        inv_t = inv ** (2 * self.knn_norm)
        inv_c = inv_t if cols is None else inv_t[cols]
        decays = np.asarray(self.knn_decay, dtype=np.float32)[None, :, None]
        base = EVENT_WEIGHTS[ctx.types] * inv[ctx.rows] * ctx.mask  # [B, L]
        w = base[:, None, :] * np.power(decays, ctx.ages[:, None, :])  # [B, 2, L]
        knn = self.cooc.weighted_sum(ctx.rows, w, n, cols)  # [B, 2, C]
        knn *= inv_c
        knn /= np.maximum(knn.max(axis=2, keepdims=True), 1e-9)
        cats = self.vocab.item_categories()
        cat_c = cats if cols is None else cats[cols]
        # Recency-weighted share of the user's recent events in each category.
        hist = np.zeros((b, self.vocab.n_categories), dtype=np.float32)
        w_cat = EVENT_WEIGHTS[ctx.types] * np.power(np.float32(CAT_DECAY), ctx.ages) * ctx.mask
        np.add.at(
            hist,
            (np.repeat(np.arange(b), ctx.rows.shape[1]), cats[ctx.rows].ravel()),
            w_cat.ravel(),
        )
        hist[:, 0] = 0.0  # "unknown category" is no evidence of interest
        hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1e-9)
        cat = hist[:, cat_c]
        pops = []
        for counts in (self.pop_s, self.pop_l):
            p = np.log1p(counts.values(n).astype(np.float32))
            p /= max(float(p.max()), 1e-9)
            pops.append(np.broadcast_to(p if cols is None else p[cols], (b, c)))
        by_stage = np.stack([np.log1p(st.values(n).astype(np.float32)) for st in self.pop_b])
        by_stage /= np.maximum(by_stage.max(axis=1, keepdims=True), 1e-9)
        pops.append(by_stage[ctx.stage] if cols is None else by_stage[ctx.stage][:, cols])
        feats = np.stack([knn[:, 0], knn[:, 1], cat, *pops], axis=2)
        return torch.from_numpy(np.ascontiguousarray(feats))

    def _logits(self, ctx: _Context, cols: np.ndarray | None) -> torch.Tensor:
        """float32[B, C] blended scores over items ``cols`` (all items when None)."""
        return self._blend(ctx, cols, self._emb_scores(ctx, cols))

    def _emb_scores(self, ctx: _Context, cols: np.ndarray | None) -> torch.Tensor:
        """float32[B, C]: the embedding part alone (attention query . item vector + bias)."""
        n = len(self.vocab)
        cats = torch.from_numpy(self.vocab.item_categories())
        col_t = torch.arange(n) if cols is None else torch.from_numpy(cols)
        rows = torch.from_numpy(ctx.rows)
        mask = torch.from_numpy(ctx.mask)
        att = self.type_w[torch.from_numpy(ctx.types)] - nn.functional.softplus(
            self.decay
        ) * torch.from_numpy(ctx.ages)
        att = torch.softmax(att.masked_fill(~mask, -1e9), dim=1) * mask  # [B, L]
        ctx_vec = self.emb_in[rows] + self.cat_in[cats[rows]]  # [B, L, d]
        q = (att.unsqueeze(2) * ctx_vec).sum(1) + self.lt_gain * torch.from_numpy(ctx.lt)
        items = self.emb_out[col_t] + self.cat_out[cats[col_t]]  # [C, d]
        return q @ items.T + self.bias[col_t]

    def _blend(self, ctx: _Context, cols: np.ndarray | None, emb: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([emb.unsqueeze(2), self._count_features(ctx, cols)], dim=2)
        cold = torch.from_numpy(ctx.cold).unsqueeze(1)
        weights = self.alpha + cold * self.beta  # [B, F]
        return (feats * weights.unsqueeze(1)).sum(2)

    # ranking --------------------------------------------------------------------
    def scores(self, user_ids: Sequence[str], states: Sequence[UserState]) -> torch.Tensor:
        with torch.no_grad():
            return self._logits(self._context(states), None)

    def update_state(self, state: UserState, ev: Event) -> None:
        """Move the user's long-term vector towards the item just touched (EMA)."""
        if state.long_term.shape != (self.dim,):
            state.long_term = np.zeros(self.dim, dtype=np.float32)
        row = self.vocab.index.get(ev.item_id)
        if row is None:  # unknown until learnt: never let an event shape its own score
            return
        # numpy views share memory with the parameters (Adam updates in place);
        # a torch op per event would cost more than the whole update.
        emb_in, cat_in = self.emb_in.detach().numpy(), self.cat_in.detach().numpy()
        vec = emb_in[row] + cat_in[self.vocab.item_categories()[row]]
        rate = max(1.0 / max(state.n_events, 1), 0.02)
        state.long_term += np.float32(rate) * (vec - state.long_term)

    def explain_many(
        self,
        user_ids: Sequence[str],
        states: Sequence[UserState],
        lists: Sequence[Sequence[tuple[str, float]]],
    ) -> list[tuple[str, ...]]:
        """Up to three recent items that contributed most (via co-occurrence) to each list."""
        if not states:
            return []
        ctx = self._context(states)
        index = self.vocab.index
        k = max((len(r) for r in lists), default=0)
        listed = np.zeros((len(states), max(k, 1)), dtype=np.int64)
        valid = np.zeros_like(listed, dtype=bool)
        for i, ranked in enumerate(lists):
            rows = [index[item] for item, _ in ranked if item in index]
            listed[i, : len(rows)] = rows
            valid[i, : len(rows)] = True
        # contrib[u, l] = sum over u's listed items of the co-occurrence with recent item l
        pair = self.cooc.pairs(ctx.rows[:, :, None], listed[:, None, :])  # [U, L, K]
        contrib = (pair * valid[:, None, :]).sum(2) * ctx.mask  # [U, L]
        ids = self.vocab.ids
        out: list[tuple[str, ...]] = []
        for i in range(len(states)):
            order = np.argsort(-contrib[i], kind="stable")
            picked = [ids[ctx.rows[i, j]] for j in order if contrib[i, j] > 0]
            if not picked and ctx.mask[i].any():
                picked = [ids[ctx.rows[i, np.flatnonzero(ctx.mask[i])[-1]]]]
            out.append(tuple(dict.fromkeys(picked))[:3])
        return out

    # learning -------------------------------------------------------------------
    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        """One optimiser step on the batch's next-item softmax, then update memories."""
        if self.frozen:
            return
        index = self.vocab.index
        known = np.fromiter((ev.item_id in index for ev in events), dtype=bool, count=len(events))
        rows = self._add_items(events)
        self._grow(len(self.vocab), self.vocab.n_categories)
        ctx = self._context(before, training=self.fine_tune)
        if self.fine_tune and known.any():
            # Items first seen in this batch have no trained row yet: no target.
            idx = np.flatnonzero(known)
            self._step(ctx.take(idx), rows[idx], [EVENT_INDEX[events[int(i)].event] for i in idx])
        self._remember(events, rows, before, ctx)

    def _step(self, ctx: _Context, targets: np.ndarray, types: list[int]) -> None:
        n = len(self.vocab)
        if n <= self.max_full_softmax:
            cols, tgt = None, targets
        else:
            sampled = self._rng.integers(0, n, self.n_negatives)
            cols, inverse = np.unique(np.concatenate([targets, sampled]), return_inverse=True)
            tgt = inverse[: len(targets)]
        logits = self._logits(ctx, cols)
        if cols is None:
            logits = _mask(logits, ctx.exclude, tgt)
        loss = _ce(logits, tgt, types)
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()

    def _remember(
        self, events: Sequence[Event], rows: np.ndarray, before: Sequence[UserState], ctx: _Context
    ) -> None:
        # Pair each event's item with the user's recent items, weighted by age.
        bi, li = np.nonzero(ctx.mask & (ctx.rows != rows[:, None]))
        src, dst = ctx.rows[bi, li], rows[bi]
        w = np.power(np.float32(self.knn_decay[1]), ctx.ages[bi, li])
        self.cooc.add(
            np.concatenate([src, dst]),
            np.concatenate([dst, src]),
            np.concatenate([w, w]),
            len(events),
        )
        weights = EVENT_WEIGHTS[[EVENT_INDEX[ev.event] for ev in events]]
        self.pop_s.add(rows, weights)
        stages = ctx.stage
        for b, counts in enumerate(self.pop_b):
            # Every bucket's clock advances with every event, so half-lives agree.
            counts.add(rows, (stages == b).astype(np.float64))
        self.pop_l.add(rows)


def _mask(logits: torch.Tensor, exclude: list[list[int]], tgt: np.ndarray) -> torch.Tensor:
    """``logits`` with excluded items (except each row's target) pushed to -1e9."""
    bi = [i for i, rows in enumerate(exclude) for _ in rows]
    if not bi:
        return logits
    ri = [r for rows in exclude for r in rows]
    block = torch.zeros(logits.shape, dtype=torch.bool)
    block[torch.tensor(bi), torch.tensor(ri)] = True
    block[torch.arange(len(tgt)), torch.from_numpy(tgt)] = False
    return logits.masked_fill(block, -1e9)


def _ce(logits: torch.Tensor, tgt: np.ndarray, types: Sequence[int]) -> torch.Tensor:
    """Event-type-weighted mean cross-entropy of the targets (float32[B, C] logits)."""
    weights = torch.from_numpy(EVENT_WEIGHTS[list(types)])
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(tgt), reduction="none")
    return (loss * weights).sum() / weights.sum()
