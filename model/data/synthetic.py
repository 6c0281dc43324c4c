"""A seeded, endless stream of behaviour events whose users change their minds.

Every user has a long-term taste (a few favourite categories) and a *current*
interest, one category, which migrates at random times. Events arrive in
sessions (bursts of one user's events interleaved with other sessions), most
events hit the current interest, the rest explore the long-term taste or the
whole catalogue. Carts and purchases mostly follow a click on the same item,
as in a real funnel. New items and new users keep arriving, so cold start is
exercised all the time.

The ground truth is public: :meth:`SyntheticStream.current_interest` and the
switch log :attr:`SyntheticStream.switches` let the evaluator measure how many
events a model needs to follow a switch. Everything derives from ``seed``;
iterating again replays the same stream from the start.

``n_items=N`` builds a catalogue of N items instead (the scale benchmark's
knob): about :data:`ITEMS_PER_CATEGORY` items per category (at least
``n_categories`` categories) and Zipf-like popularity inside each category —
the item of popularity rank r is picked with probability about 1 / (r ln n).
Without it the stream is the small default one, unchanged.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.types import Event

__all__ = ["SyntheticStream", "Switch", "EVENT_RATES", "ITEMS_PER_CATEGORY"]

# Relative rates of behaviours in e-commerce logs: many clicks, few purchases.
EVENT_RATES: dict[str, float] = {"click": 0.80, "favourite": 0.06, "cart": 0.10, "purchase": 0.04}
_START_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
# With ``n_items``: categories of about this many items, as in a shop's leaf categories.
ITEMS_PER_CATEGORY = 1000


@dataclass(frozen=True, slots=True)
class Switch:
    """User ``user_id`` moved from ``old`` to ``new``; ``seq`` is the index of
    the first event generated under the new interest."""

    seq: int
    user_id: str
    old: str
    new: str


@dataclass(slots=True)
class _User:
    taste: list[int]
    current: int
    recent_clicks: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    purchased: set[str] = field(default_factory=set)


class SyntheticStream:
    """Iterable of :class:`Event` (ts in ms, strictly increasing, category set).

    ``n_events=None`` makes the stream endless. ``switch_prob`` is the chance
    that a session starts with a new current interest; ``focus`` is the share
    of events on the current interest. :attr:`switches` keeps the newest
    ``switch_log`` switches. ``n_items`` sets the catalogue size (see the
    module docstring; it overrides ``items_per_category``).
    """

    def __init__(
        self,
        seed: int = 0,
        n_users: int = 400,
        n_categories: int = 12,
        items_per_category: int = 40,
        n_events: int | None = None,
        *,
        switch_prob: float = 0.35,
        focus: float = 0.85,
        session_mean: float = 12.0,
        concurrency: int = 16,
        new_item_prob: float = 0.004,
        new_user_prob: float = 0.002,
        mean_gap_ms: float = 40.0,
        switch_log: int = 200_000,
        n_items: int | None = None,
    ) -> None:
        if n_users < 1 or n_categories < 2 or items_per_category < 1:
            raise ValueError("need at least 1 user, 2 categories and 1 item per category")
        if n_items is not None:
            if n_items < 2:
                raise ValueError("need at least 2 items")
            n_categories = max(2, min(n_items, max(n_categories, n_items // ITEMS_PER_CATEGORY)))
        self.n_items = n_items
        self.seed = seed
        self.n_users = n_users
        self.n_categories = n_categories
        self.items_per_category = items_per_category
        self.n_events = n_events
        self.switch_prob = switch_prob
        self.focus = focus
        self.session_mean = session_mean
        self.concurrency = concurrency
        self.new_item_prob = new_item_prob
        self.new_user_prob = new_user_prob
        self.mean_gap_ms = mean_gap_ms
        # Bounded so an endless demo stream does not grow without limit.
        self.switch_log = switch_log
        self.switches: deque[Switch] = deque(maxlen=switch_log)
        self._users: dict[str, _User] = {}
        self._item_cat: dict[str, str] = {}

    # ground truth -----------------------------------------------------------------
    def current_interest(self, user_id: str) -> str | None:
        """Category the user is currently interested in (None: not arrived yet)."""
        user = self._users.get(user_id)
        return None if user is None else _cat(user.current)

    def item_category(self, item_id: str) -> str | None:
        """Category of an item generated so far."""
        return self._item_cat.get(item_id)

    # generation -------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        rng = random.Random(self.seed)
        self.switches = deque(maxlen=self.switch_log)
        self._users = {}
        self._item_cat = {}
        catalogue: list[list[str]] = [[] for _ in range(self.n_categories)]
        n_items = itertools.count()
        user_ids: list[str] = []

        def new_item(c: int) -> str:
            item = f"i{next(n_items)}"
            catalogue[c].append(item)
            self._item_cat[item] = _cat(c)
            return item

        def new_user() -> str:
            uid = f"u{len(user_ids)}"
            taste = rng.sample(range(self.n_categories), 3)
            self._users[uid] = _User(taste=taste, current=taste[0])
            user_ids.append(uid)
            return uid

        for c in range(self.n_categories):
            size = self.items_per_category
            if self.n_items is not None:  # spread N over the categories, the first ones +1
                size = self.n_items // self.n_categories + (c < self.n_items % self.n_categories)
            for _ in range(size):
                new_item(c)
        pick = _pick if self.n_items is None else _pick_zipf
        for _ in range(self.n_users):
            new_user()

        def start_session(seq: int) -> list:
            # Heavy-tailed activity: low user indices are the regulars.
            uid = user_ids[int(len(user_ids) * rng.random() ** 2)]
            user = self._users[uid]
            if rng.random() < self.switch_prob:
                # Mostly back to a long-term favourite, sometimes somewhere new.
                options = [c for c in user.taste if c != user.current]
                new = (
                    rng.choice(options) if rng.random() < 0.7 else rng.randrange(self.n_categories)
                )
                if new != user.current:
                    self.switches.append(Switch(seq, uid, _cat(user.current), _cat(new)))
                    user.current = new
            length = 1 + int(rng.expovariate(1.0 / self.session_mean))
            return [uid, length]

        sessions = [start_session(0) for _ in range(self.concurrency)]
        kinds = list(EVENT_RATES)
        weights = list(EVENT_RATES.values())
        ts = float(_START_TS_MS)
        seq_iter = range(self.n_events) if self.n_events is not None else itertools.count()
        for seq in seq_iter:
            if rng.random() < self.new_item_prob:
                new_item(rng.randrange(self.n_categories))
            if rng.random() < self.new_user_prob:
                uid = new_user()
                sessions[rng.randrange(len(sessions))] = [
                    uid,
                    1 + int(rng.expovariate(1.0 / self.session_mean)),
                ]
            slot = rng.randrange(len(sessions))
            uid, left = sessions[slot]
            user = self._users[uid]
            kind = rng.choices(kinds, weights)[0]
            item = None
            if kind != "click" and user.recent_clicks and rng.random() < 0.8:
                item = rng.choice(user.recent_clicks)
                if kind == "purchase" and item in user.purchased:
                    item = None
            if item is None:
                r = rng.random()
                if r < self.focus:
                    c = user.current
                elif r < self.focus + (1 - self.focus) / 2:
                    c = rng.choice(user.taste)
                else:
                    c = rng.randrange(self.n_categories)
                item = pick(rng, catalogue[c])
                if kind == "purchase" and item in user.purchased:
                    kind = "click"
            if kind == "click":
                user.recent_clicks.append(item)
            elif kind == "purchase":
                user.purchased.add(item)
            ts += 1.0 + rng.expovariate(1.0 / self.mean_gap_ms)
            yield Event(uid, item, kind, int(ts), self._item_cat[item])
            if left <= 1:
                sessions[slot] = start_session(seq + 1)
            else:
                sessions[slot][1] = left - 1


def _cat(c: int) -> str:
    return f"c{c}"


def _pick(rng: random.Random, items: list[str]) -> str:
    """Zipf-like choice inside a category, with the newest items trending."""
    if len(items) > 5 and rng.random() < 0.15:
        return items[-1 - int(rng.random() * 5)]
    return items[int(len(items) * rng.random() ** 2.5)]


def _pick_zipf(rng: random.Random, items: list[str]) -> str:
    """Zipf(1) choice inside a category (rank r with probability ~ 1 / (r ln n)),
    with the newest items trending as in :func:`_pick`."""
    if len(items) > 5 and rng.random() < 0.15:
        return items[-1 - int(rng.random() * 5)]
    # floor(n ** u) for uniform u is log-uniform on [1, n]: the continuous Zipf(1).
    return items[min(int(math.exp(rng.random() * math.log(len(items)))), len(items)) - 1]
