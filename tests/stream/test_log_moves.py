"""The events log moves under a worker's store: a recreated topic, expired messages."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    running_worker,
    wait_for,
)


def _run_until_applied(settings, n: int) -> Worker:
    worker = Worker(settings, TinyPopularity())
    with running_worker(worker):
        wait_for(lambda: worker.stats.applied >= n, 60, f"{n} events applied")
        time.sleep(0.5)  # nothing more arrives
    return worker


def _recreate(admin: AdminClient, settings, topic: str) -> None:
    admin.delete_topics([topic], operation_timeout=30)[topic].result()
    deadline = time.monotonic() + 60
    while True:  # the broker needs a moment before the name can be used again
        try:
            created = ensure_topics(
                settings.kafka, [s for s in topic_specs(settings.topics) if s.name == topic]
            )
        except Exception:
            created = {}
        if created.get(topic):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not recreate {topic}")
        time.sleep(0.5)


def test_a_recreated_events_topic_is_applied_not_skipped(
    kafka_bootstrap, unique_topics, tmp_path, caplog
):
    topics = unique_topics(partitions=1)
    settings = make_settings(
        kafka_bootstrap, topics, tmp_path / "state", f"g-{uuid.uuid4().hex[:8]}"
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    with Publisher(settings) as pub:
        pub.publish(make_events(60, 10, seed=81))
    _run_until_applied(settings, 60)

    _recreate(AdminClient(settings.kafka.client_config()), settings, topics.events)
    with Publisher(settings) as pub:
        pub.publish(make_events(20, 10, seed=82))  # offsets 0-19: below the stored 59
    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        again = _run_until_applied(settings, 20)
    assert again.stats.consumed == again.stats.applied == 20
    assert "the topic was recreated or truncated" in caplog.text


def test_messages_removed_by_retention_are_reported(
    kafka_bootstrap, unique_topics, tmp_path, caplog
):
    topics = unique_topics(partitions=1)
    settings = make_settings(
        kafka_bootstrap, topics, tmp_path / "state", f"g-{uuid.uuid4().hex[:8]}"
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    with Publisher(settings) as pub:
        pub.publish(make_events(20, 10, seed=83))
    _run_until_applied(settings, 20)
    with Publisher(settings) as pub:
        pub.publish(make_events(20, 10, seed=84))  # offsets 20-39
    admin = AdminClient(settings.kafka.client_config())
    tp = TopicPartition(topics.events, 0, 30)
    for future in admin.delete_records([tp]).values():  # what retention does: log start 30
        try:
            future.result()
        except KafkaException as exc:
            pytest.fail(f"delete_records: {exc}")
    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        again = _run_until_applied(settings, 10)
    assert again.stats.consumed == again.stats.applied == 10
    assert "10 message(s) (offsets 20 to 29) were removed by retention" in caplog.text
