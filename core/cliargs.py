"""Command-line argument helpers every subcommand shares (argparse only, nothing heavy).

The settings these flags feed are resolved by :func:`stream.config.settings_from_args`.
"""

from __future__ import annotations

import argparse

__all__ = ["add_kafka_flags", "add_csv_flags"]


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
