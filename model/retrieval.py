"""Shared top-K retrieval: candidates, one score matrix per micro-batch, exclusions.

A model scores a batch of users at once as a float32[B, C] matrix over
columns that are either every row of its vocabulary (small catalogues and the
O(catalogue) baselines) or a bounded candidate list per user (int64[B, C],
-1 padded) that the model drew from its memories. Ranking is then one masked
``torch.topk`` — never a Python loop over items.

:class:`BaseRanker` also owns the vocabulary and its expiry: when event time
says so, items not seen for ``expire_days`` are dropped and the model resets
whatever it keeps for their rows (:meth:`BaseRanker._recycle`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, repeat

import numpy as np
import torch

from core.types import Event, UserState
from model.counts import cand_kernels as kern
from model.persist import ModelState
from model.vocab import ItemVocab

__all__ = [
    "BaseRanker",
    "RowMarks",
    "pad_known",
    "lookup_ragged",
    "right_aligned",
    "DAY_MS",
    "DEFAULT_EXPIRE_DAYS",
]

DAY_MS = 86_400_000
# Items (and categories) unseen for this long are forgotten and their rows reused.
DEFAULT_EXPIRE_DAYS = 90.0


def lookup_ragged(
    lists: Sequence[Sequence[str]], index: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(int64[N] the row of every id of every list in order, -1 when unknown; int64[B] lengths).

    One pass in C over all the ids of a batch instead of a Python step per id.
    """
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = list(chain.from_iterable(lists))
    rows = np.fromiter(map(index.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
    return rows, lens


def right_aligned(values: np.ndarray, lens: np.ndarray, width: int, fill: int = -1) -> np.ndarray:
    """int64[B, width]: each run of ``lens`` consecutive ``values`` ending in the last column."""
    out = np.full((len(lens), width), fill, dtype=np.int64)
    if values.size:
        users = np.repeat(np.arange(len(lens)), lens)
        out[users, np.arange(values.size) - np.repeat(np.cumsum(lens), lens) + width] = values
    return out


def pad_known(values: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """int64[B, E]: each run of ``lens`` consecutive ``values`` without its -1s, left-aligned,
    padded with -1 (E: the longest, at least 1)."""
    known = values >= 0
    users = np.repeat(np.arange(len(lens)), lens)[known]
    counts = np.bincount(users, minlength=len(lens))
    out = np.full((len(lens), max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    if users.size:
        out[users, np.arange(users.size) - np.repeat(np.cumsum(counts) - counts, counts)] = values[
            known
        ]
    return out


class RowMarks:
    """Per-row scratch of the loops in :mod:`model.counts.cand_kernels` (12 bytes a row, kept).

    >>> marks = RowMarks()
    >>> marks.keep(np.array([[3, 1, 3, -1]]), np.array([[1]]), 4).tolist()
    [[True, False, False, False]]
    >>> uniq, pos = marks.dense_ids(np.array([7, 2, 7, -1]), 8)
    >>> uniq.tolist(), pos.tolist()
    ([7, 2], [0, 1, 0, -1])
    """

    def __init__(self) -> None:
        self._stamp = np.zeros(256, dtype=np.int64)
        self._slot = np.zeros(256, dtype=np.int32)
        self._token = np.ones(1, dtype=np.int64)

    def _room(self, n_rows: int) -> None:
        if n_rows > len(self._stamp):
            size = len(self._stamp)
            while size < n_rows:
                size *= 2
            stamp = np.zeros(size, dtype=np.int64)
            stamp[: len(self._stamp)] = self._stamp
            self._stamp, self._slot = stamp, np.zeros(size, dtype=np.int32)

    def keep(
        self, cand: np.ndarray, exclude: np.ndarray, n_rows: int, keep_first: bool = False
    ) -> np.ndarray:
        """bool[B, C]: False for padding, excluded rows (``exclude`` int64[B, E]) and repeats.

        ``cand`` int64[B, C] holds rows below ``n_rows`` or -1; ``keep_first``
        keeps column 0 even when excluded (a training target).
        """
        self._room(n_rows)
        keep = np.empty(cand.shape, dtype=np.bool_)
        kern.keep_mask(cand, exclude, self._stamp, self._token, keep_first, keep)
        return keep

    def dense_ids(self, values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values in order of first appearance, each value's index in them; -1 if < 0).

        ``values`` is int64[...] below ``n_rows``; O(len(values)), no sort.
        """
        flat = np.ascontiguousarray(values, dtype=np.int64).ravel()
        self._room(n_rows)
        uniq = np.empty(flat.size, dtype=np.int64)
        pos = np.empty(flat.size, dtype=np.int64)
        u = kern.dense_ids(flat, self._stamp, self._slot, self._token, uniq, pos)
        return uniq[:u], pos.reshape(np.shape(values))


class BaseRanker:
    """Vocabulary, expiry, exclusions and batched ranking; subclasses supply ``scores``.

    ``exclude_seen`` drops every item the user has touched (the FluRS
    protocol); otherwise only purchased items are dropped. ``expire_days``
    (None: never) is how long an item may go unseen before it is forgotten.
    """

    name = "base"
    version = "base-1"

    def __init__(
        self, exclude_seen: bool = False, expire_days: float | None = DEFAULT_EXPIRE_DAYS
    ) -> None:
        self.exclude_seen = exclude_seen
        self.vocab = ItemVocab(None if expire_days is None else int(expire_days * DAY_MS))
        self.marks = RowMarks()

    def state_dict(self) -> ModelState:
        """The vocabulary; subclasses add what they learnt (see :mod:`model.persist`)."""
        state = ModelState()
        state.add("vocab", self.vocab.state_dict())
        return state

    def load_state_dict(self, state: ModelState) -> None:
        self.vocab.load_state_dict(state.part("vocab"))

    def candidates(self, user_ids: Sequence[str], states: Sequence[UserState]) -> np.ndarray | None:
        """int64[B, C] item rows to rank per user (-1 padded), or None for every row."""
        return None

    def scores(
        self, user_ids: Sequence[str], states: Sequence[UserState], cols: np.ndarray | None = None
    ) -> torch.Tensor:
        """float32[B, C] scores of the candidates ``cols`` (None: float32[B, n_rows], every row)."""
        raise NotImplementedError

    def state_before(self, state: UserState) -> UserState:
        """What ranking and learning read of ``state``, as it is now (see
        :func:`model.step.process_batch`, which keeps one per event): a copy without
        the seen list (up to 2,000 items) unless the ranker excludes seen items.
        """
        return state.copy(seen=self.exclude_seen)

    def excluded_matrix(self, states: Sequence[UserState]) -> np.ndarray:
        """int64[B, E] rows never to list per state (seen or purchased items), -1 padded."""
        lists = [st.seen if self.exclude_seen else st.purchased for st in states]
        return pad_known(*lookup_ragged(lists, self.vocab.index))

    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item_id, score) for each user, best first; never an excluded item."""
        if not user_ids:
            return []
        if len(self.vocab) == 0:
            return [[] for _ in user_ids]
        cols = self.candidates(user_ids, states)
        scores = self.scores(user_ids, states, cols)
        n = self.vocab.n_rows
        cand = np.broadcast_to(np.arange(n), (len(states), n)) if cols is None else cols
        keep = self.marks.keep(cand, self.excluded_matrix(states), n)
        if cols is None:
            keep &= self.vocab.live()[None, :]
        masked = scores.masked_fill(~torch.from_numpy(keep), float("-inf"))
        vals, idx = torch.topk(masked, min(k, masked.shape[1]), dim=1)
        picked = np.take_along_axis(cand, idx.numpy(), axis=1)
        ids = self.vocab.ids
        out: list[list[tuple[str, float]]] = []
        for rows, values in zip(picked.tolist(), vals.tolist(), strict=True):
            out.append(
                [(str(ids[r]), v) for r, v in zip(rows, values, strict=True) if v != float("-inf")]
            )
        return out

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        return self.rank_many([user_id], [state], k)[0]

    def _expire(self, events: Sequence[Event]) -> None:
        """Forget the items unseen for ``expire_days`` when a sweep is due (before a batch)."""
        now = max((ev.ts for ev in events), default=None)
        if now is not None and self.vocab.sweep_due(now):
            rows, cats = self.vocab.expire(now)
            if rows.size or cats.size:
                self._recycle(rows, cats)

    def _recycle(self, rows: np.ndarray, categories: np.ndarray) -> None:
        """Drop what is kept for expired item ``rows`` and ``categories``: they will be reused."""

    def _add_items(self, events: Sequence[Event]) -> np.ndarray:
        """Rows (int64[n]) of the events' items, adding new ones to the vocabulary.

        Expired items are forgotten first, so their rows can serve this batch's new items.
        """
        self._expire(events)
        return self.vocab.add_events((ev.item_id, ev.category, ev.ts) for ev in events)
