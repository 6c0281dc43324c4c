"""The interest model's trained parameters: item and category rows, the blend, their Adam.

* Tables (:class:`~model.rowtable.RowTable`, each with its own lazy Adam):
  ``emb_in``, ``emb_out`` (float32[rows, dim]) and ``bias`` (float32[rows, 1]),
  one row per row of the model's vocabulary; ``cat_in``, ``cat_out``
  (float32[categories, dim]), one row per category row, row 0 the "unknown
  category".
* Dense parameters of the blend (see :mod:`model.interest.model`), with one
  dense Adam: ``type_w`` (float32[4], log weight of each event type in the
  attention), ``decay`` (attention decay per event of age, through softplus),
  ``lt_gain`` (weight of the long-term vector in the query), ``alpha`` and
  ``beta`` (float32[7], each feature's weight is ``alpha_f + beta_f * cold``).

The tables grow with the vocabulary they share with the model
(:meth:`InterestParams.grow`). Every item row also carries the learning step
that last changed it (:meth:`InterestParams.changed_rows`): what a refresh of
users' lists looks at.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.interest.memories import EVENT_WEIGHTS
from model.persist import ModelState, load_params, save_params
from model.rowtable import RowTable
from model.vocab import ItemVocab

__all__ = ["InterestParams", "FEATURES", "TABLES", "DENSE"]

FEATURES: tuple[str, ...] = ("emb", "knn_s", "knn_l", "cat", "pop_s", "pop_l", "pop_b")
TABLES = ("emb_in", "emb_out", "bias", "cat_in", "cat_out")
DENSE = ("type_w", "decay", "lt_gain", "alpha", "beta")


class InterestParams:
    """The trained tensors of the interest model, but the content part's (see the module).

    ``vocab`` is the model's own (rows are handed out there); the tables draw
    unseeded fresh rows from ``generator``, seeded ones from ``seed``.
    """

    def __init__(
        self,
        vocab: ItemVocab,
        dim: int,
        lr: float,
        blend_lr: float,
        generator: torch.Generator,
        seed: int,
    ) -> None:
        self.vocab, self.dim = vocab, dim
        # The learning step that last changed each item row (see changed_rows).
        self.changed = np.zeros(0, dtype=np.int64)
        scale = 0.1 / np.sqrt(dim)
        self.tables = {
            name: RowTable(
                1 if name == "bias" else dim, 0.0 if name == "bias" else scale, lr, generator, seed
            )
            for name in TABLES
        }
        self.ensure()
        for name in ("cat_in", "cat_out"):  # row 0: "unknown category"
            self.tables[name].reset(np.zeros(1, dtype=np.int64), [f"{name}/"])
        self.type_w = nn.Parameter(torch.log(torch.from_numpy(EVENT_WEIGHTS.copy())))
        self.decay = nn.Parameter(torch.tensor(0.3))
        self.lt_gain = nn.Parameter(torch.tensor(0.5))
        self.alpha = nn.Parameter(torch.tensor([1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0]))
        self.beta = nn.Parameter(torch.zeros(len(FEATURES)))
        self.opt = torch.optim.Adam(self.dense(), lr=blend_lr)

    @property
    def emb_in(self) -> torch.Tensor:
        return self.tables["emb_in"].weight

    @property
    def emb_out(self) -> torch.Tensor:
        return self.tables["emb_out"].weight

    def dense(self) -> list[nn.Parameter]:
        """The dense parameters, in :data:`DENSE` order."""
        return [self.type_w, self.decay, self.lt_gain, self.alpha, self.beta]

    def named_dense(self) -> dict[str, nn.Parameter]:
        return dict(zip(DENSE, self.dense(), strict=True))

    def tensors(self) -> list[torch.Tensor]:
        """Every trained tensor: the tables' weights, then the dense parameters."""
        return [t.weight for t in self.tables.values()] + list(self.dense())

    # growing with the vocabulary ---------------------------------------------------------
    def ensure(self) -> None:
        """Room for every item and category row of the vocabulary (no row is started)."""
        n, nc = self.vocab.n_rows, self.vocab.n_categories
        for name, table in self.tables.items():
            table.ensure(nc if name.startswith("cat") else n)
        if len(self.changed) < self.tables["emb_in"].capacity:
            grown = np.zeros(self.tables["emb_in"].capacity, dtype=np.int64)
            grown[: len(self.changed)] = self.changed
            self.changed = grown

    def grow(self, seeded: bool = True) -> np.ndarray:
        """:meth:`ensure`, then start the rows the vocabulary just handed out; returns those
        item rows (int64).

        ``seeded``: from vectors seeded by their item or category, so that every
        copy of the model starts an item alike; otherwise from the generator
        (the rows an item's text brought in, see ``InterestModel._install_content``).
        """
        self.ensure()
        fresh, fresh_cats = self.vocab.fresh()
        if not seeded:
            for name, table in self.tables.items():
                table.reset(fresh_cats if name.startswith("cat") else fresh)
            return fresh
        ids, cats = self.vocab.ids, self.vocab.categories
        for name, table in self.tables.items():
            if name.startswith("cat"):
                table.reset(fresh_cats, [f"{name}/{cats[c]}" for c in fresh_cats.tolist()])
            else:
                table.reset(fresh, [f"{name}/{ids[r]}" for r in fresh.tolist()])
        return fresh

    # the changed clock ---------------------------------------------------------------
    def mark_changed(self, rows: np.ndarray, clock: int) -> None:
        """Item ``rows`` changed at learning step ``clock``."""
        self.changed[rows] = clock

    def changed_rows(self, since: int) -> np.ndarray:
        """Item rows whose embeddings or counts changed after learning step ``since``."""
        return np.flatnonzero(self.changed[: self.vocab.n_rows] > since)

    # persistence (see model.persist) ---------------------------------------------------
    def save(self, state: ModelState) -> None:
        """Into ``state``: the tables' rows with their moments (``<table>.*``), the dense
        parameters and their Adam (``param.*``, ``adam.*``) and the changed clock."""
        n, nc = self.vocab.n_rows, self.vocab.n_categories
        for name, table in self.tables.items():
            state.add(name, table.state_dict(nc if name.startswith("cat") else n))
        save_params(state, self.named_dense(), self.opt)
        state.arrays["changed"] = self.changed[:n].copy()

    def load(self, state: ModelState) -> None:
        """The inverse of :meth:`save` (the vocabulary is loaded already)."""
        for name, table in self.tables.items():
            table.load_state_dict(state.part(name))
        self.ensure()
        load_params(state.arrays, self.named_dense(), self.opt)
        changed = np.asarray(state.arrays["changed"], dtype=np.int64)
        self.changed[: len(changed)] = changed
