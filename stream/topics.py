"""Idempotent creation of the service's topics."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import KafkaConfig, TopicsConfig
from stream.errors import KafkaClientError

__all__ = ["TopicSpec", "topic_specs", "ensure_topics"]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(topics: TopicsConfig) -> list[TopicSpec]:
    """The three topics: events in, compacted lists out, dead letters aside."""
    n, rf = topics.partitions, topics.replication_factor
    return [
        TopicSpec(topics.events, n, rf),
        TopicSpec(
            topics.recommendations,
            n,
            rf,
            {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "0",
                "segment.ms": str(60 * 60 * 1000),
            },
        ),
        TopicSpec(topics.dead_letter, n, rf, {"retention.ms": str(14 * 24 * 3600 * 1000)}),
    ]


def ensure_topics(
    kafka: KafkaConfig, specs: list[TopicSpec], timeout: float = 15.0
) -> dict[str, bool]:
    """Create the topics that do not exist yet; return ``{name: created}``.

    Existing topics are left as they are (a partition count that differs is
    reported, never changed: repartitioning would move users between stores).
    """
    admin = AdminClient(kafka.client_config())
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        err = exc.args[0]
        raise KafkaClientError(
            f"cannot reach Kafka at {kafka.bootstrap_servers}", err.name()
        ) from None
    result: dict[str, bool] = {}
    missing = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                raise KafkaClientError(
                    f"topic {spec.name} exists with {have} partitions, config asks for "
                    f"{spec.partitions}; use the existing count or a new topic name"
                )
            result[spec.name] = False
        else:
            missing.append(
                NewTopic(
                    spec.name, spec.partitions, spec.replication_factor, config=dict(spec.config)
                )
            )
    if not missing:
        return result
    for name, future in admin.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result()
            result[name] = True
        except KafkaException as exc:
            err = exc.args[0]
            if err.name() == "TOPIC_ALREADY_EXISTS":
                result[name] = False
            else:
                raise KafkaClientError(
                    f"creating topic {name} failed: {err.str()}", err.name()
                ) from None
    return result
