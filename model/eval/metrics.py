"""What the evaluator measures: the FluRS split, and metrics per model and segment.

Metrics (each scored event has exactly one relevant item, the one it touched):
Recall@K (hit rate), NDCG@K, MRR@K (reciprocal rank, 0 beyond K), precision@K
(= recall / K), F1@K, catalogue coverage (share of the items seen in the
stream that appeared in at least one scored list) and, when the ground truth
is known (synthetic stream), adaptation lag: after a user's interest switch,
the number of that user's events until at least 60% of their top-K lie in the
new interest (median and p90). Only switches the user stays with for at least
10 events are measured, the same ones for every model (the others are
``lag_censored``); a list that has not followed within those 10 events counts
as infinite (a null percentile); ``lag_p90_followed`` is the p90 among
followed switches.

Segments: the same metrics (without time and lag, with the number of
``events``) for events on new items (fewer than ``NEW_ITEM_EVENTS`` earlier
events on the item in the replayed stream) and old items, and for new users
(their first ``NEW_USER_EVENTS`` events) and old users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.types import Event
from model.data.synthetic import Switch

__all__ = [
    "ModelReport",
    "split_flurs",
    "split_last_item",
    "split_validation",
    "PROTOCOLS",
    "SEGMENTS",
    "NEW_ITEM_EVENTS",
    "NEW_USER_EVENTS",
    "FLURS_TRAIN",
    "FLURS_UPDATE",
]

PROTOCOLS: tuple[str, ...] = ("flurs", "prequential", "last-item")
FLURS_TRAIN, FLURS_UPDATE = 0.2, 0.1
VALIDATION_SHARE = 0.3  # the first part of a stream that settings are chosen on
LAG_SHARE = 0.6
LAG_HORIZON = 10
NEW_ITEM_EVENTS = 5  # an item with fewer earlier events than this is new
NEW_USER_EVENTS = 5  # a user's first events
SEGMENTS: tuple[str, ...] = ("new_items", "old_items", "new_users", "old_users")


@dataclass
class ModelReport:
    """Running metrics of one model; ``hits`` keeps the 0/1 hit of every scored event."""

    k: int
    hits: list[int] = field(default_factory=list)
    ndcg: float = 0.0
    rr: float = 0.0
    recommended: set[str] = field(default_factory=set)
    seconds: float = 0.0
    lags: list[float] = field(default_factory=list)
    lag_censored: int = 0
    segments: dict[str, ModelReport] = field(default_factory=dict)

    def add(self, rank: int | None, listed: Sequence[str], segments: Sequence[str] = ()) -> None:
        self.hits.append(0 if rank is None else 1)
        if rank is not None:
            self.ndcg += 1.0 / math.log2(rank + 2)
            self.rr += 1.0 / (rank + 1)
        self.recommended.update(listed)
        for name in segments:
            seg = self.segments.get(name)
            if seg is None:
                seg = self.segments[name] = ModelReport(self.k)
            seg.add(rank, listed)

    def summary(self, catalogue: int, with_lag: bool, segments: bool = True) -> dict[str, Any]:
        """The metrics; ``segments``: with those of each segment (see the module docstring)."""
        n = max(len(self.hits), 1)
        recall = sum(self.hits) / n
        precision = recall / self.k
        f1 = 0.0 if recall == 0 else 2 * precision * recall / (precision + recall)
        out: dict[str, Any] = {
            "recall": round(recall, 5),
            "ndcg": round(self.ndcg / n, 5),
            "mrr": round(self.rr / n, 5),
            "precision": round(precision, 5),
            "f1": round(f1, 5),
            "coverage": round(len(self.recommended) / max(catalogue, 1), 5),
            "seconds": round(self.seconds, 2),
        }
        if with_lag:
            lags = np.asarray(self.lags, dtype=np.float64)
            out["lag_switches"] = int(lags.size)
            out["lag_censored"] = self.lag_censored
            out["lag_followed"] = round(float(np.isfinite(lags).mean()), 4) if lags.size else None
            for name, q in (("lag_median", 50), ("lag_p90", 90)):
                v = float(np.percentile(lags, q, method="lower")) if lags.size else math.inf
                out[name] = v if math.isfinite(v) else None
            # Among the switches the list did follow (the rest are null above).
            done = lags[np.isfinite(lags)]
            out["lag_p90_followed"] = (
                float(np.percentile(done, 90, method="lower")) if done.size else None
            )
        if segments:
            out["segments"] = {name: self._segment(name, catalogue) for name in SEGMENTS}
        return out

    def _segment(self, name: str, catalogue: int) -> dict[str, Any]:
        seg = self.segments.get(name, ModelReport(self.k))
        out = seg.summary(catalogue, with_lag=False, segments=False)
        del out["seconds"]
        out["events"] = len(seg.hits)
        return out


def split_flurs(
    events: Sequence[Event], ratings: Sequence[float] | None
) -> tuple[list[Event], list[Event], list[Event]]:
    """(train, update, test) under the FluRS protocol; ratings None keeps every event."""
    pos = (
        list(events)
        if ratings is None
        else [ev for ev, r in zip(events, ratings, strict=True) if r == 5]
    )
    n = len(pos)
    a, b = int(n * FLURS_TRAIN), int(n * (FLURS_TRAIN + FLURS_UPDATE))
    return pos[:a], pos[a:b], pos[b:]


def split_validation(
    events: Sequence[Event], ratings: Sequence[float] | None, protocol: str
) -> tuple[list[Event], list[Event]]:
    """(learnt, scored) of the validation part of ``events`` for ``protocol``
    (``flurs`` or ``prequential``): the stream's first ``VALIDATION_SHARE`` only, so
    settings are chosen without looking at the part a report scores.

    ``prequential``: the first 30% of the events, every one scored then learnt.
    ``flurs``: the protocol's own warm-up (the first 30% of the positives), replayed
    with the same protocol inside it: its first 30% learnt, the rest scored.

    >>> from core.types import Event
    >>> evs = [Event("u", str(i), "click", i) for i in range(20)]
    >>> learnt, scored = split_validation(evs, None, "prequential")
    >>> len(learnt), [e.item_id for e in scored]
    (0, ['0', '1', '2', '3', '4', '5'])
    >>> learnt, scored = split_validation(evs, None, "flurs")
    >>> [e.item_id for e in learnt], [e.item_id for e in scored]
    (['0'], ['1', '2', '3', '4', '5'])
    """
    if protocol == "prequential":
        return [], list(events[: int(len(events) * VALIDATION_SHARE)])
    if protocol != "flurs":
        raise ValueError(f"no validation split of this kind for protocol {protocol!r}")
    train, update, _ = split_flurs(events, ratings)
    part = [*train, *update]
    cut = int(len(part) * VALIDATION_SHARE)
    return part[:cut], part[cut:]


def split_last_item(
    events: Sequence[Event], validation: bool = False
) -> tuple[list[Event], list[Event]]:
    """(learnt, held out) under leave-one-out: each user's last event is held out and
    everything else is learnt (in stream order); users with one event are learnt only.

    ``validation``: each user's event before last is held out instead, and the last one
    is dropped altogether (users need three events), for choosing settings without
    looking at the test items.

    >>> from core.types import Event
    >>> evs = [Event(u, i, "click", t) for t, (u, i) in enumerate(
    ...     [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4"), ("b", "5")])]
    >>> learnt, held = split_last_item(evs)
    >>> [e.item_id for e in learnt], [e.item_id for e in held]
    (['1', '2', '3'], ['4', '5'])
    >>> learnt, held = split_last_item(evs, validation=True)
    >>> [e.item_id for e in learnt], [e.item_id for e in held]
    (['1', '2'], ['3'])
    """
    at: dict[str, list[int]] = {}
    for i, ev in enumerate(events):
        at.setdefault(ev.user_id, []).append(i)
    need = 3 if validation else 2
    held: set[int] = set()
    dropped: set[int] = set()
    for positions in at.values():
        if len(positions) < need:
            if validation and len(positions) >= 2:
                dropped.add(positions[-1])
            continue
        if validation:
            held.add(positions[-2])
            dropped.add(positions[-1])
        else:
            held.add(positions[-1])
    learnt = [ev for i, ev in enumerate(events) if i not in held and i not in dropped]
    return learnt, [events[i] for i in sorted(held)]


class _LagTracker:
    """Counts each switched user's events until their list follows the new interest.

    Only switches the user stays with for at least ``LAG_HORIZON`` events (in
    the scored part of the stream) are measured — the same set for every model;
    shorter-lived ones are counted in ``censored``. A list that has not followed
    within the horizon gives an infinite lag.
    """

    def __init__(
        self,
        switches: Sequence[Switch],
        categories: dict[str, str],
        k: int,
        events: Sequence[Event],
        first_seq: int,
    ) -> None:
        self.categories = categories
        self.need = math.ceil(LAG_SHARE * k)
        self.pending = self._observable(sorted(switches, key=lambda s: s.seq), events, first_seq)
        self.censored = len(switches) - len(self.pending)
        self.next = 0
        self.open: dict[str, list] = {}  # user -> [new category, events so far]
        self.lags: list[float] = []

    @staticmethod
    def _observable(
        switches: list[Switch], events: Sequence[Event], first_seq: int
    ) -> list[Switch]:
        """The switches followed by >= LAG_HORIZON events of their user before the next."""
        seen: dict[int, int] = {}  # switch index -> user events under it
        current: dict[str, int] = {}
        nxt = 0
        for i, ev in enumerate(events):
            while nxt < len(switches) and switches[nxt].seq <= first_seq + i:
                current[switches[nxt].user_id] = nxt
                seen[nxt] = 0
                nxt += 1
            idx = current.get(ev.user_id)
            if idx is not None:
                seen[idx] += 1
        return [sw for i, sw in enumerate(switches) if seen.get(i, 0) >= LAG_HORIZON]

    def observe(self, seq: int, ev: Event, listed: Sequence[str]) -> None:
        while self.next < len(self.pending) and self.pending[self.next].seq <= seq:
            sw = self.pending[self.next]
            self.next += 1
            self.open[sw.user_id] = [sw.new, 0]
        entry = self.open.get(ev.user_id)
        if entry is None:
            return
        hit = sum(1 for item in listed if self.categories.get(item) == entry[0])
        if hit >= self.need:
            self.lags.append(float(entry[1]))
            del self.open[ev.user_id]
        elif entry[1] + 1 >= LAG_HORIZON:
            self.lags.append(math.inf)
            del self.open[ev.user_id]
        else:
            entry[1] += 1

    def close(self) -> list[float]:
        return self.lags
