"""``python -m tests.stream.full_disk_worker worker ...``: the worker on a disk that fills up.

The ``interest-stream`` command line, except that while the file named by
``$FULL_DISK_FLAG`` exists, every write to a state database fails as RocksDB
fails on a full filesystem: rocksdict raises the message it gives when the
write-ahead log cannot be appended (taken from a real full tmpfs), and the
database keeps refusing writes, as RocksDB does after such an error.
Model snapshots fail with ENOSPC the same way. Without root a test cannot
mount a small filesystem to fill; this injects the failure at the store's
write path instead, in a real worker process on the real broker.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

from rocksdict import Rdict

import state.store
import stream.runtime.snapshots
from stream.cli.main import main

# Set when run as a program (importing this module changes nothing: pytest
# imports every module under tests/ for its doctests).
FLAG = Path()


class _FillingRdict:
    """An ``Rdict`` whose writes fail once the disk is "full" (and then for good)."""

    def __init__(self, path: str, options: Any) -> None:
        self._db = Rdict(path, options)
        self._path = path
        self._failed = False

    def write(self, batch: Any) -> None:
        if self._failed or FLAG.exists():
            self._failed = True
            raise Exception(  # rocksdict raises plain Exception
                "IO error: No space left on device: While appending to file: "
                f"{self._path}/000004.log: No space left on device"
            )
        self._db.write(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _full_write_atomic(path: Path, data: bytes) -> None:
    if FLAG.exists():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    _write_atomic(path, data)


_write_atomic = stream.runtime.snapshots.write_atomic

if __name__ == "__main__":
    FLAG = Path(os.environ["FULL_DISK_FLAG"])
    state.store.Rdict = _FillingRdict  # type: ignore[misc,assignment]
    stream.runtime.snapshots.write_atomic = _full_write_atomic
    sys.exit(main())
