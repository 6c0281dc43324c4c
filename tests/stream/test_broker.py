"""The embedded broker is a real Kafka: groups, partitions, transactions, topics."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.config import KafkaConfig
from stream.kafka.topics import TopicSpec, ensure_topics, topic_specs


def _consume_all(conf: dict, topic: str, expected: int, timeout: float = 30.0) -> list:
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got.append(msg)
        # A short extra poll catches anything beyond what was expected.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg)
    finally:
        consumer.close()
    return got


def _group_conf(kafka: KafkaConfig, **extra) -> dict:
    return kafka.client_config(
        **{"group.id": f"g-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest", **extra}
    )


def test_produce_consume_across_partitions_with_a_group(kafka_config, unique_topics):
    topics = unique_topics(partitions=4)
    ensure_topics(kafka_config, topic_specs(topics))
    producer = Producer(kafka_config.client_config())
    sent = {}
    for i in range(400):
        key = f"user-{i % 50}"
        producer.produce(topics.events, key=key, value=f"v{i}".encode())
        sent[f"v{i}"] = key
    assert producer.flush(30) == 0

    got = _consume_all(_group_conf(kafka_config), topics.events, len(sent))
    assert sorted(m.value().decode() for m in got) == sorted(sent)
    assert {m.partition() for m in got} == {0, 1, 2, 3}
    # Same key, same partition: per-user order is what the worker relies on.
    partition_of: dict[str, set[int]] = {}
    for m in got:
        partition_of.setdefault(m.key().decode(), set()).add(m.partition())
    assert all(len(ps) == 1 for ps in partition_of.values())


def test_committed_group_offsets_resume_where_they_stopped(kafka_config, unique_topics):
    topics = unique_topics(partitions=2)
    ensure_topics(kafka_config, topic_specs(topics))
    producer = Producer(kafka_config.client_config())
    for i in range(20):
        producer.produce(topics.events, key=str(i), value=str(i).encode())
    producer.flush(30)
    conf = _group_conf(kafka_config, **{"enable.auto.commit": False})
    first = _consume_all(conf, topics.events, 20)
    assert len(first) == 20
    next_offset: dict[int, int] = {}
    for m in first:
        next_offset[m.partition()] = max(next_offset.get(m.partition(), 0), m.offset() + 1)
    consumer = Consumer(conf)
    consumer.commit(
        offsets=[TopicPartition(topics.events, p, o) for p, o in next_offset.items()],
        asynchronous=False,
    )
    consumer.close()
    assert _consume_all(conf, topics.events, 0, timeout=3) == []


def test_transactions_are_visible_only_when_committed(kafka_config, unique_topics):
    topics = unique_topics(partitions=2)
    ensure_topics(kafka_config, topic_specs(topics))
    producer = Producer(kafka_config.client_config(**{"transactional.id": f"tx-{uuid.uuid4()}"}))
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topics.recommendations, key=f"u{i}", value=b"committed")
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topics.recommendations, key=f"u{i}", value=b"aborted")
    # Flush first so the aborted records really reach the log (abort purges queued ones).
    producer.flush(30)
    producer.abort_transaction(30)

    committed = _consume_all(
        _group_conf(kafka_config, **{"isolation.level": "read_committed"}),
        topics.recommendations,
        10,
    )
    assert [m.value() for m in committed] == [b"committed"] * 10

    uncommitted = _consume_all(
        _group_conf(kafka_config, **{"isolation.level": "read_uncommitted"}),
        topics.recommendations,
        20,
    )
    assert sorted(m.value() for m in uncommitted) == [b"aborted"] * 10 + [b"committed"] * 10


def test_topic_creation_is_idempotent_and_applies_configs(kafka_config, unique_topics):
    topics = unique_topics(partitions=3)
    specs = topic_specs(topics)
    first = ensure_topics(kafka_config, specs)
    second = ensure_topics(kafka_config, specs)
    assert first == {s.name: True for s in specs}
    assert second == {s.name: False for s in specs}

    admin = AdminClient(kafka_config.client_config())
    md = admin.list_topics(timeout=10)
    assert all(len(md.topics[s.name].partitions) == 3 for s in specs)
    res = ConfigResource(ConfigResource.Type.TOPIC, topics.recommendations)
    cfg = admin.describe_configs([res])[res].result()
    assert cfg["cleanup.policy"].value == "compact"
    # Erased users' lists are compacted away within a day (docs/operating/privacy.md: erasure).
    assert cfg["max.compaction.lag.ms"].value == str(24 * 3600 * 1000)


def test_existing_topic_with_other_partition_count_is_reported(kafka_config, unique_topics, caplog):
    """The existing topic wins: a WARNING, no error, the partition count unchanged."""
    topics = unique_topics(partitions=2)
    ensure_topics(kafka_config, [TopicSpec(topics.events, 2, 1)])
    with caplog.at_level("WARNING", logger="interest_stream.topics"):
        assert ensure_topics(kafka_config, [TopicSpec(topics.events, 5, 1)]) == {
            topics.events: False
        }
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert (
        f"topic {topics.events} exists with 2 partitions (the topics created here get 5: "
        "--partitions, INTEREST_TOPIC_PARTITIONS); using it as it is"
    ) in caplog.text
    admin = AdminClient(kafka_config.client_config())
    assert len(admin.list_topics(timeout=10).topics[topics.events].partitions) == 2


def test_existing_recommendations_topic_that_is_not_compacted_is_reported(
    kafka_config, unique_topics, caplog
):
    topics = unique_topics(partitions=1)
    ensure_topics(kafka_config, [TopicSpec(topics.recommendations, 1, 1)])  # delete policy
    with caplog.at_level("WARNING", logger="interest_stream.topics"):
        ensure_topics(kafka_config, topic_specs(topics))
    assert (
        f"topic {topics.recommendations} exists with cleanup.policy=delete, expected compact"
    ) in caplog.text


def test_unreachable_broker_is_one_clear_error():
    from core.errors import KafkaClientError

    with pytest.raises(KafkaClientError, match="cannot reach Kafka at 127.0.0.1:9"):
        ensure_topics(KafkaConfig(bootstrap_servers="127.0.0.1:9"), [], timeout=2)
