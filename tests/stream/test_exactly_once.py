"""Exactly-once under faults, on the real broker: kill -9, lost disks, rebalances, restores.

Each run checks the three promises as a subscriber and an operator see them:
no list committed twice for the same event, every user's state (read from the
changelog with ``state dump``) counts exactly the events published, and every
user's latest list covers their last event.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from bench.chaos import ChaosConfig, WorkerPool, chaos_events, chaos_settings, run_chaos, verify
from engine.metrics import WorkerMetrics
from state.store import MemoryStore
from stream.cli.publish import Publisher
from stream.config import Settings
from stream.kafka.topics import ensure_changelog, ensure_topics, topic_specs
from stream.runtime.native import Worker
from stream.runtime.restore import Restorer
from tests.stream.helpers import TinyPopularity, make_events, running_worker, wait_for


def _assert_exact(report: dict) -> None:
    assert report["events_published"] > 0
    assert report["workers_that_crashed"] == []
    assert report["duplicate_lists"] == 0
    assert report["users_wrong_counts"] == 0 and report["users_missing_state"] == 0
    assert report["stale_lists"] == 0


@pytest.mark.parametrize(
    "workers,kills,wipes", [(1, 3, 1), (3, 5, 2)], ids=["one-worker", "three-workers"]
)
def test_kill_minus_9_loses_and_doubles_nothing(kafka_bootstrap, tmp_path, workers, kills, wipes):
    cfg = ChaosConfig(
        workers=workers,
        events=5000,
        kills=kills,
        wipes=wipes,
        users=300,
        rate=500.0,
        partitions=4,
        drain_timeout=120.0,
    )
    report = run_chaos(cfg, kafka_bootstrap, tmp_path)
    _assert_exact(report)
    assert report["kills"] == kills and report["state_dirs_wiped"] == wipes
    assert report["events_published"] == 5000


def test_scaling_one_to_three_to_one_under_load(kafka_bootstrap, tmp_path):
    cfg = ChaosConfig(workers=1, events=6000, users=300, rate=400.0, partitions=6)
    settings = chaos_settings(kafka_bootstrap, cfg)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    events = chaos_events(cfg)
    pool = WorkerPool(settings, tmp_path, cfg.model)
    try:
        pool.start(0)
        sender = threading.Thread(target=_publish, args=(settings, events, cfg.rate), daemon=True)
        sender.start()
        time.sleep(4)
        pool.start(1)
        pool.start(2)
        time.sleep(5)
        pool.stop(1)  # clean stops: their partitions go back to worker 0
        pool.stop(2)
        sender.join(120)
        wait_for(lambda: _lag(settings) == 0, 120, "the group to catch up")
        crashed = pool.crashed()
    finally:
        pool.close()
    assert crashed == []
    report = verify(settings, events)
    assert report["duplicate_lists"] == 0 and report["stale_lists"] == 0
    assert report["users_wrong_counts"] == 0 and report["users_missing_state"] == 0
    assert report["users"] == len({ev.user_id for ev in events})


def _publish(settings: Settings, events: list, rate: float) -> None:
    with Publisher(settings) as pub:
        pub.publish(events, rate=rate)


def _lag(settings: Settings) -> int | None:
    from bench.chaos import group_lag

    return group_lag(settings)


def _changelog_settings(kafka_bootstrap: str, tmp_path: Path) -> tuple[Settings, list]:
    """One partition, 3,000 events applied by a worker: a changelog with a few thousand records."""
    cfg = ChaosConfig(partitions=1)
    settings = chaos_settings(kafka_bootstrap, cfg)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    events = make_events(3000, n_users=400, seed=71)
    with Publisher(settings) as pub:
        pub.publish(events)
    worker = Worker(settings, TinyPopularity(), store=MemoryStore())
    with running_worker(worker):
        wait_for(lambda: worker.stats.applied >= len(events), 90, "events applied")
    return settings, events


def test_a_restore_cut_by_a_rebalance_goes_on_where_it_stopped(kafka_bootstrap, tmp_path):
    settings, events = _changelog_settings(kafka_bootstrap, tmp_path)
    full = MemoryStore().open_partition(settings.topics.events, 0)
    restorer = Restorer(settings, WorkerMetrics.create())
    task = restorer.begin(full)
    while restorer.active:
        restorer.step()
    assert task.restored > 400 and full.user_count() == 400

    # The same restore, revoked after its first chunk: what it restored is kept, and the
    # next assignment reads on from there, never from the start.
    store = MemoryStore()
    part = store.open_partition(settings.topics.events, 0)
    cut = Restorer(settings, WorkerMetrics.create())
    first = cut.begin(part)
    while part.changelog_offset() is None:
        cut.step()
    cut.cancel(0)  # the rebalance took the partition
    assert not cut.active and part.changelog_offset() < first.target - 1
    again = cut.begin(part)
    assert again.start == part.changelog_offset() + 1
    while cut.active:
        cut.step()
    assert again.restored < task.restored
    assert dict(part.items()) == dict(full.items())
    assert part.last_offset() == full.last_offset() == len(events) - 1
    for r in (restorer, cut):
        r.close()


def test_a_worker_with_no_state_serves_the_state_from_the_changelog(kafka_bootstrap, tmp_path):
    settings, events = _changelog_settings(kafka_bootstrap, tmp_path)
    later = make_events(200, n_users=400, seed=72, start_ms=events[-1].ts + 1)
    with Publisher(settings) as pub:
        pub.publish(later)
    fresh = Worker(settings, TinyPopularity(), store=MemoryStore())
    with running_worker(fresh):
        wait_for(lambda: fresh.stats.applied >= len(later), 90, "later events applied")
    assert fresh.stats.consumed == len(later)  # nothing replayed
    report = verify(settings, events + later)
    assert report["users_wrong_counts"] == 0 and report["duplicate_lists"] == 0


def test_a_recreated_changelog_is_written_again_from_local_state(kafka_bootstrap, tmp_path, caplog):
    settings = chaos_settings(kafka_bootstrap, ChaosConfig(partitions=2))
    settings = replace(settings, worker=replace(settings.worker, state_dir=tmp_path / "home"))
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    events = make_events(1000, n_users=100, seed=73)
    with Publisher(settings) as pub:
        pub.publish(events)
    home = Worker(settings, TinyPopularity())
    with running_worker(home):
        wait_for(lambda: home.stats.applied >= len(events), 90, "events applied")
    admin = AdminClient(settings.kafka.client_config())
    admin.delete_topics([settings.changelog_topic])[settings.changelog_topic].result(30)
    wait_for(
        lambda: settings.changelog_topic not in admin.list_topics(timeout=10).topics,
        30,
        "changelog deleted",
    )
    ensure_changelog(settings.kafka, settings.changelog_topic, settings.topics.events, 1)
    # The same worker again: its local state is ahead of the empty changelog.
    again = Worker(settings, TinyPopularity())
    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        with running_worker(again):
            wait_for(lambda: "wrote" in caplog.text and not again.restoring, 60, "reseeded")
            time.sleep(1)
    assert "it was recreated or truncated; keeping the local states" in caplog.text
    # So a worker with nothing local finds every user there.
    report = verify(settings, events)
    assert report["users_wrong_counts"] == 0 and report["users_missing_state"] == 0
