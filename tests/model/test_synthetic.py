"""The synthetic drift stream: deterministic, well-formed, and its ground truth is right."""

from __future__ import annotations

import itertools
from collections import Counter

from core.types import EVENT_TYPES
from model.data.synthetic import EVENT_RATES, SyntheticStream


def test_same_seed_same_stream_and_other_seed_differs() -> None:
    a = list(SyntheticStream(seed=3, n_events=2000))
    assert a == list(SyntheticStream(seed=3, n_events=2000))
    assert a != list(SyntheticStream(seed=4, n_events=2000))


def test_events_are_well_formed_and_time_increases() -> None:
    events = list(SyntheticStream(seed=1, n_events=5000))
    assert len(events) == 5000
    assert all(b.ts > a.ts for a, b in itertools.pairwise(events))
    assert all(e.event in EVENT_TYPES and e.category for e in events)
    share = Counter(e.event for e in events)
    assert share["click"] > share["cart"] > share["purchase"]
    assert abs(share["click"] / len(events) - EVENT_RATES["click"]) < 0.05


def test_new_items_and_users_keep_arriving() -> None:
    stream = SyntheticStream(
        seed=2,
        n_users=50,
        items_per_category=10,
        n_events=20000,
        new_item_prob=0.01,
        new_user_prob=0.01,
    )
    events = list(stream)
    first_items = {e.item_id for e in events[:2000]}
    late_items = {e.item_id for e in events[-2000:]}
    assert late_items - first_items
    users = {int(e.user_id[1:]) for e in events}
    assert max(users) >= 50  # users beyond the initial population showed up


def test_switch_log_matches_current_interest_and_events_follow_it() -> None:
    stream = SyntheticStream(seed=5, n_events=20000)
    events = list(stream)
    assert stream.switches
    last = {}
    for sw in stream.switches:
        assert sw.old != sw.new
        last[sw.user_id] = sw.new
    for user, cat in last.items():
        assert stream.current_interest(user) == cat
    # Most of a user's events after their last switch are in the new interest.
    after = [e for e in events[stream.switches[-1].seq :] if e.user_id in last]
    on_topic = sum(e.category == last[e.user_id] for e in after)
    assert on_topic > 0.6 * len(after)


def test_endless_stream_is_a_lazy_generator() -> None:
    head = list(itertools.islice(iter(SyntheticStream(seed=0)), 100_000))
    assert len(head) == 100_000


def test_a_catalogue_of_any_size_with_zipf_like_popularity() -> None:
    stream = SyntheticStream(seed=1, n_users=2000, n_items=50_000, n_events=20_000)
    events = list(stream)
    assert stream.n_categories == 50  # about 1,000 items per category
    assert stream.item_category("i0") == "c0" and stream.item_category("i49999") == "c49"
    counts = Counter(e.item_id for e in events)
    top = sorted(counts.values(), reverse=True)
    assert len(counts) > 5_000  # the long tail is visited
    # A Zipf-like head: the top 1% of items seen take far more than 1% of the events.
    assert sum(top[: len(top) // 100]) > 0.1 * len(events)
    # Still a drift stream: events follow the users' interests.
    assert all(e.category for e in events)
    assert list(SyntheticStream(seed=1, n_users=2000, n_items=50_000, n_events=500)) == events[:500]


def test_the_default_stream_ignores_the_catalogue_code_path() -> None:
    a = list(SyntheticStream(seed=7, n_events=3000))
    b = list(SyntheticStream(seed=7, n_events=3000, n_items=None))
    assert a == b
    assert len({e.item_id for e in a}) < 600
