"""Bad input never stops the worker and is never lost."""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry

from engine.events import encode_event
from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    read_topic,
    running_worker,
    wait_for,
)


def _bad_messages(now_ms: int) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected reason, key, value); every value or key is unique so it can be traced."""
    good = {"item_id": "i1", "event": "click", "ts": now_ms}

    def js(user: str, **over: object) -> bytes:
        return json.dumps({"user_id": user, **good, **over}).encode()

    return [
        ("empty-key", None, js("bad1")),
        ("empty-value", b"bad2", None),
        ("oversized", b"bad3", js("bad3", pad="x" * 2048)),
        ("not-utf8", b"bad4", b"\xff\xfe\xfd not text"),
        ("not-json", b"bad5", b'{"user_id": "bad5", '),
        ("not-object", b"bad6", b'["bad6"]'),
        ("missing-field", b"bad7", json.dumps({"user_id": "bad7", "event": "click"}).encode()),
        ("bad-type", b"bad8", js("bad8", item_id=["i1"])),
        ("bad-type", b"bad9", js("bad9", ts="noon")),
        ("unknown-event", b"bad10", js("bad10", event="hover")),
        ("bad-timestamp", b"bad11", js("bad11", ts=now_ms // 1000)),
        ("bad-timestamp", b"bad12", js("bad12", ts=now_ms + 30 * 24 * 3600 * 1000)),
        ("key-mismatch", b"bad13", js("someone-else")),
        ("bad-id", b"bad14", js("bad14", item_id="a\nb")),
        ("bad-id", b" ", js(" ")),
    ]


def test_bad_input_is_dead_lettered_and_processing_goes_on(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=3)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=40,
        max_payload_bytes=1024,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    now = int(time.time() * 1000)
    valid = make_events(600, n_users=60, seed=5)
    bad = _bad_messages(now)
    registry = CollectorRegistry()
    worker = Worker(settings, TinyPopularity(), registry=registry)
    with running_worker(worker), Publisher(settings) as pub:
        # Bad messages interleaved with valid ones, on every partition.
        step = len(valid) // len(bad)
        for i, ev in enumerate(valid):
            pub.send(*encode_event(ev))
            if i % step == 0 and i // step < len(bad):
                _, key, value = bad[i // step]
                pub.send(key, value)
        pub.flush()
        wait_for(lambda: worker.stats.consumed >= len(valid) + len(bad), 60, "all consumed")
        # Still running: a later valid event is applied too.
        late = make_events(1, n_users=1, seed=9)[0]
        pub.send(*encode_event(late))
        pub.flush()
        wait_for(lambda: worker.stats.applied >= len(valid) + 1, 30, "late event applied")

    stats = worker.stats
    assert stats.applied == len(valid) + 1
    assert stats.dead_lettered == len(bad)
    assert stats.consumed == stats.applied + stats.dead_lettered

    dead = read_topic(settings.kafka, topics.dead_letter)
    assert len(dead) == len(bad)
    got = sorted((dict(m.headers())["error"].decode(), m.key(), m.value()) for m in dead)
    assert got == sorted((r, k, v) for r, k, v in bad)
    details = {dict(m.headers())["error"]: dict(m.headers()).get("detail") for m in dead}
    assert details[b"missing-field"] == b"item_id"
    assert details[b"unknown-event"] == b"hover"
    got_ids = sorted(
        dict(m.headers())["detail"] for m in dead if dict(m.headers())["error"] == b"bad-id"
    )
    assert got_ids == [b"item_id: control or invisible character", b"user_id: blank"]
    # ``source`` names the very message that was dead-lettered: the same bytes are there.
    originals = {(m.partition(), m.offset()): m for m in read_topic(settings.kafka, topics.events)}
    sources = set()
    for m in dead:
        topic, partition, offset = dict(m.headers())["source"].decode().rsplit("/", 2)
        assert topic == topics.events
        original = originals[(int(partition), int(offset))]
        assert (original.key(), original.value()) == (m.key(), m.value())
        sources.add((int(partition), int(offset)))
    assert len(sources) == len(bad)

    expected = {}
    for reason, _, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(stats.dead_letters_by_reason) == expected
    for reason, n in expected.items():
        assert registry.get_sample_value("interest_dead_letters_total", {"reason": reason}) == n
    assert registry.get_sample_value("interest_messages_consumed_total") == stats.consumed
