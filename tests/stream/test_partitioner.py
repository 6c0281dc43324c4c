"""Our murmur2 places keys exactly where the Kafka clients' murmur2 partitioner does."""

from __future__ import annotations

from confluent_kafka import Producer

from core.partition import partition_for
from stream.kafka.topics import TopicSpec, ensure_topics
from tests.stream.helpers import read_topic


def test_python_murmur2_agrees_with_librdkafka_murmur2_random(kafka_config, unique_topics):
    topic = unique_topics().events
    ensure_topics(kafka_config, [TopicSpec(topic, 7, 1)])
    producer = Producer(kafka_config.client_config(partitioner="murmur2_random"))
    keys = [f"user-{i}".encode() for i in range(300)] + ["ünïcødé-7".encode(), b"u7", b"x"]
    for key in keys:
        producer.produce(topic, b"{}", key)
    producer.flush(30)
    placed = {m.key(): m.partition() for m in read_topic(kafka_config, topic)}
    assert placed == {key: partition_for(key, 7) for key in keys}
    assert len(set(placed.values())) == 7
