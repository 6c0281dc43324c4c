"""Checks a worker runs before it starts.

Everything here fails with a one-line :class:`~core.errors.InterestStreamError`
(an unwritable state dir, an unreachable broker, a client setting librdkafka
rejects), cheap enough to run before a model is loaded.
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path

from confluent_kafka.admin import AdminClient

from core.errors import ConfigError
from stream.config import KafkaConfig, Settings
from stream.kafka.clients import list_topics, make_client
from stream.kafka.topics import (
    ensure_changelog,
    ensure_model_topics,
    ensure_topics,
    topic_specs,
    updates_retention_ms,
)

__all__ = ["state_root", "check_writable", "check_reachable", "preflight", "CONNECT_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 10.0


def state_root(settings: Settings) -> Path:
    """Directory holding this consumer group's partition databases.

    The group name becomes one path component: characters a file name should not
    hold are replaced, so a group like ``../x`` cannot point outside the state dir.
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "_", settings.worker.group)
    if name.strip(".") == "":
        name = name.replace(".", "_") or "_"
    return Path(settings.worker.state_dir) / name


def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"state dir {root} is not writable: {exc.strerror or exc} (pass --state-dir)"
        ) from None


def check_reachable(kafka: KafkaConfig, stop: threading.Event | None = None) -> None:
    """One clear line (KafkaClientError) when the cluster does not answer in time; ``stop``
    set meanwhile (a signal) ends the wait (KeyboardInterrupt)."""
    admin = make_client(AdminClient, kafka.client_config())
    list_topics(admin, kafka.bootstrap_servers, CONNECT_TIMEOUT_S, stop=stop)


def preflight(
    settings: Settings, state_dir: Path | None, stop: threading.Event | None = None
) -> None:
    """Fail fast, with one clear line, on an unusable state dir or an unreachable broker;
    create missing topics (existing ones are used as they are, with a WARNING where
    they differ from the configuration). Cheap enough to call before loading a model.

    ``state_dir`` None: the state is not kept on disk, nothing to check there.
    """
    if state_dir is not None:
        check_writable(state_dir)
    kafka = settings.kafka
    check_reachable(kafka, stop)
    ensure_topics(kafka, topic_specs(settings.topics))
    ensure_changelog(
        kafka, settings.changelog_topic, settings.topics.events, settings.topics.replication_factor
    )
    if settings.model_sharing:
        ensure_model_topics(
            kafka,
            settings.model_updates_topic,
            settings.model_topic,
            settings.topics.replication_factor,
            updates_retention_ms(settings.worker.model_publish_every_s),
        )
