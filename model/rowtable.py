"""Embedding tables trained row by row: a step costs O(rows touched), not O(table).

A dense optimiser over a whole table (``torch.optim.Adam`` on an
``nn.Parameter``) reads and writes every row at every step: at a million
items that alone is hundreds of megabytes of memory traffic per micro-batch.
:class:`RowTable` keeps the weights and Adam's moments as plain tensors and
updates only the rows a batch gathered ("lazy" Adam, as TensorFlow's LazyAdam
or torch's SparseAdam), with a step count per row for the bias correction.
A row gets its random start when it is handed to an item (:meth:`RowTable.reset`),
also when its previous item expired. Given the item's key, the start is a
function of the key and the table's seed alone (:func:`seeded_normal`), so
every copy of a model (one per worker) starts an item from the same vector
wherever the item's row is.

Copies of a model share what they learn as sums of changes: with
:meth:`RowTable.track_changes` on, the table also keeps the last agreed value
of every row (``base``) and which rows this copy trained since; :meth:`RowTable.delta`
is what this copy learnt that the others have not seen yet.

Memory per row: 3 x ``width`` float32 (weight, first and second moment) and
one int32 step count; 12 x width + 4 bytes, plus 4 x width + 1 with change
tracking. A compact snapshot (:mod:`model.persist`) stores the weight as
float16 (the agreed values stay float32: copies must agree exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import numpy as np
import torch

from model.persist import ModelState

__all__ = ["RowTable", "seeded_normal"]

_BETAS = (0.9, 0.999)
_EPS = 1e-8
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser over uint64 ``x`` (wrapping arithmetic): a counter-based RNG."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_normal(keys: Sequence[str], width: int, seed: int) -> np.ndarray:
    """float32[len(keys), width] standard normal rows, each a function of (key, seed) only.

    >>> a = seeded_normal(["i1", "i2"], 4, seed=0)
    >>> b = seeded_normal(["i2"], 4, seed=0)
    >>> bool((a[1] == b[0]).all()), bool((a[0] == a[1]).all()), a.shape
    (True, False, (2, 4))
    """
    salt = int(seed).to_bytes(8, "little", signed=True)
    h = np.fromiter(
        (
            int.from_bytes(blake2b(k.encode("utf-8"), digest_size=8, key=salt).digest(), "little")
            for k in keys
        ),
        dtype=np.uint64,
        count=len(keys),
    )
    pairs = (width + 1) // 2
    counters = h[:, None] + np.arange(2 * pairs, dtype=np.uint64)[None, :] * _GOLDEN
    bits = _splitmix64(counters) >> np.uint64(11)  # 53 random bits
    u = (bits.astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    u1, u2 = u[:, 0::2], u[:, 1::2]
    r = np.sqrt(-2.0 * np.log(u1))  # Box-Muller
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1)
    return z[:, :width].astype(np.float32)


class RowTable:
    """float32[capacity, width] rows with lazy Adam state.

    ``std`` is the scale of the random initial rows (0: zeros), drawn from
    ``generator`` so that runs are reproducible, or from the rows' keys and
    ``seed`` when :meth:`reset` is given keys.

    >>> gen = torch.Generator().manual_seed(0)
    >>> table = RowTable(width=2, std=0.0, lr=0.1, generator=gen)
    >>> table.ensure(3)
    >>> rows = np.array([1])
    >>> leaf = table.gather(rows, grad=True)
    >>> (leaf.sum() * 2).backward()
    >>> table.step(rows, leaf.grad)
    >>> [round(v, 4) for v in table.weight[1].tolist()]  # moved by lr against its gradient
    [-0.1, -0.1]
    >>> table.weight[0].tolist(), table.weight[2].tolist()  # untouched rows stay
    ([0.0, 0.0], [0.0, 0.0])
    """

    def __init__(
        self, width: int, std: float, lr: float, generator: torch.Generator, seed: int = 0
    ) -> None:
        self.width, self.std, self.lr = int(width), float(std), float(lr)
        self.seed = int(seed)
        self._gen = generator
        self.weight = torch.zeros(0, self.width)
        self.exp_avg = torch.zeros(0, self.width)
        self.exp_avg_sq = torch.zeros(0, self.width)
        self.steps = torch.zeros(0, dtype=torch.int32)
        self.base: torch.Tensor | None = None  # last agreed weights (see track_changes)
        self.dirty = np.zeros(0, dtype=np.bool_)  # rows trained since they were last shared
        # Steps taken, and the step each row was last trained in: a share computed
        # before a step (the worker shares while the batch's step runs) leaves the
        # rows that step trained dirty.
        self.clock = 0
        self.trained = np.zeros(0, dtype=np.int64)
        self._view: tuple[torch.Tensor, np.ndarray] | None = None

    @property
    def capacity(self) -> int:
        return int(self.weight.shape[0])

    def array(self) -> np.ndarray:
        """The weights as a numpy view (same memory), made again only when the table grows.

        For per-event reads: ``Tensor.numpy()`` costs microseconds a call.
        """
        if self._view is None or self._view[0] is not self.weight:
            self._view = (self.weight, self.weight.numpy())
        return self._view[1]

    def _fresh(self, n: int, keys: Sequence[str] | None = None) -> torch.Tensor:
        if self.std == 0.0:
            return torch.zeros(n, self.width)
        if keys is not None:
            return torch.from_numpy(seeded_normal(keys, self.width, self.seed)) * self.std
        return torch.randn((n, self.width), generator=self._gen) * self.std

    def track_changes(self) -> None:
        """Keep the agreed value of every row and which rows were trained since (see module)."""
        if self.base is None:
            self.base = self.weight.clone()
            self.dirty = np.zeros(self.capacity, dtype=np.bool_)
            self.trained = np.zeros(self.capacity, dtype=np.int64)

    def ensure(self, n: int) -> None:
        """Make room for rows ``0..n-1``; capacity doubles (from 256).

        Room is zeros: a row gets its random start from :meth:`reset` when it is
        handed to an item, so the weights never depend on the capacity.
        """
        cap = self.capacity
        if n <= cap:
            return
        size = max(cap, 256)
        while size < n:
            size *= 2
        extra = size - cap
        self.weight = torch.cat([self.weight, torch.zeros(extra, self.width)])
        self.exp_avg = torch.cat([self.exp_avg, torch.zeros(extra, self.width)])
        self.exp_avg_sq = torch.cat([self.exp_avg_sq, torch.zeros(extra, self.width)])
        self.steps = torch.cat([self.steps, torch.zeros(extra, dtype=torch.int32)])
        if self.base is not None:
            self.base = torch.cat([self.base, torch.zeros(extra, self.width)])
            self.dirty = np.concatenate([self.dirty, np.zeros(extra, dtype=np.bool_)])
            self.trained = np.concatenate([self.trained, np.zeros(extra, dtype=np.int64)])

    def reset(self, rows: np.ndarray, keys: Sequence[str] | None = None) -> None:
        """Give ``rows`` fresh weights and no optimiser history (their owner changed).

        ``keys`` (one per row, e.g. the item ids) make the fresh weights a
        function of the key and the seed alone: every copy of the model agrees.
        """
        rows = np.asarray(rows, dtype=np.int64)
        ok = (rows >= 0) & (rows < self.capacity)
        if keys is not None and not ok.all():
            keys = [k for k, keep in zip(keys, ok.tolist(), strict=True) if keep]
        rows = rows[ok]
        if rows.size == 0:
            return
        r = torch.from_numpy(rows)
        self.weight[r] = self._fresh(rows.size, keys)
        self.exp_avg[r] = 0.0
        self.exp_avg_sq[r] = 0.0
        self.steps[r] = 0
        if self.base is not None:
            self.base[r] = self.weight[r]
            self.dirty[rows] = False

    def gather(self, rows: np.ndarray, grad: bool = False) -> torch.Tensor:
        """float32[len(rows), width] copy of ``rows``; a leaf collecting gradients if ``grad``."""
        out = self.weight[torch.from_numpy(np.asarray(rows, dtype=np.int64))]
        return out.requires_grad_(True) if grad else out

    def step(self, rows: np.ndarray, grad: torch.Tensor | None) -> None:
        """One Adam step on ``rows`` (distinct) with their gradient float32[len(rows), width]."""
        if grad is None or len(rows) == 0:
            return
        b1, b2 = _BETAS
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        steps = self.steps[r] + 1
        self.steps[r] = steps
        m = self.exp_avg[r].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.exp_avg_sq[r].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.exp_avg[r] = m
        self.exp_avg_sq[r] = v
        t = steps.to(torch.float32).unsqueeze(1)
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        self.weight[r] -= self.lr * m_hat / (v_hat.sqrt() + _EPS)
        if self.base is not None:
            self.clock += 1
            trained = np.asarray(rows, dtype=np.int64)
            self.dirty[trained] = True
            self.trained[trained] = self.clock

    # sharing (see the module docstring) -------------------------------------------
    def trained_rows(self) -> np.ndarray:
        """int64: rows trained since they were last shared."""
        return np.flatnonzero(self.dirty)

    def delta(self, rows: np.ndarray) -> np.ndarray:
        """float32[len(rows), width]: what this copy learnt on ``rows`` since they were agreed."""
        assert self.base is not None, "track_changes() first"
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        return (self.weight[r] - self.base[r]).numpy()

    def shared(self, rows: np.ndarray, sent: np.ndarray, as_of: int | None = None) -> None:
        """``sent`` (float32[len(rows), width], as the others will add it) was shared.

        What was not sent (rounding) stays in weight - base, for a later share.
        ``as_of``: the :attr:`clock` when ``sent`` was taken; rows trained since
        stay dirty (what that step learnt is in weight - base, not in ``sent``).
        """
        assert self.base is not None, "track_changes() first"
        rows = np.asarray(rows, dtype=np.int64)
        self.base[torch.from_numpy(rows)] += torch.from_numpy(np.asarray(sent, dtype=np.float32))
        if as_of is not None:
            rows = rows[self.trained[rows] <= as_of]
        self.dirty[rows] = False

    def add_delta(self, rows: np.ndarray, delta: np.ndarray, adopt: bool = False) -> None:
        """Add another copy's ``delta`` to ``rows`` (weights and agreed values).

        ``adopt``: the delta is this copy's own, shared before it restarted from
        an older state: the rows take the agreed value plus the delta, dropping
        what this copy had not shared yet (the delta includes it).
        """
        rows = np.asarray(rows, dtype=np.int64)
        r = torch.from_numpy(rows)
        d = torch.from_numpy(np.asarray(delta, dtype=np.float32))
        if self.base is None:
            self.weight[r] += d
            return
        self.base[r] += d
        if adopt:
            self.weight[r] = self.base[r]
            self.dirty[rows] = False
        else:
            self.weight[r] += d

    def drop_unshared(self) -> None:
        """Every row back to its agreed value (what this copy learnt alone is dropped)."""
        if self.base is not None:
            self.weight.copy_(self.base)
            self.dirty[:] = False

    def state_dict(self, n: int) -> ModelState:
        """Rows ``0..n-1``: weights, moments and step counts (weights may be stored float16),
        and the agreed values, when tracked."""
        arrays = {
            "weight": self.weight[:n].numpy().copy(),
            "exp_avg": self.exp_avg[:n].numpy().copy(),
            "exp_avg_sq": self.exp_avg_sq[:n].numpy().copy(),
            "steps": self.steps[:n].numpy().copy(),
        }
        if self.base is not None:
            arrays["base"] = self.base[:n].numpy().copy()
            arrays["dirty"] = self.dirty[:n].copy()
        return ModelState(arrays, half={"weight"})

    def load_state_dict(self, state: ModelState) -> None:
        arrays = state.arrays
        weight = np.asarray(arrays["weight"], dtype=np.float32)
        n = weight.shape[0]
        if weight.shape != (n, self.width) or any(
            np.shape(arrays[k]) != shape
            for k, shape in (
                ("exp_avg", weight.shape),
                ("exp_avg_sq", weight.shape),
                ("steps", (n,)),
            )
        ):
            raise ValueError(f"table of shape {weight.shape}, the model's width is {self.width}")
        self.ensure(n)
        self.weight[:n] = torch.from_numpy(weight.copy())
        self.exp_avg[:n] = torch.from_numpy(np.array(arrays["exp_avg"], dtype=np.float32))
        self.exp_avg_sq[:n] = torch.from_numpy(np.array(arrays["exp_avg_sq"], dtype=np.float32))
        self.steps[:n] = torch.from_numpy(np.array(arrays["steps"], dtype=np.int32))
        if "base" in arrays:
            if np.shape(arrays["base"]) != weight.shape:
                raise ValueError(f"agreed values of shape {np.shape(arrays['base'])}")
            self.track_changes()
            assert self.base is not None
            self.base[:n] = torch.from_numpy(np.array(arrays["base"], dtype=np.float32))
            self.dirty[:n] = np.asarray(arrays["dirty"], dtype=np.bool_)
        elif self.base is not None:  # a state saved without sharing: its weights are agreed
            self.base[:n] = self.weight[:n]
            self.dirty[:n] = False
