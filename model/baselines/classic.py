"""Baselines computed beside the interest model: incremental MF and sequential item-kNN.

Both follow the same protocol as every model here (``learn_many`` +
``rank_many``) so the evaluator runs them through the very same pure step.
They score every item row for every user — O(catalogue) per user, fine for
the evaluation data sets they exist for; the served models (``interest``,
``popular``) rank bounded candidate lists instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.types import Event, UserState
from model.counts.cooc import DEFAULT_NEIGHBOURS, SparseCoOccurrence
from model.counts.signals import DecayedCounts, recent_window
from model.persist import ModelState
from model.retrieval import DEFAULT_EXPIRE_DAYS, BaseRanker

__all__ = ["IncrementalMF", "SequentialItemKNN"]


class IncrementalMF(BaseRanker):
    """ISGD (Vinagre et al., 2014): MF for positive-only streams, one SGD step per event.

    For each event (u, i) the target is 1: ``err = 1 - p_u . q_i``, then
    ``p_u += lr * (err * q_i - reg * p_u)`` and likewise for ``q_i``.
    User vectors live in the model (a baseline needs no state store).
    """

    name = "imf"
    version = "imf-2"

    def __init__(
        self,
        dim: int = 32,
        lr: float = 0.05,
        reg: float = 0.01,
        seed: int = 0,
        exclude_seen: bool = False,
        expire_days: float | None = DEFAULT_EXPIRE_DAYS,
    ) -> None:
        self.config = {
            "dim": dim,
            "lr": lr,
            "reg": reg,
            "seed": seed,
            "exclude_seen": exclude_seen,
            "expire_days": expire_days,
        }
        super().__init__(exclude_seen, expire_days)
        self.dim, self.lr, self.reg = dim, lr, reg
        self._rng = np.random.default_rng(seed)
        self._q = np.zeros((0, dim), dtype=np.float64)
        self._p: dict[str, np.ndarray] = {}

    def _init_vec(self) -> np.ndarray:
        return self._rng.normal(0.0, 0.1, self.dim)

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        rows = self._add_items(events)
        reused = self.vocab.fresh()[0]
        reused = reused[reused < len(self._q)]  # rows of expired items: a fresh start
        if reused.size:
            self._q[reused] = self._rng.normal(0.0, 0.1, (reused.size, self.dim))
        if self.vocab.n_rows > len(self._q):
            extra = self.vocab.n_rows - len(self._q)
            self._q = np.vstack([self._q, self._rng.normal(0.0, 0.1, (extra, self.dim))])
        for ev, i in zip(events, rows, strict=True):
            p = self._p.get(ev.user_id)
            if p is None:
                p = self._p[ev.user_id] = self._init_vec()
            q = self._q[i]
            err = 1.0 - float(p @ q)
            p_new = p + self.lr * (err * q - self.reg * p)
            self._q[i] = q + self.lr * (err * p - self.reg * q)
            self._p[ev.user_id] = p_new

    def forget_users(self, user_ids: Sequence[str]) -> None:
        """Drop the users' factors (an erasure): they start again from a random vector."""
        for user in user_ids:
            self._p.pop(user, None)

    def state_dict(self) -> ModelState:
        state = super().state_dict()
        users = list(self._p)
        p = np.stack([self._p[u] for u in users]) if users else np.zeros((0, self.dim))
        state.arrays.update({"q": self._q.copy(), "p": p})
        state.meta.update({"users": users, "rng": self._rng.bit_generator.state})
        return state

    def load_state_dict(self, state: ModelState) -> None:
        super().load_state_dict(state)
        q, p = state.arrays["q"], state.arrays["p"]
        users = [str(u) for u in state.meta["users"]]
        if q.shape[1:] != (self.dim,) or p.shape != (len(users), self.dim):
            raise ValueError("factor shapes do not match the model")
        self._q = np.array(q, dtype=np.float64)
        self._p = {u: np.array(row, dtype=np.float64) for u, row in zip(users, p, strict=True)}
        self._rng.bit_generator.state = state.meta["rng"]

    def scores(
        self, user_ids: Sequence[str], states: Sequence[UserState], cols: np.ndarray | None = None
    ) -> torch.Tensor:
        zero = np.zeros(self.dim)
        p = np.stack([self._p.get(u, zero) for u in user_ids])
        return torch.from_numpy((p @ self._q[: self.vocab.n_rows].T).astype(np.float32))


class SequentialItemKNN(BaseRanker):
    """Item-kNN over the user's recent items, with co-occurrence learnt from the stream.

    Each event on item j adds ``decay**distance`` to the pair counts between j
    and each of the user's previous ``window`` items. A user's score for item
    i is ``sum_j w_j * C[r_j, i] / sqrt(n[r_j] * n[i])`` (cosine-normalised),
    with ``w_j`` decaying with the age of recent item ``r_j``. A tiny
    popularity term breaks ties (and ranks for users with no history).

    ``C`` keeps at most ``max_neighbours`` neighbours per item
    (:class:`~model.counts.cooc.SparseCoOccurrence`), for any number of items.
    """

    name = "itemknn"
    version = "itemknn-3"

    def __init__(
        self,
        window: int = 20,
        decay: float = 0.9,
        half_life: float | None = None,
        exclude_seen: bool = False,
        max_neighbours: int = DEFAULT_NEIGHBOURS,
        expire_days: float | None = DEFAULT_EXPIRE_DAYS,
    ) -> None:
        self.config = {
            "window": window,
            "decay": decay,
            "half_life": half_life,
            "exclude_seen": exclude_seen,
            "max_neighbours": max_neighbours,
            "expire_days": expire_days,
        }
        super().__init__(exclude_seen, expire_days)
        self.window, self.decay = window, decay
        self.cooc = SparseCoOccurrence(half_life, max_neighbours)
        self.counts = DecayedCounts(half_life)
        self._type_w = np.ones(4, dtype=np.float32)

    def _history(self, state: UserState) -> tuple[list[int], list[int]]:
        index = self.vocab.index
        pairs = [
            (index[i], t)
            for i, t in zip(state.recent_items, state.recent_types, strict=True)
            if i in index
        ]
        return [r for r, _ in pairs], [t for _, t in pairs]

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        rows = self._add_items(events)
        src, dst, w = [], [], []
        for j, st in zip(rows, before, strict=True):
            hist, types = self._history(st)
            r, wr = recent_window(hist, types, self.window, self.decay, self._type_w)
            keep = r != j
            src.append(r[keep])
            dst.append(np.full(int(keep.sum()), j))
            w.append(wr[keep])
        if src:
            s, d, ww = np.concatenate(src), np.concatenate(dst), np.concatenate(w)
            # Symmetric: "watched together" matters as much as "watched after" here.
            self.cooc.add(
                np.concatenate([s, d]),
                np.concatenate([d, s]),
                np.concatenate([ww, ww]),
                len(events),
            )
        self.counts.add(rows)

    def _recycle(self, rows: np.ndarray, categories: np.ndarray) -> None:
        self.cooc.forget(rows)
        self.counts.forget(rows)

    def state_dict(self) -> ModelState:
        state = super().state_dict()
        state.add("cooc", self.cooc.state_dict())
        state.add("counts", self.counts.state_dict())
        return state

    def load_state_dict(self, state: ModelState) -> None:
        super().load_state_dict(state)
        self.cooc.load_state_dict(state.part("cooc"))
        self.counts.load_state_dict(state.part("counts"))

    def scores(
        self, user_ids: Sequence[str], states: Sequence[UserState], cols: np.ndarray | None = None
    ) -> torch.Tensor:
        n = self.vocab.n_rows
        cnt = self.counts.values(n).astype(np.float32)
        inv = 1.0 / np.sqrt(np.maximum(cnt, 1e-6))
        pop = cnt / (cnt.max() + 1e-6)
        rows = np.full((len(states), self.window), -1, dtype=np.int64)
        weights = np.zeros((len(states), 1, self.window), dtype=np.float32)
        for b, st in enumerate(states):
            hist, types = self._history(st)
            r, w = recent_window(hist, types, self.window, self.decay, self._type_w)
            if r.size:
                rows[b, -r.size :] = r
                weights[b, 0, -r.size :] = w * inv[r]
        out = self.cooc.weighted_sum(rows, weights, n)[:, 0]
        out *= inv
        out += 1e-3 * pop
        return torch.from_numpy(out)
