"""Command-line argument helpers every subcommand shares (argparse only, nothing heavy).

The settings these flags feed are resolved by :func:`stream.config.settings_from_args`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from core.errors import ConfigError

__all__ = ["add_kafka_flags", "add_csv_flags", "add_items_flag", "check_items"]


def add_kafka_flags(p: argparse.ArgumentParser) -> None:
    """``--bootstrap-servers``, ``--config`` and ``-X`` for every Kafka-facing command."""
    p.add_argument(
        "--bootstrap-servers",
        dest="bootstrap_servers",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: $INTEREST_KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML settings file (default: $INTEREST_CONFIG)"
    )
    p.add_argument(
        "-X",
        dest="client",
        action="append",
        metavar="NAME=VALUE",
        help="librdkafka client setting, e.g. -X security.protocol=SASL_SSL (repeatable)",
    )


def add_csv_flags(p: argparse.ArgumentParser) -> None:
    """``--columns`` and ``--event-map`` for ``--format csv`` (evaluate and publish)."""
    p.add_argument(
        "--columns",
        metavar="FIELD=COLUMN,...",
        help="CSV column names of our fields user, item, type, ts, "
        "e.g. user=uid,item=iid,type=behavior,ts=time",
    )
    p.add_argument(
        "--event-map",
        dest="event_map",
        metavar="NAME=EVENT,...",
        help="behaviour names to click/favourite/cart/purchase, e.g. pv=click,buy=purchase",
    )


def add_items_flag(p: argparse.ArgumentParser) -> None:
    """``--items N``: the synthetic stream's catalogue size (evaluate, publish, demo)."""
    p.add_argument(
        "--items",
        type=int,
        metavar="N",
        help="synthetic stream: a catalogue of N items with Zipf-like popularity "
        "(default: the small built-in catalogue of about 500 items)",
    )


def check_items(items: int | None, fmt: str = "synthetic") -> int | None:
    """``--items`` as given, or ConfigError when it makes no sense for ``fmt``."""
    if items is None:
        return None
    if fmt != "synthetic":
        raise ConfigError("--items is for --format synthetic")
    if items < 2:
        raise ConfigError("--items must be at least 2")
    return items


LOG_LEVEL_ENV = "INTEREST_LOG_LEVEL"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(env: Mapping[str, str] | None = None) -> str:
    """``$INTEREST_LOG_LEVEL`` (default WARNING), upper-cased; ConfigError when unknown."""
    raw = (os.environ if env is None else env).get(LOG_LEVEL_ENV) or "WARNING"
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"{LOG_LEVEL_ENV} must be one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
    return level


ENCODER_DIR_ENV = "INTEREST_ENCODER_DIR"
ENCODER_FILES = ("model.safetensors", "vocab.txt", "config.json")


def check_encoder_dir(env: Mapping[str, str] | None = None) -> None:
    """``$INTEREST_ENCODER_DIR``, when set, names a directory with the encoder's files."""
    raw = (os.environ if env is None else env).get(ENCODER_DIR_ENV)
    if raw is None:
        return
    missing = [f for f in ENCODER_FILES if not (Path(raw) / f).is_file()]
    if not raw.strip() or missing:
        what = "is empty" if not raw.strip() else f"{raw} lacks {', '.join(missing)}"
        raise ConfigError(
            f"{ENCODER_DIR_ENV} {what}: it names a directory with the item-content encoder's "
            f"files ({', '.join(ENCODER_FILES)}); unset it to use the installed package's"
        )
