"""Model snapshots: :mod:`model.persist` bytes turned back into a model, and files.

Any model that saves itself (:class:`model.persist.Persistent`) can be
snapshotted; the bytes are safetensors (never pickle). The registry
(:mod:`model.factory`) rebuilds the model from its name and config, then the
model loads what it had learnt.

>>> from model.factory import create_model
>>> from core.types import Event
>>> model = create_model("popular")
>>> model.learn_many([Event("u1", "i1", "click", 1767225600000)], [])
>>> copy = model_from_bytes(model_to_bytes(model))
>>> copy.vocab.ids, copy.counts.values(1).tolist()
(['i1'], [1.0])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.errors import DataError
from model.factory import create_model
from model.persist import Persistent, decode, model_to_bytes

__all__ = ["model_from_bytes", "read_snapshot", "save_snapshot", "load_snapshot", "write_atomic"]


def model_from_bytes(data: bytes) -> Any:
    """Rebuild the model written by :func:`model.persist.model_to_bytes` (DataError if not)."""
    return read_snapshot(data)[0]


def read_snapshot(data: bytes) -> tuple[Any, dict[str, Any]]:
    """The model in snapshot ``data`` and the ``extra`` its writer kept in the header."""
    meta, state = decode(data)
    model = create_model(meta.get("model", ""), **json.loads(meta["config"]))
    if not isinstance(model, Persistent):
        raise DataError(f"model {meta.get('model')!r} cannot be loaded from a snapshot")
    if model.version != meta.get("version"):
        raise DataError(
            f"model snapshot of {meta.get('version')!r} cannot be loaded into {model.version!r}"
        )
    try:
        model.load_state_dict(state)
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise DataError(f"model snapshot does not fit the model: {exc}") from None
    return model, extra if isinstance(extra, dict) else {}


def save_snapshot(model: Persistent, path: str | Path) -> None:
    """Write ``model`` to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(Path(path), model_to_bytes(model))


def write_atomic(path: Path, data: bytes) -> None:
    """A temp file, fsync, then rename: a crash mid-write keeps the previous file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def load_snapshot(path: str | Path, with_extra: bool = False) -> Any:
    """The model saved at ``path`` (and its header's ``extra`` with ``with_extra``);
    an unreadable or foreign file raises DataError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read model snapshot {path}: {exc.strerror or exc}") from None
    try:
        model, extra = read_snapshot(data)
    except DataError as exc:
        raise DataError(f"cannot read model snapshot {path}: {exc}") from None
    return (model, extra) if with_extra else model
