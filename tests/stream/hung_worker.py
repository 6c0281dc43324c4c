"""``python -m tests.stream.hung_worker worker ...``: the worker with a step that can hang.

The ``interest-stream`` command line, except that a batch's step (decode, score,
learn, rank: :meth:`engine.driver.BatchDriver.run`) waits while the file named by
``$HANG_FLAG`` exists, as a model step stuck in a deadlock would: the loop stops
inside a batch, with events polled and more waiting.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from engine.driver import BatchDriver
from stream.cli.main import main

# Set when run as a program (importing this module changes nothing: pytest
# imports every module under tests/ for its doctests).
FLAG = Path()
_run = BatchDriver.run


def _hanging_run(self: BatchDriver, *args: Any, **kwargs: Any) -> Any:
    while FLAG.exists():
        time.sleep(0.05)
    return _run(self, *args, **kwargs)


if __name__ == "__main__":
    FLAG = Path(os.environ["HANG_FLAG"])
    BatchDriver.run = _hanging_run  # type: ignore[method-assign]
    sys.exit(main())
