"""Models save and load themselves: a small protocol and its safetensors encoding.

A model that can be saved has a registry ``name`` (see :mod:`model.factory`),
its constructor arguments as given (``config``) and a pair of methods:
``state_dict()`` returns a :class:`ModelState` (numpy arrays plus JSON-able
metadata) and ``load_state_dict(state)`` puts one back into a model built
from the same ``config``. Nothing outside the model reaches into it, so
snapshots, sync and the evaluator need no model-specific code.

The bytes are safetensors (never pickle): the arrays in the body, the model's
name, version, config and metadata as JSON strings in the header.

Compact snapshots: arrays a model lists in :attr:`ModelState.half` (the item
embedding weights) are stored as float16 and read back as float32; the rest,
Adam's moments among them, keep their dtype (a second moment below float16's
smallest value, 6e-8, would read back as 0 and blow up the next step). The
header's ``half`` names the arrays so stored. Format ``interest-model-3``;
``interest-model-2`` snapshots (no ``half``) are still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.errors import DataError

__all__ = [
    "ModelState",
    "Persistent",
    "SNAPSHOT_FORMAT",
    "model_to_bytes",
    "snapshot_bytes",
    "decode",
    "read_header",
    "save_params",
    "load_params",
]

SNAPSHOT_FORMAT = "interest-model-3"
_READS = ("interest-model-2", SNAPSHOT_FORMAT)
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class ModelState:
    """What a model learnt: named numpy arrays and JSON-able values.

    ``half`` names the float32 arrays a compact snapshot may store as float16
    (the model keeps training them in float32).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    half: set[str] = field(default_factory=set)

    def add(self, prefix: str, other: ModelState) -> None:
        """Merge ``other`` in, every name prefixed with ``prefix.``."""
        self.arrays.update({f"{prefix}.{k}": v for k, v in other.arrays.items()})
        self.meta.update({f"{prefix}.{k}": v for k, v in other.meta.items()})
        self.half.update(f"{prefix}.{k}" for k in other.half)

    def part(self, prefix: str) -> ModelState:
        """The entries added under ``prefix`` (see :meth:`add`), prefix removed."""
        cut = len(prefix) + 1
        return ModelState(
            {k[cut:]: v for k, v in self.arrays.items() if k.startswith(prefix + ".")},
            {k[cut:]: v for k, v in self.meta.items() if k.startswith(prefix + ".")},
            {k[cut:] for k in self.half if k.startswith(prefix + ".")},
        )


def save_params(state: ModelState, params: dict[str, Any], optimizer: Any) -> None:
    """Torch parameters and their optimiser moments into ``state`` (``param.*``, ``adam.*``)."""
    for name, param in params.items():
        state.arrays[f"param.{name}"] = param.detach().numpy().copy()
        for key, value in optimizer.state.get(param, {}).items():
            state.arrays[f"adam.{name}.{key}"] = value.detach().numpy().copy()


def load_params(arrays: dict[str, np.ndarray], params: dict[str, Any], optimizer: Any) -> None:
    """The inverse of :func:`save_params`: values copied in place, moments restored."""
    import torch  # only the models that hold torch parameters call this

    for name, param in params.items():
        value = torch.from_numpy(np.array(arrays[f"param.{name}"]))
        if value.shape != param.shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, not {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(value)
        moments = {
            key: torch.from_numpy(np.array(arrays[f"adam.{name}.{key}"]))
            for key in ("exp_avg", "exp_avg_sq", "step")
            if f"adam.{name}.{key}" in arrays
        }
        if moments:
            optimizer.state[param] = moments


@runtime_checkable
class Persistent(Protocol):
    """A model that saves and loads itself."""

    name: str  # registry name: model.factory.create_model(name, **config) rebuilds it
    version: str
    config: dict[str, Any]

    def state_dict(self) -> ModelState:
        """Everything learnt so far (copies: the model may go on learning)."""
        ...

    def load_state_dict(self, state: ModelState) -> None:
        """Take over what :meth:`state_dict` returned (by a model with the same config)."""
        ...


def model_to_bytes(model: Persistent, compact: bool = True) -> bytes:
    """Safetensors bytes of ``model`` (arrays in the body, the rest in the header).

    ``compact``: the arrays the model marks ``half`` are stored as float16
    (see the module docstring); False stores every array exactly.
    """
    return snapshot_bytes(model.name, model.version, model.config, model.state_dict(), compact)


def snapshot_bytes(
    name: str,
    version: str,
    config: dict[str, Any],
    state: ModelState,
    compact: bool = True,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Safetensors bytes of a model's ``state`` taken earlier (see :func:`model_to_bytes`).

    ``extra`` (JSON-able) is kept in the header as ``extra``: what the caller
    needs to know about the state (e.g. which shared updates it includes).
    """
    from safetensors.numpy import save

    half = sorted(k for k in state.half if k in state.arrays) if compact else []
    arrays = {}
    for k, v in state.arrays.items():
        if k in half:
            v = np.clip(np.asarray(v, dtype=np.float32), -_F16_MAX, _F16_MAX).astype(np.float16)
        # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
        arrays[k] = np.require(v, requirements="C")
    header = {
        "format": SNAPSHOT_FORMAT,
        "model": name,
        "version": version,
        "config": json.dumps(config),
        "meta": json.dumps(state.meta),
        "half": json.dumps(half),
    }
    if extra:
        header["extra"] = json.dumps(extra)
    return save(arrays, metadata=header)


def read_header(data: bytes) -> dict[str, str]:
    """The string metadata of safetensors ``data`` (raises DataError when unreadable)."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 + size:
            raise ValueError("truncated header")
        header = json.loads(data[8 : 8 + size])
        meta = header.get("__metadata__", {})
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
        return meta
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"not a model snapshot: {exc}") from None


def decode(data: bytes) -> tuple[dict[str, str], ModelState]:
    """The header and the :class:`ModelState` of bytes written by :func:`snapshot_bytes`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    meta = read_header(data)
    if meta.get("format") not in _READS:
        raise DataError(f"not a model snapshot of this version ({meta.get('format')!r})")
    try:
        arrays = dict(load(data))
        extra = json.loads(meta["meta"])
        json.loads(meta["config"])
        half = json.loads(meta.get("half", "[]"))
        if not isinstance(half, list) or not all(isinstance(k, str) for k in half):
            raise ValueError("half is not a list of array names")
        for k in half:
            arrays[k] = arrays[k].astype(np.float32)
    except (SafetensorError, ValueError, KeyError) as exc:
        raise DataError(f"model snapshot is unreadable: {exc}") from None
    return meta, ModelState(arrays, extra, set(half))
