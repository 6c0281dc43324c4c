"""Typed settings, loaded from CLI flags > environment > TOML file > defaults.

Each component has a frozen dataclass; every field names its environment
variable in its metadata (docs/reference/settings.md is written from them).
librdkafka client settings (SASL, SSL, ...) pass through unchanged from
``[kafka.client]`` in the TOML file, ``INTEREST_KAFKA_CLIENT_<NAME>``
variables or ``-X name=value`` flags;
values whose name looks secret are never printed. The user-id key
(:class:`PrivacyConfig`) comes from the environment or a file of its own, never
from the TOML file, and is never printed either.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from engine.config import DriverConfig, OutputTopics
from model.pacing import BATCH_CATCH_UP_EVENTS, BATCH_MAX_EVENTS
from model.refresh import RefreshPolicy

__all__ = [
    "KafkaConfig",
    "TopicsConfig",
    "WorkerConfig",
    "PrivacyConfig",
    "Settings",
    "load_settings",
    "settings_from_args",
    "parse_client_overrides",
    "redact",
    "CONFIG_ENV",
    "EXACTLY_ONCE",
    "AT_LEAST_ONCE",
    "GUARANTEES",
    "GUARANTEE_ENV",
    "RUNTIMES",
    "BOOTSTRAP_ENV",
    "ID_KEY_ENV",
]

CONFIG_ENV = "INTEREST_CONFIG"
GUARANTEE_ENV = "INTEREST_PROCESSING_GUARANTEE"
RUNTIMES = ("native", "faust")
EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
GUARANTEES = (EXACTLY_ONCE, AT_LEAST_ONCE)
BOOTSTRAP_ENV = "INTEREST_KAFKA_BOOTSTRAP"
ID_KEY_ENV = "INTEREST_ID_KEY"
MIN_ID_KEY_BYTES = 16  # 128 bits: a key nobody finds by trying, so pseudonyms stay opaque
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
CLIENT_ENV_PREFIX = "INTEREST_KAFKA_CLIENT_"
_SECRET_MARKERS = ("password", "secret", "token", "key")
_RDKAFKA_LOG = logging.getLogger("librdkafka")
if _RDKAFKA_LOG.level == logging.NOTSET:
    _RDKAFKA_LOG.setLevel(logging.CRITICAL)


def _env(name: str, empty: bool = False) -> dict[str, Any]:
    """The environment variable of a setting; ``empty``: set but empty counts (as "")."""
    return {"env": name, "empty": empty}


@dataclass(frozen=True)
class KafkaConfig:
    """Where the cluster is and how to talk to it."""

    bootstrap_servers: str | None = field(default=None, metadata=_env(BOOTSTRAP_ENV))
    client: Mapping[str, str] = field(default_factory=dict)

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka settings for a client: pass-through settings, then ``extra``."""
        if not self.bootstrap_servers:
            raise ConfigError(
                f"no Kafka bootstrap servers: pass --bootstrap-servers or set {BOOTSTRAP_ENV}"
            )
        # librdkafka's own log lines go to Python logging ("librdkafka"), quiet by
        # default: failures reach the user as one clear error, not a log flood.
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": _RDKAFKA_LOG}
        conf.update(self.client)
        conf.update(extra)
        return conf

    def __repr__(self) -> str:
        servers, client = self.bootstrap_servers, redact(self.client)
        return f"KafkaConfig(bootstrap_servers={servers!r}, client={client})"


@dataclass(frozen=True)
class TopicsConfig:
    """Topic names and how they are created when missing."""

    events: str = field(default="interest.events", metadata=_env("INTEREST_TOPIC_EVENTS"))
    recommendations: str = field(
        default="interest.recommendations", metadata=_env("INTEREST_TOPIC_RECOMMENDATIONS")
    )
    dead_letter: str = field(
        default="interest.dead-letter", metadata=_env("INTEREST_TOPIC_DEAD_LETTER")
    )
    # Item metadata (stream/runtime/items.py): optional, compacted; empty: none is read.
    items: str = field(default="interest.items", metadata=_env("INTEREST_TOPIC_ITEMS", empty=True))
    # Empty: "<group>.<events>.changelog" (see Settings.changelog_topic).
    changelog: str = field(default="", metadata=_env("INTEREST_TOPIC_CHANGELOG"))
    # Empty: "<group>.model-updates" and "<group>.model" (see Settings.model_updates_topic).
    model_updates: str = field(default="", metadata=_env("INTEREST_TOPIC_MODEL_UPDATES"))
    model: str = field(default="", metadata=_env("INTEREST_TOPIC_MODEL"))
    partitions: int = field(default=4, metadata=_env("INTEREST_TOPIC_PARTITIONS"))
    # 0: chosen when a topic is created, from the brokers the cluster has (see
    # stream/kafka/topics.py, auto_replication): 3 on a cluster of 3 or more, else 1.
    replication_factor: int = field(
        default=0, metadata={**_env("INTEREST_TOPIC_REPLICATION"), "min": 0}
    )


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker consumes, batches, stores state and exposes metrics."""

    group: str = field(default="interest-stream", metadata=_env("INTEREST_GROUP"))
    state_dir: Path = field(default=Path("state-data"), metadata=_env("INTEREST_STATE_DIR"))
    metrics_port: int = field(
        default=9464, metadata={**_env("INTEREST_METRICS_PORT"), "min": 0, "max": 65535}
    )
    # Seconds without progress while events wait before the worker counts as stalled
    # (interest_stalled, /healthz 503; engine/health.py). Above what the worker survives
    # on its own: a transaction call is given up after 15 s, a broker loss settles in
    # 3-9 s.
    stall_after_s: int = field(default=30, metadata={**_env("INTEREST_STALL_AFTER_S"), "min": 1})
    batch_max_events: int = field(
        default=BATCH_MAX_EVENTS, metadata=_env("INTEREST_BATCH_MAX_EVENTS")
    )
    batch_max_ms: int = field(default=50, metadata=_env("INTEREST_BATCH_MAX_MS"))
    # A worker behind (its batches come full) doubles its cap batch by batch up to this
    # many events, and goes back to batch_max_events as soon as a batch is not full: a
    # backlog drains faster while the model still learns in steps of the usual size.
    # At most batch_max_events turns it off.
    batch_catch_up_events: int = field(
        default=BATCH_CATCH_UP_EVENTS, metadata=_env("INTEREST_BATCH_CATCH_UP_EVENTS")
    )
    k: int = field(default=10, metadata=_env("INTEREST_K"))
    max_payload_bytes: int = field(default=64 * 1024, metadata=_env("INTEREST_MAX_PAYLOAD_BYTES"))
    # Longest user_id, item_id or category in UTF-8 bytes; longer ones are dead-lettered.
    max_id_bytes: int = field(default=256, metadata=_env("INTEREST_MAX_ID_BYTES"))
    # Model snapshots (0 turns a trigger off; a clean stop always saves).
    snapshot_every_s: int = field(
        default=60, metadata={**_env("INTEREST_SNAPSHOT_EVERY_S"), "min": 0}
    )
    snapshot_every_batches: int = field(
        default=0, metadata={**_env("INTEREST_SNAPSHOT_EVERY_BATCHES"), "min": 0}
    )
    processing_guarantee: str = field(
        default=EXACTLY_ONCE,
        metadata={**_env(GUARANTEE_ENV), "choices": GUARANTEES},
    )
    runtime: str = field(
        default="native", metadata={**_env("INTEREST_RUNTIME"), "choices": RUNTIMES}
    )
    # One model across the group's workers (stream/runtime/modelsync.py): shared count deltas,
    # learned parameters merged every sync_every_s, snapshots on the model topic.
    model_sharing: str = field(
        default="on", metadata={**_env("INTEREST_MODEL_SHARING"), "choices": ("on", "off")}
    )
    sync_every_s: int = field(default=2, metadata={**_env("INTEREST_SYNC_EVERY_S"), "min": 0})
    model_publish_every_s: int = field(
        default=300, metadata={**_env("INTEREST_MODEL_PUBLISH_EVERY_S"), "min": 0}
    )
    # Refresh of idle users' stale lists (model/refresh.py, engine/refresh.py):
    # at most this share of the worker's time (0 turns refresh and the newcomer list off),
    refresh_budget_percent: int = field(
        default=10,
        metadata={**_env("INTEREST_REFRESH_BUDGET_PERCENT"), "min": 0, "max": 100},
    )
    # at most this many users per pass, at most one pass per interval,
    refresh_max_users: int = field(
        default=RefreshPolicy.max_users, metadata=_env("INTEREST_REFRESH_MAX_USERS")
    )
    refresh_interval_ms: int = field(
        default=RefreshPolicy.interval_ms, metadata=_env("INTEREST_REFRESH_INTERVAL_MS")
    )
    # a list is stale once the worker has learnt from this many events since it was ranked,
    refresh_stale_events: int = field(
        default=RefreshPolicy.stale_events, metadata=_env("INTEREST_REFRESH_STALE_EVENTS")
    )
    # and the candidates are the most recently active users, this many per partition.
    refresh_track_users: int = field(
        default=RefreshPolicy.track_users, metadata=_env("INTEREST_REFRESH_TRACK_USERS")
    )

    def refresh_policy(self) -> RefreshPolicy:
        """The refresh policy these settings describe (shared with the evaluator)."""
        return RefreshPolicy(
            stale_events=self.refresh_stale_events,
            max_users=self.refresh_max_users,
            interval_ms=self.refresh_interval_ms,
            track_users=self.refresh_track_users,
            enabled=self.refresh_budget_percent > 0,
        )


@dataclass(frozen=True)
class PrivacyConfig:
    """How user ids are kept: pseudonymised with a secret key (off by default), and logs.

    ``id_key`` is the secret itself, from ``$INTEREST_ID_KEY`` or read from
    ``id_key_file`` (trailing newlines dropped); at least 16 bytes. It never
    appears in a repr. ``log_ids`` lets logs name user ids and exception
    messages (debugging only).
    """

    id_key_file: Path | None = field(default=None, metadata=_env("INTEREST_ID_KEY_FILE"))
    log_ids: bool = field(default=False, metadata=_env("INTEREST_LOG_IDS"))
    id_key: bytes | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class Settings:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    @property
    def changelog_topic(self) -> str:
        """The consumer group's state changelog: ``<group>.<events>.changelog`` by default.

        Characters a topic name cannot hold are replaced by ``_``.
        """
        if self.topics.changelog:
            return self.topics.changelog
        name = f"{self.worker.group}.{self.topics.events}.changelog"
        return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:249]

    @property
    def model_updates_topic(self) -> str:
        """Where workers share their model deltas: ``<group>.model-updates`` by default."""
        return self.topics.model_updates or _topic_name(f"{self.worker.group}.model-updates")

    @property
    def model_topic(self) -> str:
        """Where the group's model snapshots are kept: ``<group>.model`` by default."""
        return self.topics.model or _topic_name(f"{self.worker.group}.model")

    def driver_config(self) -> DriverConfig:
        """What the batch driver needs of these settings."""
        w, p = self.worker, self.privacy
        return DriverConfig(
            events_topic=self.topics.events,
            partitions=self.topics.partitions,
            k=w.k,
            max_payload_bytes=w.max_payload_bytes,
            max_id_bytes=w.max_id_bytes,
            refresh=w.refresh_policy(),
            refresh_budget_percent=w.refresh_budget_percent,
            id_key=p.id_key,
            log_ids=p.log_ids,
        )

    def output_topics(self) -> OutputTopics:
        """Where a batch's lists, dead letters and changelog records go."""
        t = self.topics
        return OutputTopics(t.recommendations, t.dead_letter, self.changelog_topic)

    @property
    def model_sharing(self) -> bool:
        return self.worker.model_sharing == "on"

    @property
    def exactly_once(self) -> bool:
        return self.worker.processing_guarantee == EXACTLY_ONCE


def _topic_name(name: str) -> str:
    """``name`` with the characters a topic name cannot hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:249]


def redact(client: Mapping[str, str]) -> dict[str, str]:
    """Client settings safe to print: secret-looking values replaced by ``***``."""
    return {
        k: ("***" if any(m in k.lower() for m in _SECRET_MARKERS) else v) for k, v in client.items()
    }


def parse_client_overrides(pairs: list[str] | None) -> dict[str, str]:
    """Turn ``["security.protocol=SASL_SSL", ...]`` (``-X`` flags) into a dict."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"client setting {pair!r} is not of the form name=value")
        out[name.strip()] = value
    return out


def _convert(section: str, f: dataclasses.Field, raw: Any, origin: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    kind = kind.removesuffix(" | None")
    name = f"{section}.{f.name}"
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text not in _TRUE + _FALSE:
            raise ConfigError(f"{origin}: {name} must be true or false, got {raw!r}")
        return text in _TRUE
    if kind == "int":
        lowest = f.metadata.get("min", 1)
        highest = f.metadata.get("max")
        try:
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError
            value = int(raw)
        except (TypeError, ValueError):
            value = None
        if value is None or value < lowest or (highest is not None and value > highest):
            bounds = (
                f"from {lowest} to {highest}"
                if highest
                else "a positive integer"
                if lowest
                else "an integer >= 0"
            )
            raise ConfigError(f"{origin}: {name} must be {bounds}, got {raw!r}")
        return value
    if isinstance(raw, (dict, list)):
        raise ConfigError(f"{origin}: {name} must be a single value, got {raw!r}")
    if kind == "Path":
        return Path(str(raw))
    choices = f.metadata.get("choices")
    if choices and str(raw) not in choices:
        raise ConfigError(f"{origin}: {name} must be one of {', '.join(choices)}, got {raw!r}")
    return None if raw is None else str(raw)


def _build(
    cls: type, section: str, flags: Mapping[str, Any], env: Mapping[str, str], table: Any
) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"config file: [{section}] must be a table of settings")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - known - {"client"}
    if unknown:
        raise ConfigError(f"config file: unknown setting(s) {sorted(unknown)} in [{section}]")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "client" or f.metadata.get("secret"):
            continue
        env_name = f.metadata.get("env")
        if flags.get(f.name) is not None:
            values[f.name] = _convert(section, f, flags[f.name], "flag")
        elif env_name and (env.get(env_name) or (f.metadata.get("empty") and env_name in env)):
            values[f.name] = _convert(section, f, env[env_name], env_name)
        elif f.name in table:
            values[f.name] = _convert(section, f, table[f.name], "config file")
    return values


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
            f"at offset {exc.start})"
        ) from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Settings from flags (a flat dict of field names) > env > TOML file > defaults.

    ``flags["client"]`` may hold ``-X`` overrides already parsed to a dict.
    """
    flags = dict(flags or {})
    env = os.environ if env is None else env
    path = config_file or env.get(CONFIG_ENV)
    doc = _read_toml(Path(path)) if path else {}
    unknown = set(doc) - {"kafka", "topics", "worker", "privacy"}
    if unknown:
        raise ConfigError(f"config file: unknown section(s) {sorted(unknown)}")

    kafka_table = doc.get("kafka", {})
    client_table = kafka_table.get("client", {}) if isinstance(kafka_table, dict) else {}
    if not isinstance(client_table, dict):
        raise ConfigError("config file: [kafka.client] must be a table of librdkafka settings")
    client: dict[str, str] = {str(k): str(v) for k, v in client_table.items()}
    for name, value in env.items():
        if name.startswith(CLIENT_ENV_PREFIX):
            client[name[len(CLIENT_ENV_PREFIX) :].lower().replace("_", ".")] = value
    client.update(flags.get("client") or {})

    settings = Settings(
        kafka=KafkaConfig(client=client, **_build(KafkaConfig, "kafka", flags, env, kafka_table)),
        topics=TopicsConfig(**_build(TopicsConfig, "topics", flags, env, doc.get("topics", {}))),
        worker=WorkerConfig(**_build(WorkerConfig, "worker", flags, env, doc.get("worker", {}))),
        privacy=_privacy(flags, env, doc.get("privacy", {})),
    )
    named = {
        "consumer group (--group, INTEREST_GROUP, [worker] group)": settings.worker.group,
        "events topic (INTEREST_TOPIC_EVENTS, [topics] events)": settings.topics.events,
        "recommendations topic (INTEREST_TOPIC_RECOMMENDATIONS, [topics] recommendations)": (
            settings.topics.recommendations
        ),
        "dead-letter topic (INTEREST_TOPIC_DEAD_LETTER, [topics] dead_letter)": (
            settings.topics.dead_letter
        ),
    }
    for what, name in named.items():
        if not name.strip():
            raise ConfigError(f"the {what} must not be empty")
    return settings


def _privacy(flags: Mapping[str, Any], env: Mapping[str, str], table: Any) -> PrivacyConfig:
    if isinstance(table, dict) and "id_key" in table:
        raise ConfigError(
            "config file: [privacy] id_key would keep the secret in the config file: put it "
            f"in a file of its own and set id_key_file (or ${ID_KEY_ENV})"
        )
    values = _build(PrivacyConfig, "privacy", flags, env, table)
    secret = env.get(ID_KEY_ENV)
    if secret is not None and not secret.strip():
        # Set but empty: ids would go out as sent although pseudonymising was asked for.
        raise ConfigError(
            f"${ID_KEY_ENV} is set but empty: unset it to keep user ids as sent, or give "
            f"a key of at least {MIN_ID_KEY_BYTES} bytes"
        )
    path: Path | None = values.get("id_key_file")
    if secret and path is not None:
        raise ConfigError(
            f"both ${ID_KEY_ENV} and a user-id key file ({path}) are set: set only one"
        )
    key: bytes | None = None
    if secret:
        key, origin = secret.encode("utf-8"), f"${ID_KEY_ENV}"
    elif path is not None:
        try:
            key, origin = path.read_bytes().rstrip(b"\r\n"), f"the user-id key file {path}"
        except OSError as exc:
            raise ConfigError(
                f"the user-id key file {path} cannot be read: {exc.strerror or exc}"
            ) from None
    if key is not None and len(key) < MIN_ID_KEY_BYTES:
        # The length only: never a byte of the key.
        raise ConfigError(
            f"{origin} holds {len(key)} bytes; a user-id key needs at least "
            f"{MIN_ID_KEY_BYTES} (e.g. the output of: openssl rand -hex 32)"
        )
    return PrivacyConfig(id_key=key, **values)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from parsed flags (see :mod:`core.cliargs`) > env > TOML > defaults.

    ``extra`` overrides flags (a command's own choices, e.g. the demo's state dir).
    """
    flags = {k: v for k, v in vars(args).items() if v is not None}
    flags["client"] = parse_client_overrides(getattr(args, "client", None))
    flags.update({k: v for k, v in extra.items() if v is not None})
    return load_settings(flags, config_file=getattr(args, "config", None))
