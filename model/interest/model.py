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
with 54,000 long-tail items, 3.5 KiB with 9,000 busy ones (docs/model/results-history.md).

The model is composed of parts, each in its module: the trained parameters
(:mod:`model.interest.params`), the count memories (:mod:`model.interest.memories`),
item content (:mod:`model.interest.content`), scoring (:mod:`model.interest.ranking`),
learning (:mod:`model.interest.training`) and sharing between copies
(:mod:`model.interest.sharing`); this class wires them and keeps the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from core.types import EVENT_INDEX, Event, UserState
from model.interest.content import INSTALL_BUDGET as CONTENT_BUDGET
from model.interest.content import ContentPart
from model.interest.memories import EVENT_WEIGHTS, Context, CountMemories
from model.interest.params import FEATURES, InterestParams
from model.interest.ranking import Ranking
from model.interest.sharing import Sharing, apply_counts, apply_params
from model.interest.training import Training
from model.items import ItemMeta
from model.persist import ModelState
from model.retrieval import DEFAULT_EXPIRE_DAYS, BaseRanker
from model.rowtable import RowTable

__all__ = ["InterestModel", "FEATURES", "EVENT_WEIGHTS", "EXHAUSTIVE_ROWS", "STEP_EVENTS"]

# Up to this many item rows, every item is a candidate and training uses the
# full softmax (docs/model/results-history.md, "Catalogue scale", has the cost of both paths).
# Amazon Scientific (4,385 items), validation part: 8,192 rather than 2,048 took Recall@10
# from 0.0830 to 0.0880 and its time from 63 s to 38 s (docs/model/content.md).
EXHAUSTIVE_ROWS = 8192
# Co-occurrence neighbours kept per item. ML-100K (FluRS, Recall@10, seed 0): 128 -> 0.2002,
# 256 -> 0.2025, 4,096 (exact) -> 0.2021; synthetic stream: no difference.
NEIGHBOURS = 256
# Most events one optimiser step learns from: the worker's usual micro-batch cap.
STEP_EVENTS = 500


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
        self._gen = torch.Generator().manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self.memories = CountMemories(
            short_half_life, stage_half_life, tuple(knn_decay), knn_norm, max_neighbours
        )
        self.cooc, self.pop_l = self.memories.cooc, self.memories.pop_l
        self.batches = 0  # learning steps so far: the clock of :meth:`changed_rows`
        self.params = InterestParams(
            self.vocab, dim, lr, lr if blend_lr is None else blend_lr, self._gen, seed
        )
        # Item text (model/interest/content.py): None keeps the model as it is without metadata.
        self.content = ContentPart(dim, lr, blend_lr or lr) if content else None
        self.ranking = Ranking(
            self.params,
            self.memories,
            self.content,
            self.marks,
            self.excluded_matrix,
            window,
            exhaustive_rows,
        )
        self.training = Training(
            self.params, self.ranking, self.content, self._rng, n_negatives, step_events
        )
        self.sharing = Sharing(self.params, window)

    # parameters (model.interest.params) ----------------------------------------------
    @property
    def tables(self) -> dict[str, RowTable]:
        return self.params.tables

    @property
    def emb_in(self) -> torch.Tensor:
        return self.params.emb_in

    @property
    def emb_out(self) -> torch.Tensor:
        return self.params.emb_out

    @property
    def type_w(self) -> nn.Parameter:
        return self.params.type_w

    @property
    def decay(self) -> nn.Parameter:
        return self.params.decay

    @property
    def lt_gain(self) -> nn.Parameter:
        return self.params.lt_gain

    @property
    def alpha(self) -> nn.Parameter:
        return self.params.alpha

    @property
    def beta(self) -> nn.Parameter:
        return self.params.beta

    @property
    def last_loss(self) -> float | None:
        """The loss of the last optimiser step (None before the first)."""
        return self.training.last_loss

    def changed_rows(self, since: int) -> np.ndarray:
        """Item rows whose embeddings or counts changed after learning step ``since``."""
        return self.params.changed_rows(since)

    def freeze(self, keep_memories: bool = False) -> None:
        """Stop learning from the stream (``keep_memories``: only the optimiser stops)."""
        self.fine_tune = False
        self.frozen = not keep_memories

    # what taking in another copy's delta needs (model.interest.sharing.Receiver) ------
    def expire_until(self, ts: int) -> None:
        """Forget the items unseen for ``expire_days`` before event time ``ts`` (when due)."""
        self._expire([Event("", "", "click", ts)])

    def grow(self) -> None:
        """Room for every row of the vocabulary; the rows it just handed out start from
        vectors seeded by their item or category, and point at their item's text."""
        fresh = self.params.grow()
        if self.content is not None:
            self.content.attach(fresh, self.vocab)

    def mark_changed(self, rows: np.ndarray) -> None:
        """Item ``rows`` changed at the current learning step (see :meth:`changed_rows`)."""
        self.params.mark_changed(rows, self.batches)

    # persistence (see model.persist) ------------------------------------------------
    def state_dict(self) -> ModelState:
        """Tables with their moments, dense parameters and Adam, count memories, random states."""
        state = super().state_dict()
        self.params.save(state)
        state.add("memories", self.memories.state_dict())
        if self.content is not None and self.content.active:
            state.add("content", self.content.state_dict())
        self.sharing.save(state)
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
        self.params.load(state)
        self.sharing.load(state)
        self.memories.load_state_dict(state.part("memories"))
        if self.content is not None and "content.vectors" in state.arrays:
            self.content.load_state_dict(state.part("content"))
        self._gen.set_state(torch.from_numpy(np.array(state.arrays["rng.torch"])))
        self._rng.bit_generator.state = state.meta["rng.numpy"]
        self.fine_tune, self.frozen = bool(state.meta["fine_tune"]), bool(state.meta["frozen"])
        self.batches = int(state.meta["batches"])

    # ranking (model.interest.ranking) ---------------------------------------------------
    def _context(self, states: Sequence[UserState]) -> Context:
        """Pack the users' recent windows into padded arrays (see :class:`Context`)."""
        return self.ranking.context(states)

    def scores(
        self, user_ids: Sequence[str], states: Sequence[UserState], cols: np.ndarray | None = None
    ) -> torch.Tensor:
        return self.ranking.scores(states, cols)

    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item_id, score) per user, over their candidates; never an excluded item."""
        self._install_content()
        if not user_ids or len(self.vocab) == 0:
            return [[] for _ in user_ids]
        return self.ranking.rank_many(states, k)

    def update_state(self, state: UserState, ev: Event) -> None:
        """Move the user's long-term vector towards the item just touched (EMA)."""
        self.ranking.update_state(state, ev)

    def explain_many(
        self,
        user_ids: Sequence[str],
        states: Sequence[UserState],
        lists: Sequence[Sequence[tuple[str, float]]],
    ) -> list[tuple[str, ...]]:
        """Up to three recent items that contributed most (via co-occurrence) to each list."""
        return self.ranking.explain_many(states, lists)

    # learning (model.interest.training) -------------------------------------------------
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
        self.grow()
        self.batches += 1
        batch_no = self.batches
        ctx = self.ranking.context(before)
        if self.sharing.active:  # counted when the contribution comes back (apply_count_delta)
            self.sharing.queue(events, rows, ctx)

        def finish() -> None:
            if self.fine_tune:
                # Items first seen in this batch have no trained row yet: no target.
                self.training.learn(events, rows, known, ctx, batch_no)
            if not self.sharing.active:
                weights = EVENT_WEIGHTS[[EVENT_INDEX[ev.event] for ev in events]]
                self.memories.remember(rows, ctx, weights, self.vocab)
                self.params.mark_changed(rows, batch_no)

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
        for rows in (self.config["exhaustive_rows"], 8):
            copy = InterestModel(**{**self.config, "exhaustive_rows": rows})
            view = MemoryStates()
            for lo in (0, 48):
                result = process_batch(events[lo : lo + 48], view, copy, score=False, learn="later")
                if result.finish_learning is not None:
                    result.finish_learning()

    def _recycle(self, rows: np.ndarray, categories: np.ndarray) -> None:
        self.memories.forget(rows)
        if self.content is not None:
            self.content.forget(rows)

    # item content (model.interest.content) ----------------------------------------------
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
            self.params.grow(seeded=False)
            self.mark_changed(rows)

    # sharing between copies (model.sync.Shared, model.interest.sharing) -----------------
    def start_sharing(self) -> None:
        """Count only what :meth:`apply_count_delta` brings; track parameter changes."""
        self.sharing.start()

    def count_delta(self) -> ModelState | None:
        return self.sharing.count_delta()

    def apply_count_delta(self, delta: ModelState) -> int:
        return 0 if self.frozen else apply_counts(self, delta)

    def param_delta(self, max_bytes: int) -> list[ModelState]:
        return self.sharing.param_delta(max_bytes)

    def param_delta_shared(self) -> None:
        self.sharing.delivered()

    def apply_param_delta(self, delta: ModelState, adopt: bool = False) -> None:
        apply_params(self, delta, adopt)
        self.sharing.add_dense(delta, adopt)

    def drop_unshared(self) -> None:
        self.sharing.drop_unshared()


def _nothing() -> None:
    return None
