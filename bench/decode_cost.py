"""What validating one event costs: :func:`engine.events.decode_event` on valid messages.

    python -m bench.decode_cost [--events 100000] [--repeat 5]

Encodes ``--events`` valid events (synthetic ids, a category on half of them,
a few non-ASCII ids) once, then decodes them all ``--repeat`` times and keeps
the best pass. No Kafka involved. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from core.types import Event
from engine.events import EventValidator, decode_event, encode_event

__all__ = ["main"]

_NOW = 1_790_000_000_000


def _messages(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    kinds = ("click", "click", "click", "favourite", "cart", "purchase")
    out = []
    for i in range(n):
        user = f"u{rng.randrange(50_000)}" if rng.random() < 0.95 else f"usuário-{i % 97}"
        category = f"c{rng.randrange(40)}" if rng.random() < 0.5 else None
        ev = Event(user, f"i{rng.randrange(20_000)}", rng.choice(kinds), _NOW - n + i, category)
        out.append(encode_event(ev))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    messages = _messages(args.events, seed=3)
    validator = EventValidator()
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        for key, value in messages:
            decode_event(key, value, None, validator, _NOW)
        best = min(best, time.perf_counter() - t)
    check = [decode_event(k, v, None, validator, _NOW) for k, v in messages[:1000]]
    assert all(isinstance(ev, Event) for ev in check), "a valid event was rejected"
    print(
        json.dumps(
            {
                "events": args.events,
                "best_of": args.repeat,
                "seconds": round(best, 3),
                "events_per_s": round(args.events / best),
                "us_per_event": round(best / args.events * 1e6, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
