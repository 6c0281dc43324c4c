"""Embedding tables trained row by row: a step costs O(rows touched), not O(table).

A dense optimiser over a whole table (``torch.optim.Adam`` on an
``nn.Parameter``) reads and writes every row at every step: at a million
items that alone is hundreds of megabytes of memory traffic per micro-batch.
:class:`RowTable` keeps the weights and Adam's moments as plain tensors and
updates only the rows a batch gathered ("lazy" Adam, as TensorFlow's LazyAdam
or torch's SparseAdam), with a step count per row for the bias correction.
A row gets its random start when it is handed to an item (:meth:`RowTable.reset`),
also when its previous item expired.

Memory per row: 3 x ``width`` float32 (weight, first and second moment) and
one int32 step count; 12 x width + 4 bytes. A compact snapshot
(:mod:`model.persist`) stores the weight as float16: 10 x width + 4 bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from model.persist import ModelState

__all__ = ["RowTable"]

_BETAS = (0.9, 0.999)
_EPS = 1e-8


class RowTable:
    """float32[capacity, width] rows with lazy Adam state.

    ``std`` is the scale of the random initial rows (0: zeros), drawn from
    ``generator`` so that runs are reproducible.

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

    def __init__(self, width: int, std: float, lr: float, generator: torch.Generator) -> None:
        self.width, self.std, self.lr = int(width), float(std), float(lr)
        self._gen = generator
        self.weight = torch.zeros(0, self.width)
        self.exp_avg = torch.zeros(0, self.width)
        self.exp_avg_sq = torch.zeros(0, self.width)
        self.steps = torch.zeros(0, dtype=torch.int32)

    @property
    def capacity(self) -> int:
        return int(self.weight.shape[0])

    def _fresh(self, n: int) -> torch.Tensor:
        if self.std == 0.0:
            return torch.zeros(n, self.width)
        return torch.randn((n, self.width), generator=self._gen) * self.std

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

    def reset(self, rows: np.ndarray) -> None:
        """Give ``rows`` fresh weights and no optimiser history (their owner changed)."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < self.capacity)]
        if rows.size == 0:
            return
        r = torch.from_numpy(rows)
        self.weight[r] = self._fresh(rows.size)
        self.exp_avg[r] = 0.0
        self.exp_avg_sq[r] = 0.0
        self.steps[r] = 0

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

    def state_dict(self, n: int) -> ModelState:
        """Rows ``0..n-1``: weights, moments and step counts (weights may be stored float16)."""
        return ModelState(
            {
                "weight": self.weight[:n].numpy().copy(),
                "exp_avg": self.exp_avg[:n].numpy().copy(),
                "exp_avg_sq": self.exp_avg_sq[:n].numpy().copy(),
                "steps": self.steps[:n].numpy().copy(),
            },
            half={"weight"},
        )

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
