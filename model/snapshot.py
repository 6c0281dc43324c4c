"""Versioned safetensors snapshots of the interest model (never pickle).

A snapshot holds everything the model learnt from the stream — parameters,
Adam moments, count memories, vocabulary — so a restarted or new worker
continues where the last one stopped. Tensors go into the safetensors body;
ids, categories, clocks and constructor arguments into its string metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.interest import InterestModel
from stream.errors import DataError

__all__ = ["save_snapshot", "load_snapshot", "SNAPSHOT_FORMAT"]

SNAPSHOT_FORMAT = "interest-snapshot-1"
_PARAMS = ("emb_in", "emb_out", "bias", "cat_in", "cat_out", "type_w", "decay", "lt_gain",
           "alpha", "beta")


def _counts(model: InterestModel) -> dict[str, object]:
    return {"pop_s": model.pop_s, "pop_l": model.pop_l,
            **{f"pop_b{i}": c for i, c in enumerate(model.pop_b)}}


def save_snapshot(model: InterestModel, path: str | Path) -> None:
    """Write ``model`` to ``path`` (safetensors; tensors are copied, the model is untouched)."""
    tensors: dict[str, torch.Tensor] = {}
    for name in _PARAMS:
        param = getattr(model, name)
        tensors[f"param.{name}"] = param.detach().clone().contiguous()
        state = model._opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"adam.{name}.{key}"] = state[key].detach().clone().reshape(
                    state[key].shape).contiguous()
    clocks: dict[str, float] = {"cooc": model.cooc.t}
    tensors["cooc"] = torch.from_numpy(model.cooc._m.copy())
    for name, counts in _counts(model).items():
        tensors[f"counts.{name}"] = torch.from_numpy(counts._values.copy())
        clocks[name] = counts.t
    tensors["item_cat"] = torch.from_numpy(model.vocab.item_categories().copy())
    tensors["rng.torch"] = model._gen.get_state()
    meta = {
        "format": SNAPSHOT_FORMAT,
        "version": model.version,
        "config": json.dumps(model.config),
        "items": json.dumps(model.vocab.ids),
        "categories": json.dumps(model.vocab.categories),
        "clocks": json.dumps(clocks),
        "state": json.dumps({"fine_tune": model.fine_tune, "frozen": model.frozen}),
        "rng": json.dumps(model._rng.bit_generator.state),
    }
    save_file(tensors, str(path), metadata=meta)


def load_snapshot(path: str | Path) -> InterestModel:
    """Rebuild the model saved by :func:`save_snapshot`; unreadable files raise DataError."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            meta = json.loads(fh.read(header_len)).get("__metadata__", {})
    except (OSError, SafetensorError, ValueError) as exc:
        raise DataError(f"cannot read model snapshot {path}: {exc}") from None
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise DataError(f"{path}: not an interest model snapshot ({meta.get('format')!r})")
    config = json.loads(meta["config"])
    config["knn_decay"] = tuple(config["knn_decay"])
    model = InterestModel(**config)
    vocab = model.vocab
    for item in json.loads(meta["items"]):
        vocab.add(item)
    vocab.categories = json.loads(meta["categories"])
    vocab._cat_index = {c: i for i, c in enumerate(vocab.categories) if c is not None}
    item_cat = tensors["item_cat"].numpy()
    vocab._item_cat[: len(item_cat)] = item_cat
    model._grow(tensors["param.emb_in"].shape[0], tensors["param.cat_in"].shape[0])
    for name in _PARAMS:
        param = getattr(model, name)
        with torch.no_grad():
            param.copy_(tensors[f"param.{name}"])
        state = {k: tensors[f"adam.{name}.{k}"] for k in ("exp_avg", "exp_avg_sq", "step")
                 if f"adam.{name}.{k}" in tensors}
        if state:
            model._opt.state[param] = state
    clocks = json.loads(meta["clocks"])
    model.cooc._m = tensors["cooc"].numpy().copy()
    model.cooc.t = clocks["cooc"]
    for name, counts in _counts(model).items():
        counts._values = tensors[f"counts.{name}"].numpy().astype(np.float64)
        counts.t = clocks[name]
    model._gen.set_state(tensors["rng.torch"])
    model._rng.bit_generator.state = json.loads(meta["rng"])
    flags = json.loads(meta["state"])
    model.fine_tune, model.frozen = flags["fine_tune"], flags["frozen"]
    return model
