"""``python -m bench`` (what ``make bench`` runs): the benchmark sections, in order.

    python -m bench                          # every section
    python -m bench --sections catalogue     # some of them, comma-separated

Sections run with their own defaults; ``python -m bench.<section> --help``
shows a section's options for a run of it alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["SECTIONS", "main"]

# name -> module with main(argv) -> exit code; run in this order.
SECTIONS: dict[str, str] = {
    "runtimes": "bench.runtimes",
    "catalogue": "bench.catalogue",
    "forwarding": "bench.forwarding",
    "model_sync": "bench.model_sync",
    "refresh": "bench.refresh_cost",
    "catch_up": "bench.catch_up",
    "live": "bench.live_quality",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from: {', '.join(SECTIONS)} (default: all)",
    )
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        print(
            f"python -m bench: unknown section {unknown[0] if unknown else ''!r} "
            f"(choose from {', '.join(SECTIONS)})",
            file=sys.stderr,
        )
        return 2
    code = 0
    for name in SECTIONS:
        if name in chosen:
            print(f"== {name} ==", flush=True)
            code = max(code, importlib.import_module(SECTIONS[name]).main([]) or 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
