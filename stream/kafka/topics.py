"""Idempotent creation of the service's topics.

Existing topics always win: they are used as they are, and a partition count
or cleanup policy that differs from the configuration is a WARNING (logger
``interest_stream.topics``), never an error and never changed.

New topics are replicated as the cluster allows unless the replication factor
is set (``INTEREST_TOPIC_REPLICATION``): 3 copies when the cluster has 3 or
more brokers, with ``min.insync.replicas=2`` so that a write acknowledged by
``acks=all`` (every producer here) survives the loss of any one broker and a
partition keeps taking writes while one broker is down; 1 copy otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from core.errors import ConfigError, KafkaClientError
from stream.config import KafkaConfig, TopicsConfig
from stream.kafka.clients import list_topics, make_client

__all__ = [
    "TopicSpec",
    "topic_specs",
    "ensure_topics",
    "ensure_changelog",
    "ensure_model_topics",
    "partition_count",
    "replication_for",
    "updates_retention_ms",
    "COMPACTED",
]

# Model updates stay at least this long, and at least a dozen snapshot intervals: a
# worker that starts from the newest snapshot replays what came after it.
_MIN_UPDATES_RETENTION_MS = 3600 * 1000

log = logging.getLogger("interest_stream.topics")

# Compacted topics (lists, state changelogs) roll a segment every hour and are
# compacted within a day even when little is overwritten: an erased user's
# records (and any overwritten list or state) are gone from the log after at
# most about a day, plus delete.retention.ms (Kafka's default: a day) for the
# tombstone itself, which readers need to see the deletion.
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": str(60 * 60 * 1000),
    "max.compaction.lag.ms": str(24 * 60 * 60 * 1000),
}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def replication_for(wanted: int, brokers: int) -> tuple[int, dict[str, str]]:
    """The replication factor of a new topic and the topic settings that go with it.

    ``wanted`` 0 means chosen here from ``brokers``, the brokers in the cluster's
    metadata: 3 from 3 brokers on, else 1. Three copies come with
    ``min.insync.replicas=2``.

    >>> replication_for(0, 1), replication_for(0, 3)
    ((1, {}), (3, {'min.insync.replicas': '2'}))
    >>> replication_for(2, 5)  # set explicitly: kept as it is
    (2, {})
    """
    rf = wanted or (3 if brokers >= 3 else 1)
    return rf, ({"min.insync.replicas": "2"} if rf >= 3 else {})


def topic_specs(topics: TopicsConfig) -> list[TopicSpec]:
    """The three topics: events in, compacted lists out, dead letters aside."""
    n, rf = topics.partitions, topics.replication_factor
    return [
        TopicSpec(topics.events, n, rf),
        TopicSpec(topics.recommendations, n, rf, {**COMPACTED, "min.compaction.lag.ms": "0"}),
        TopicSpec(topics.dead_letter, n, rf, {"retention.ms": str(14 * 24 * 3600 * 1000)}),
    ]


def ensure_topics(
    kafka: KafkaConfig, specs: list[TopicSpec], timeout: float = 15.0
) -> dict[str, bool]:
    """Create the topics that do not exist yet; return ``{name: created}``.

    Existing topics are left as they are: a partition count that differs from
    the spec is a WARNING (repartitioning would move users between stores), and
    so is a cleanup policy other than the spec's (e.g. a recommendations topic
    that is not compacted keeps every list ever published).
    """
    admin = make_client(AdminClient, kafka.client_config())
    metadata = list_topics(admin, kafka.bootstrap_servers, timeout)
    existing = metadata.topics
    result: dict[str, bool] = {}
    missing = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                log.warning(
                    "topic %s exists with %d partitions (the topics created here get %d: "
                    "--partitions, INTEREST_TOPIC_PARTITIONS); using it as it is",
                    spec.name,
                    have,
                    spec.partitions,
                )
            result[spec.name] = False
        else:
            rf, placed = replication_for(spec.replication_factor, len(metadata.brokers))
            config = placed | dict(spec.config)  # a spec's own setting wins
            missing.append(NewTopic(spec.name, spec.partitions, rf, config=config))
    _check_policies(admin, [s for s in specs if s.name in existing])
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
    _await_leaders(admin, [name for name, new in result.items() if new], timeout)
    return result


def _await_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Wait until the topics just created are in the metadata, every partition led.

    A cluster of several brokers learns of a new topic from its controller a moment
    after the creation is acknowledged: a lookup right away (the changelog takes the
    events topic's partition count) could be answered by a broker that does not
    know it yet.
    """
    deadline = time.monotonic() + timeout
    while names and time.monotonic() < deadline:
        try:
            topics = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        except KafkaException:
            topics = {}
        names = [
            n
            for n in names
            if n not in topics
            or topics[n].error is not None
            or any(p.leader < 0 for p in topics[n].partitions.values())
        ]
        if names:
            time.sleep(0.1)


def partition_count(kafka: KafkaConfig, topic: str, timeout: float = 15.0) -> int | None:
    """Partitions of ``topic`` (None when it does not exist)."""
    admin = make_client(AdminClient, kafka.client_config())
    meta = list_topics(admin, kafka.bootstrap_servers, timeout, topic).topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    return len(meta.partitions)


def ensure_changelog(kafka: KafkaConfig, name: str, events: str, replication: int) -> bool:
    """Create the compacted state changelog ``name`` with the events topic's partition count.

    Changelog partition p holds the states of events partition p, so an
    existing changelog with another partition count is a :class:`ConfigError`.
    Returns True when it was created.
    """
    n = partition_count(kafka, events)
    if n is None:
        raise ConfigError(f"events topic {events} does not exist")
    have = partition_count(kafka, name)
    if have is not None:
        if have != n:
            raise ConfigError(
                f"changelog topic {name} has {have} partitions but the events topic {events} "
                f"has {n}: they must match (delete the changelog to rebuild it)"
            )
        return False
    spec = TopicSpec(name, n, replication, dict(COMPACTED))
    return ensure_topics(kafka, [spec])[name]


def updates_retention_ms(publish_every_s: int) -> int:
    """Retention of the model-updates topic for snapshots every ``publish_every_s`` (0: none)."""
    if publish_every_s <= 0:
        return 7 * 24 * 3600 * 1000  # no snapshots on the topic: a new worker replays all
    return max(_MIN_UPDATES_RETENTION_MS, 12 * publish_every_s * 1000)


def ensure_model_topics(
    kafka: KafkaConfig, updates: str, model: str, replication: int, retention_ms: int
) -> None:
    """Create the model-updates topic (time retention) and the compacted model topic, when
    missing. Both have one partition: every worker reads the updates in one order (so all
    count the same), and a snapshot's manifest and chunks in the order written."""
    segment = str(min(retention_ms // 4, 10 * 60 * 1000))
    ensure_topics(
        kafka,
        [
            TopicSpec(
                updates,
                1,
                replication,
                {
                    "cleanup.policy": "delete",
                    "retention.ms": str(retention_ms),
                    "segment.ms": segment,
                },
            ),
            TopicSpec(
                model,
                1,
                replication,
                {
                    "cleanup.policy": "compact",
                    "min.compaction.lag.ms": "0",
                    "segment.ms": str(10 * 60 * 1000),
                },
            ),
        ],
    )


def _check_policies(admin: AdminClient, specs: list[TopicSpec]) -> None:
    """Warn when an existing topic's cleanup.policy differs from what its spec asks."""
    wanted = {s.name: s.config["cleanup.policy"] for s in specs if "cleanup.policy" in s.config}
    if not wanted:
        return
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in wanted]
    try:
        futures = admin.describe_configs(resources, request_timeout=10)
    except KafkaException:
        return  # diagnostics only
    for res, future in futures.items():
        try:
            entry = future.result().get("cleanup.policy")
        except KafkaException:
            continue  # e.g. not authorised to describe: diagnostics only
        have = entry.value if entry is not None else "delete"
        want = wanted[res.name]
        if set(want.split(",")) - set((have or "").split(",")):
            log.warning(
                "topic %s exists with cleanup.policy=%s, expected %s (a recommendations "
                "topic should keep only each user's newest list)",
                res.name,
                have,
                want,
            )
