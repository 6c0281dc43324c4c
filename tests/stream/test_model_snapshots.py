"""The worker's model survives a restart: snapshots under the state dir."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from model.factory import create_model
from state.store import RocksDBStore
from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker, state_root
from stream.runtime.snapshots import ModelSnapshots, SnapshotPolicy
from tests.stream.helpers import make_events, make_settings, running_worker, wait_for


def _lists(model, settings, users):  # noqa: ANN001, ANN202
    store = RocksDBStore(state_root(settings))
    try:
        states = {
            u: st
            for t, p in store.on_disk()
            for u, st in store.open_partition(t, p).items()
            if u in users
        }
    finally:
        store.close()
    return {u: [item for item, _ in model.rank(u, states[u], 10)] for u in sorted(users)}


def test_a_restarted_worker_continues_with_the_learnt_model(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=100,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(1200, n_users=40, n_items=150, seed=91)
    with Publisher(settings) as pub:
        pub.publish(events)
    first = Worker(
        settings, create_model("interest"), snapshots=SnapshotPolicy(every_s=0, every_batches=3)
    )
    with running_worker(first):
        wait_for(lambda: first.stats.applied >= len(events), 90, "all events applied")
        wait_for(lambda: first.snapshots.saved >= 1, 30, "a periodic snapshot")
    path = state_root(settings) / "model" / "snapshot.safetensors"
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
    learnt = first.model
    users = {ev.user_id for ev in events[-50:]}
    before = _lists(learnt, settings, users)

    second = Worker(settings, create_model("interest"))  # a fresh model, as after a restart
    with running_worker(second):
        wait_for(second.assigned.is_set, 60, "assignment")
    assert second.stats.consumed == 0
    restored = second.model
    assert restored is not learnt
    assert restored.vocab.ids == learnt.vocab.ids
    assert np.array_equal(
        restored.pop_l.values(len(learnt.vocab)), learnt.pop_l.values(len(learnt.vocab))
    )
    # Item embeddings are stored as float16: equal within its rounding, the rest exact.
    assert torch.allclose(restored.emb_in, learnt.emb_in, rtol=2**-11, atol=2**-24)
    assert not torch.equal(restored.emb_in, learnt.emb_in)
    assert torch.equal(restored.tables["emb_in"].exp_avg_sq, learnt.tables["emb_in"].exp_avg_sq)
    after = _lists(restored, settings, users)
    same = sum(len(set(after[u]) & set(before[u])) for u in users)
    assert same >= 0.95 * sum(len(before[u]) for u in users)


def test_an_unreadable_snapshot_is_moved_aside_and_the_worker_starts_fresh(tmp_path, caplog):
    snaps = ModelSnapshots(tmp_path / "model", SnapshotPolicy())
    snaps.path.parent.mkdir(parents=True)
    snaps.path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    fresh = create_model("interest")
    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        assert snaps.restore(fresh) is fresh
    assert Counter(r.levelname for r in caplog.records) == Counter({"WARNING": 1})
    assert "is unreadable" in caplog.text and "starting with a fresh model" in caplog.text
    assert not snaps.path.exists() and snaps.path.with_name("snapshot.safetensors.bad").exists()


def test_snapshot_policy_from_settings(tmp_path):
    from stream.config import load_settings

    assert SnapshotPolicy.from_config(load_settings({}, env={}).worker) == SnapshotPolicy(60.0, 0)
    env = {"INTEREST_SNAPSHOT_EVERY_S": "5", "INTEREST_SNAPSHOT_EVERY_BATCHES": "100"}
    assert SnapshotPolicy.from_config(load_settings({}, env=env).worker) == SnapshotPolicy(5.0, 100)
    toml = tmp_path / "c.toml"
    toml.write_text("[worker]\nsnapshot_every_s = 0\nsnapshot_every_batches = 7\n")
    from_file = load_settings({}, env={}, config_file=toml).worker
    assert SnapshotPolicy.from_config(from_file) == SnapshotPolicy(0.0, 7)
    with pytest.raises(ConfigError, match="INTEREST_SNAPSHOT_EVERY_BATCHES"):
        load_settings({}, env={"INTEREST_SNAPSHOT_EVERY_BATCHES": "often"})
    with pytest.raises(ConfigError, match="snapshot_every_s must be an integer >= 0"):
        load_settings({}, env={"INTEREST_SNAPSHOT_EVERY_S": "-1"})


def test_a_snapshot_that_cannot_be_written_is_a_warning(tmp_path, caplog, monkeypatch):
    import errno
    import os

    import stream.runtime.snapshots as snapshots

    def full(path, data):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(snapshots, "write_atomic", full)
    snaps = ModelSnapshots(tmp_path / "model", SnapshotPolicy(every_s=0, every_batches=1))
    model = create_model("interest")
    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        snaps.after_batch(model, committed=True)  # written on a background thread
        snaps.close(model, clean=True)  # and once more on a clean stop, on this one
    assert snaps.saved == 0 and snaps.saved_at is None and not snaps.path.exists()
    assert Counter(r.levelname for r in caplog.records) == Counter({"WARNING": 2})
    assert "could not be written" in caplog.text and "No space left on device" in caplog.text
