"""Erasing a user for real, through the broker, and pseudonymised ids end to end.

An erased user's state is gone from ``state show``, a tombstone removes their
list from the compacted recommendations topic and their state from the
changelog, and they stay gone after a restart and after a new worker restores
the partition from the changelog. With a user-id key no raw id reaches the
state dir, the changelog or the logs, while subscribers still see the ids the
producers used.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from core.errors import ConfigError
from core.types import Event
from engine.events import decode_recommendation, encode_erasure, encode_event
from engine.privacy import UserIds
from model.factory import create_model
from state.store import MemoryStore, RocksDBStore
from stream.cli.forget import request_erasure
from stream.cli.publish import Publisher
from stream.cli.tail import tail
from stream.config import PrivacyConfig, Settings
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker, state_root
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    read_topic,
    running_worker,
    wait_for,
)

KEY = "a-test-key-of-32-bytes-exactly!!"


def _cli(args: list[str], settings: Settings, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    topics = settings.topics
    clean |= {
        "INTEREST_TOPIC_EVENTS": topics.events,
        "INTEREST_TOPIC_RECOMMENDATIONS": topics.recommendations,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args]
        + ["--bootstrap-servers", str(settings.kafka.bootstrap_servers)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
    )


def _newest(kafka, topic: str) -> dict[bytes, bytes | None]:
    """The newest value of every key on ``topic`` (None: a tombstone)."""
    return {m.key(): m.value() for m in read_topic(kafka, topic)}


def _tail_text(settings: Settings, user: str) -> str:
    out, stop = io.StringIO(), threading.Event()
    th = threading.Thread(target=tail, args=(settings, user, out, stop), daemon=True)
    th.start()
    try:
        wait_for(lambda: "waiting" in out.getvalue(), 30, "the tail's first line")
    finally:
        stop.set()
        th.join(30)
    return out.getvalue()


def test_an_erased_user_is_gone_everywhere_and_stays_gone(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=2)
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "state", batch_max_events=50)
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(600, n_users=20, seed=41)
    with Publisher(settings) as pub:
        pub.publish(events)
    registry = CollectorRegistry()
    worker = Worker(settings, TinyPopularity(), registry=registry)
    with running_worker(worker):
        wait_for(lambda: worker.stats.applied >= len(events), 90, "events applied")
        # The command returns once the tombstone is out.
        forgot = _cli(["forget", "--user", "u3", "--wait", "60"], settings)
        assert forgot.returncode == 0 and "user u3 erased" in forgot.stderr, forgot.stderr
        assert request_erasure(settings, "ghost", wait_s=60)  # unknown: not an error
        now = events[-1].ts + 1
        with Publisher(settings) as pub:  # an event, the erasure, a new event: back to back
            pub.send(*encode_event(Event("u4", "before", "click", now)))
            pub.send(*encode_erasure("u4"))
            pub.send(*encode_event(Event("u4", "after", "click", now + 1)))
            pub.flush()
        wait_for(lambda: worker.stats.consumed >= len(events) + 5, 60, "u4's messages")
    stats = worker.stats
    assert stats.erasures == 3 and stats.dead_lettered == 0
    assert stats.consumed == (
        stats.applied + stats.dead_lettered + stats.forwarded + stats.erasures + stats.events_erased
    )
    erased = registry.get_sample_value("interest_users_erased_total", {"had_state": "true"})
    unknown = registry.get_sample_value("interest_users_erased_total", {"had_state": "false"})
    assert (erased, unknown) == (2, 1)

    group = settings.worker.group
    shown = _cli(["state", "show", "--user", "u3", "--group", group], settings)
    assert shown.returncode == 1 and "has no state" in shown.stderr and not shown.stdout
    u4 = json.loads(_cli(["state", "show", "--user", "u4", "--group", group], settings).stdout)
    assert u4["recent_items"] == ["after"] and sum(u4["counts"].values()) == 1
    dumped = _cli(["state", "dump", "--group", group], settings)
    users = {json.loads(line)["user_id"] for line in dumped.stdout.splitlines()}
    assert users == {ev.user_id for ev in events} - {"u3"}

    lists = _newest(settings.kafka, topics.recommendations)
    assert lists[b"u3"] is None and lists[b"ghost"] is None  # tombstones, newest per key
    assert decode_recommendation(lists[b"u4"])["user_id"] == "u4"  # the list after erasure
    changelog = _newest(settings.kafka, settings.changelog_topic)
    assert changelog[b"uu3"] is None and changelog[b"ughost"] is None
    assert "(no list for user u3 (it was removed: user erased)" in _tail_text(settings, "u3")

    # Gone after a restart: not in the local stores the worker reopens...
    again = Worker(settings, TinyPopularity())
    with running_worker(again):
        wait_for(again.assigned.is_set, 60, "assignment")
        wait_for(lambda: not again.restoring, 60, "restore")
    assert again.stats.consumed == 0
    store = RocksDBStore(state_root(settings))
    try:
        local = {u for t, p in store.on_disk() for u, _ in store.open_partition(t, p).items()}
    finally:
        store.close()
    assert local == users
    # ...and after a worker with nothing local restores every partition from the changelog.
    memory = MemoryStore()
    fresh = Worker(settings, TinyPopularity(), store=memory)
    with running_worker(fresh):
        wait_for(fresh.assigned.is_set, 60, "assignment")
        wait_for(lambda: not fresh.restoring, 60, "restore")
    restored = {
        u: st for p in range(2) for u, st in memory.open_partition(topics.events, p).items()
    }
    assert set(restored) == users
    assert restored["u4"].recent_items == ["after"]
    # No worker running: the request waits on the topic, unconfirmed (exit 1).
    late = _cli(["forget", "--user", "u5", "--wait", "1"], settings)
    assert late.returncode == 1 and "not confirmed within 1s" in late.stderr


def _rocksdb_records(root) -> bytes:  # noqa: ANN001
    """Every key and value of every RocksDB database under ``root``, read back by RocksDB."""
    from rocksdict import AccessType, Options, Rdict

    out = []
    for current in root.rglob("CURRENT"):
        db = Rdict(str(current.parent), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            out.extend(k + v for k, v in db.items())
        finally:
            db.close()
    return b"".join(out)


def test_pseudonymised_ids_never_reach_state_changelog_or_logs(
    kafka_bootstrap, unique_topics, tmp_path, caplog
):
    topics = unique_topics(partitions=2)
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "state", batch_max_events=50)
    settings = replace(settings, privacy=PrivacyConfig(id_key=KEY.encode()))
    ensure_topics(settings.kafka, topic_specs(topics))
    tag = uuid.uuid4().hex[:6]
    events = [
        replace(ev, user_id=f"person-{tag}-{ev.user_id}")
        for ev in make_events(400, n_users=12, seed=42)
    ]
    raw_ids = sorted({ev.user_id for ev in events})
    gone, kept = raw_ids[0], raw_ids[1]
    with Publisher(settings) as pub:
        pub.publish(events)
    worker = Worker(settings, create_model("popular"))  # it saves a snapshot to grep too
    with caplog.at_level("INFO"), running_worker(worker):
        wait_for(lambda: worker.stats.applied >= len(events), 90, "events applied")
        assert request_erasure(settings, gone, wait_s=60)
    assert "erased 1 user(s)" in caplog.text
    assert worker.describe()["user_ids"] == "pseudonymised"

    # Nothing the worker stored or logged holds a raw id: RocksDB's files (and its
    # own logs), the model snapshot, the changelog, the log records.
    files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".safetensors") for p in files)
    # RocksDB compresses what it flushes: read every record back through it as well.
    records = _rocksdb_records(tmp_path / "state")
    local = b"".join(p.read_bytes() for p in files) + records
    blob = local
    changelog = read_topic(settings.kafka, settings.changelog_topic)
    blob += b"".join((m.key() or b"") + (m.value() or b"") for m in changelog)
    text = caplog.text
    for user in raw_ids:
        assert user.encode() not in blob, user
        assert user not in text, user
    ids = UserIds(KEY.encode())
    assert b"u" + ids.of(kept).encode() in {m.key() for m in changelog}
    assert ids.of(kept).encode() in records  # the grep sees the ids the state dir does hold

    # Subscribers see the producers' ids; the erased user's list is a tombstone.
    lists = _newest(settings.kafka, topics.recommendations)
    assert lists[gone.encode()] is None
    doc = decode_recommendation(lists[kept.encode()])
    assert doc["user_id"] == kept

    # state show hashes the way the workers do; without the key it says what is missing.
    group = settings.worker.group
    args = ["state", "show", "--user", kept, "--group", group]
    shown = _cli(args, settings, INTEREST_ID_KEY=KEY)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["user_id"] == kept
    expected = sum(1 for ev in events if ev.user_id == kept)
    assert sum(json.loads(shown.stdout)["counts"].values()) == expected
    show_gone = ["state", "show", "--user", gone, "--group", group]
    erased = _cli(show_gone, settings, INTEREST_ID_KEY=KEY)
    assert erased.returncode == 1 and "has no state" in erased.stderr
    keyless = _cli(args, settings)
    assert keyless.returncode == 2 and "needs the workers' user-id key" in keyless.stderr
    assert KEY not in keyless.stderr + shown.stderr + shown.stdout
    dumped = _cli(["state", "dump", "--group", group], settings, INTEREST_ID_KEY=KEY)
    pseudonyms = {json.loads(line)["user_id"] for line in dumped.stdout.splitlines()}
    assert pseudonyms == {ids.of(u) for u in raw_ids} - {ids.of(gone)}

    # A worker with another key on the same state stops with one clear error.
    other = replace(settings, privacy=PrivacyConfig(id_key=b"another-key-of-enough-bytes!"))
    with Publisher(settings) as pub:
        pub.publish(events[-2:])
    stray = Worker(other, create_model("popular"))
    with pytest.raises(ConfigError, match="changing the user-id key needs a new consumer group"):
        with running_worker(stray):
            wait_for(lambda: stray.stats.finished_at is not None, 60, "the worker to stop")
