"""Checks a worker runs before it starts, and client construction with one clear error.

Everything here fails with a one-line :class:`~stream.errors.InterestStreamError`
(an unwritable state dir, an unreachable broker, a client setting librdkafka
rejects), cheap enough to run before a model is loaded.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from stream.config import Settings
from stream.errors import ConfigError, KafkaClientError
from stream.topics import ensure_topics, topic_specs

__all__ = ["state_root", "check_writable", "make_client", "preflight", "CONNECT_TIMEOUT_S"]

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


def make_client(cls: type, conf: dict[str, Any]) -> Any:
    """A confluent-kafka client; a setting librdkafka rejects becomes one ConfigError."""
    try:
        return cls(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, KafkaError) else str(err)
        raise ConfigError(f"Kafka client setting rejected: {text}") from None


def preflight(settings: Settings, store_root: Path | None = None) -> None:
    """Fail fast, with one clear line, on an unusable state dir or an unreachable broker;
    create missing topics. Cheap enough to call before loading a model."""
    check_writable(store_root if store_root is not None else state_root(settings))
    kafka = settings.kafka
    admin = make_client(AdminClient, kafka.client_config())
    try:
        existing = admin.list_topics(timeout=CONNECT_TIMEOUT_S).topics
    except KafkaException as exc:
        raise KafkaClientError(
            f"cannot reach Kafka at {kafka.bootstrap_servers}", exc.args[0].name()
        ) from None
    missing = [s for s in topic_specs(settings.topics) if s.name not in existing]
    if missing:
        ensure_topics(kafka, missing)
