"""``python -m stream.cli`` and the ``interest-stream`` command: :func:`run`."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # Ctrl-C while the command's modules load (seconds on a busy machine): nothing
    # has started yet, so nothing needs stopping.
    os.write(2, b"interest-stream: interrupted\n")
    os._exit(130)


def run() -> int:
    """Load the command line, then run it; Ctrl-C at any point ends it with 130."""
    signal.signal(signal.SIGINT, _interrupted)
    from stream.cli.main import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    return main()


if __name__ == "__main__":
    sys.exit(run())
