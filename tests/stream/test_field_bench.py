"""The field benchmark measures what a subscriber meets: a worker process, read_committed lists."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

from bench.field import bench_settings, field_stream, measure_backlog, measure_latency


def test_field_stream_is_repeatable_and_skewed() -> None:
    a = list(itertools.islice(field_stream(1000, 5000, seed=4, start_ms=0), 20_000))
    b = list(itertools.islice(field_stream(1000, 5000, seed=4, start_ms=0), 20_000))
    assert a == b
    assert [ev.ts for ev in a] == list(range(20_000))
    items = Counter(ev.item_id for ev in a)
    users = {ev.user_id for ev in a}
    assert len(users) > 990  # uniform users: nearly all of 1,000 appear
    # Zipf(1.3): the most popular item alone takes several percent of the events,
    # while thousands of items appear at all.
    assert items.most_common(1)[0][1] > 0.05 * len(a)
    assert len(items) > 1000


def test_backlog_and_latency_are_measured_through_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = list(itertools.islice(field_stream(2000, 2000, seed=1), 3000))
    backlog = measure_backlog(
        bench_settings(kafka_bootstrap, "fb", 2), tmp_path / "b", "popular", events, timeout=120
    )
    assert backlog["completed"]
    assert backlog["users"] == len({ev.user_id for ev in events})
    assert backlog["events_per_s"] > 0

    lat = measure_latency(
        bench_settings(kafka_bootstrap, "fl", 2),
        tmp_path / "l",
        "popular",
        field_stream(2000, 2000, seed=3),
        rate=400,
        seconds=2,
        timeout=120,
    )
    assert lat["completed"]
    assert lat["events"] == 800  # every event sent in the measured part got its list
    assert 0 < lat["p50_ms"] <= lat["p99_ms"]
