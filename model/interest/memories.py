"""What the interest model counts: popularity, co-occurrence, top lists; candidates and features.

:class:`CountMemories` holds every count the model keeps (no gradient):

* ``pop_s``, ``pop_l`` — trending (short half-life) and long-run popularity;
  ``pop_b[s]`` — popularity among users at experience stage ``s``;
* ``cooc`` — bounded sparse co-occurrence (:class:`~model.counts.cooc.SparseCoOccurrence`);
* top lists (:class:`~model.counts.topitems.TopIndex`): trending, popular, per stage
  and per category.

It serves the model in two ways, both in O(users x candidates), whatever the
catalogue size:

* :meth:`CountMemories.candidates` — per user, the rows worth ranking: their
  recent items, the co-occurrence neighbours of those, trending and popular
  items, what users at their stage pick, and the top items of their main
  categories; deduplicated, without excluded rows.
* :meth:`CountMemories.features` — the count features of given columns
  (gathers, never full arrays).

Memory per item row: 8 bytes per count (10 counts), 8 per top-list index
(11 indexes), about 17 bytes of co-occurrence header plus about 10 bytes per
stored neighbour (at most ``max_neighbours``; see model/counts/cooc.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.counts import cand_kernels as kern
from model.counts.cooc import SparseCoOccurrence
from model.counts.signals import DecayedCounts
from model.counts.topitems import TopIndex
from model.persist import ModelState
from model.retrieval import RowMarks
from model.vocab import ItemVocab

__all__ = [
    "Context",
    "CountMemories",
    "EVENT_WEIGHTS",
    "N_STAGES",
    "CAT_DECAY",
    "COUNT_FEATURES",
    "stage",
]

COUNT_FEATURES: tuple[str, ...] = ("knn_s", "knn_l", "cat", "pop_s", "pop_l", "pop_b")
# Training weight of each event type, in EVENT_TYPES order (click, favourite, cart, purchase).
EVENT_WEIGHTS = np.array([1.0, 2.0, 1.5, 3.0], dtype=np.float32)
N_STAGES = 8
# Per-event decay of the category-share feature. 0.7 -> 0.6 halves the synthetic
# adaptation lag (median 3 -> 2 events) at no measurable cost in recall.
CAT_DECAY = 0.6
# Candidates per user, by source (before duplicates are removed).
KNN_CANDIDATES = 200
TRENDING = 50
POPULAR = 50
PER_STAGE = 50
TOP_CATEGORIES = 3
PER_CATEGORY = 30


def stage(n_events: int) -> int:
    """Experience bucket on a log scale: 0, 1, 2-3, 4-7, ..., 64+ events."""
    return min(int(n_events).bit_length(), N_STAGES - 1)


@dataclass(slots=True)
class Context:
    """A batch of user contexts; B users, L recent slots (padded on the left)."""

    rows: np.ndarray  # int64[B, L] item rows, -1 where padded
    mask: np.ndarray  # bool[B, L] True for real items
    types: np.ndarray  # int64[B, L] event type index
    ages: np.ndarray  # float32[B, L] 0 for the newest event
    lt: np.ndarray  # float32[B, d] long-term vectors
    cold: np.ndarray  # float32[B] cold-start factor in (0, 1]
    stage: np.ndarray  # int64[B] experience bucket of the user (see stage)
    exclude: np.ndarray  # int64[B, E] item rows never to list, -1 padded

    def take(self, idx: np.ndarray) -> Context:
        """The contexts of users ``idx`` only."""
        return Context(
            self.rows[idx],
            self.mask[idx],
            self.types[idx],
            self.ages[idx],
            self.lt[idx],
            self.cold[idx],
            self.stage[idx],
            self.exclude[idx],
        )


def _positional(ages: np.ndarray) -> bool:
    """True when every context's ages are its slots' distances from the newest (L-1 .. 0)."""
    if ages.shape[0] < 2:
        return False
    return bool((ages == np.arange(ages.shape[1] - 1, -1, -1, dtype=ages.dtype)).all())


def compact(cand: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """int64[B, C']: the kept entries of each row first (order kept), -1 after, C' = most kept."""
    order = np.argsort(~keep, axis=1, kind="stable")
    cand = np.take_along_axis(cand, order, axis=1)
    keep = np.take_along_axis(keep, order, axis=1)
    width = int(keep.sum(axis=1).max(initial=0))
    return np.where(keep, cand, -1)[:, :width]


class CountMemories:
    """The count memories of the interest model (see the module docstring)."""

    def __init__(
        self,
        short_half_life: float | None,
        stage_half_life: float | None,
        knn_decay: tuple[float, ...],
        knn_norm: float,
        max_neighbours: int,
    ) -> None:
        self.knn_decay = np.asarray(knn_decay, dtype=np.float32)
        self.knn_norm = knn_norm
        self.cooc = SparseCoOccurrence(None, max_neighbours)
        self.pop_s = DecayedCounts(short_half_life)
        self.pop_l = DecayedCounts(None)
        # Newcomers pick from what other newcomers pick, not what regulars pick.
        self.pop_b = [DecayedCounts(stage_half_life) for _ in range(N_STAGES)]
        self.trending = TopIndex(self.pop_s, TRENDING)
        self.popular = TopIndex(self.pop_l, POPULAR)
        self.by_stage = [TopIndex(c, PER_STAGE) for c in self.pop_b]
        self.by_category = TopIndex(self.pop_l, PER_CATEGORY)
        self._cat_scratch = np.zeros(64, dtype=np.float32)

    # learning -------------------------------------------------------------------
    def remember(
        self, rows: np.ndarray, ctx: Context, weights: np.ndarray, vocab: ItemVocab
    ) -> None:
        """Count a batch: events on ``rows`` by users with contexts ``ctx`` (before the events)."""
        # Pair each event's item with the user's recent items, weighted by age.
        bi, li = np.nonzero(ctx.mask & (ctx.rows != rows[:, None]))
        src, dst = ctx.rows[bi, li], rows[bi]
        w = np.power(self.knn_decay[1], ctx.ages[bi, li])
        self.cooc.add(
            np.concatenate([src, dst]),
            np.concatenate([dst, src]),
            np.concatenate([w, w]),
            len(rows),
        )
        self.pop_s.add(rows, weights)
        for s, counts in enumerate(self.pop_b):
            # Every bucket's clock advances with every event, so half-lives agree.
            counts.add(rows, (ctx.stage == s).astype(np.float64))
        self.pop_l.add(rows)
        self.trending.update(rows)
        self.popular.update(rows)
        for s, index in enumerate(self.by_stage):
            index.update(rows[ctx.stage == s])
        cats = vocab.categories_of(rows)
        self.by_category.update(rows[cats > 0], cats[cats > 0])

    def forget(self, rows: np.ndarray) -> None:
        """Drop everything counted for ``rows`` (expired items; the rows will be reused)."""
        for index in self._indexes().values():
            index.forget(rows)
        for counts in self._counts().values():
            counts.forget(rows)
            counts.refresh_max()
        self.cooc.forget(rows)

    # reading --------------------------------------------------------------------
    def _knn_scale(self, rows: np.ndarray) -> np.ndarray:
        """float32: 1 / sqrt(long-run count) of ``rows`` (cosine normalisation; 1 if unseen)."""
        return (1.0 / np.sqrt(np.maximum(self.pop_l.at(rows), 1.0))).astype(np.float32)

    def _knn_weights(self, ctx: Context) -> np.ndarray:
        """float32[B, 2, L]: weight of each recent item in the short and long kNN scores."""
        base = EVENT_WEIGHTS[ctx.types] * self._knn_scale(ctx.rows) * ctx.mask
        return base[:, None, :] * np.power(self.knn_decay[None, :, None], ctx.ages[:, None, :])

    def _category_weights(self, ctx: Context, vocab: ItemVocab) -> tuple[np.ndarray, ...]:
        """int64[B, L] categories of the recent items (0: none) and their float32 weights."""
        cats = vocab.categories_of(ctx.rows)
        w = EVENT_WEIGHTS[ctx.types] * np.power(np.float32(CAT_DECAY), ctx.ages) * ctx.mask
        n_cats = vocab.n_categories
        if n_cats > len(self._cat_scratch):
            self._cat_scratch = np.zeros(max(n_cats, 2 * len(self._cat_scratch)), np.float32)
        return cats, w.astype(np.float32)

    def candidates(
        self, ctx: Context, vocab: ItemVocab, marks: RowMarks, extra: np.ndarray | None = None
    ) -> np.ndarray:
        """int64[B, C] rows worth ranking per user (-1 padded; no repeats, no excluded rows).

        ``extra`` (int64[B, X], -1 padded): more candidates from another source
        (the content neighbours of :mod:`model.interest.content`).
        """
        b = ctx.rows.shape[0]
        zero = np.zeros(1, dtype=np.int64)
        # Neighbours ranked by the knn_l feature itself (popularity-normalised columns).
        counts, _ = self.pop_l.stored()  # pop_l never fades: stored values are counts
        knn, _ = self.cooc.top_items(
            ctx.rows,
            self._knn_weights(ctx)[:, 1],
            KNN_CANDIDATES,
            ctx.exclude,
            counts,
            self.knn_norm,
        )
        shared = np.concatenate(
            [self.trending.top_many(zero, TRENDING)[0], self.popular.top_many(zero, POPULAR)[0]],
            axis=1,
        )
        by_stage = np.concatenate([ix.top_many(zero, PER_STAGE)[0] for ix in self.by_stage])
        cats, w = self._category_weights(ctx, vocab)
        top_cats = np.empty((b, TOP_CATEGORIES), dtype=np.int64)
        shares = np.empty((b, TOP_CATEGORIES), dtype=np.float32)
        kern.user_categories(cats, w, self._cat_scratch, top_cats, shares)
        by_cat = self.by_category.top_many(top_cats.ravel(), PER_CATEGORY)[0].reshape(b, -1)
        cand = np.concatenate(
            [
                ctx.rows,
                knn,
                np.broadcast_to(shared, (b, shared.shape[1])),
                by_stage[ctx.stage],
                by_cat,
                *([] if extra is None else [extra]),
            ],
            axis=1,
        )
        return compact(cand, marks.keep(cand, ctx.exclude, vocab.n_rows))

    def features(self, ctx: Context, cols: np.ndarray, vocab: ItemVocab) -> np.ndarray:
        """float32[B, 6, C] count features (:data:`COUNT_FEATURES`) of columns ``cols``.

        ``cols`` is int64[C] (the same columns for every user) or int64[B, C]
        (per user; -1: padding, scored as an unseen item). Feature first: each
        feature is one contiguous [C] row per user, which the blend reads as one
        small matrix product per user.
        """
        b, c = ctx.rows.shape[0], cols.shape[-1]
        w = self._knn_weights(ctx)
        if cols.ndim == 1 and len(cols) == vocab.n_rows:  # every row, in order: a dense pass
            # A training batch holds each user's consecutive windows: with ages by
            # position, one is the last moved on by one event (see weighted_sum).
            shift = (ctx.types, self.knn_decay) if _positional(ctx.ages) else None
            knn = self.cooc.weighted_sum(ctx.rows, w, len(cols), shift=shift)
        elif cols.ndim == 1:
            knn = self.cooc.weighted_sum(ctx.rows, w, 0, cols)
        else:
            knn = self.cooc.scores(ctx.rows, w, cols)
        knn *= (self._knn_scale(cols) ** np.float32(2 * self.knn_norm))[..., None, :]
        knn /= np.maximum(knn.max(axis=2, keepdims=True, initial=0.0), 1e-9)
        out = np.empty((b, len(COUNT_FEATURES), c), dtype=np.float32)
        out[:, :2] = knn
        cats, w_cat = self._category_weights(ctx, vocab)
        cand_cat = vocab.categories_of(cols)
        share = np.zeros((b, c), dtype=np.float32)
        kern.category_share(
            cats, w_cat, np.broadcast_to(cand_cat, (b, c)), self._cat_scratch, share
        )
        out[:, 2] = share
        out[:, 3] = _log_share(self.pop_s, cols)
        out[:, 4] = _log_share(self.pop_l, cols)
        for s in np.unique(ctx.stage):
            idx = np.flatnonzero(ctx.stage == s)
            out[idx, 5] = _log_share(self.pop_b[s], cols if cols.ndim == 1 else cols[idx])
        return out

    # persistence ----------------------------------------------------------------
    def _counts(self) -> dict[str, DecayedCounts]:
        return {
            "pop_s": self.pop_s,
            "pop_l": self.pop_l,
            **{f"pop_b{i}": c for i, c in enumerate(self.pop_b)},
        }

    def _indexes(self) -> dict[str, TopIndex]:
        return {
            "top_trending": self.trending,
            "top_popular": self.popular,
            "top_category": self.by_category,
            **{f"top_stage{i}": ix for i, ix in enumerate(self.by_stage)},
        }

    def state_dict(self) -> ModelState:
        state = ModelState()
        state.add("cooc", self.cooc.state_dict())
        for name, counts in self._counts().items():
            state.add(name, counts.state_dict())
        for name, index in self._indexes().items():
            state.add(name, index.state_dict())
        return state

    def load_state_dict(self, state: ModelState) -> None:
        self.cooc.load_state_dict(state.part("cooc"))
        for name, counts in self._counts().items():
            counts.load_state_dict(state.part(name))
        for name, index in self._indexes().items():
            index.load_state_dict(state.part(name))


def _log_share(counts: DecayedCounts, rows: np.ndarray) -> np.ndarray:
    """float32 log(1 + count) of ``rows`` over log(1 + the largest count): in [0, 1]."""
    top = np.log1p(max(counts.max(), 0.0))
    return (np.log1p(counts.at(rows)) / max(top, 1e-9)).astype(np.float32)
