"""Model snapshot files: :mod:`model.persist` bytes written atomically, read back.

Any model that saves itself (:class:`model.persist.Persistent`) can be
snapshotted; the file is safetensors (never pickle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.errors import DataError
from model.persist import Persistent, model_from_bytes, model_to_bytes

__all__ = ["save_snapshot", "load_snapshot", "write_atomic"]


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


def load_snapshot(path: str | Path) -> Any:
    """The model saved at ``path``; an unreadable or foreign file raises DataError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read model snapshot {path}: {exc.strerror or exc}") from None
    try:
        return model_from_bytes(data)
    except DataError as exc:
        raise DataError(f"cannot read model snapshot {path}: {exc}") from None
