"""Reference pages written from the code, so that they cannot drift from it.

A MkDocs hook (``mkdocs.yml``: ``hooks``). A page holding a marker line
``<!-- generated: NAME -->`` gets, in its place:

- ``cli``: the help of every ``interest-stream`` command, from the argparse
  parser the command itself builds (:func:`stream.cli.main.build_parser`);
- ``settings``: one row per field of the settings dataclasses
  (:mod:`stream.config`), with its flag (read from the ``worker`` and ``topics``
  parsers), environment variable (the field's metadata), TOML key and default;
- ``metrics``: one row per metric family a worker registers
  (:meth:`engine.metrics.WorkerMetrics.create` on a registry of its own);
- ``models``: the model registry (:mod:`model.factory`), by name.

A settings field without a description below, a description of a field that
is gone, or an unknown marker fails the build.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["on_page_markdown", "render"]

# The pages describe this tree: its packages come first, installed or not.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.MULTILINE)

# What each setting does; the rest of its row is read from the code.
SETTING_DOCS = {
    "kafka.bootstrap_servers": "Kafka bootstrap servers (the demo and tests start the "
    "embedded broker when none is given)",
    "kafka.client": "librdkafka client settings, passed through unchanged (SASL, SSL, ...); "
    "secret-looking values are never printed",
    "topics.events": "events topic",
    "topics.recommendations": "recommendations topic (created compacted)",
    "topics.dead_letter": "dead-letter topic",
    "topics.items": "item metadata topic (created compacted; empty: none is read), see "
    "[Item content](../model/content.md)",
    "topics.changelog": "state changelog topic (compacted); empty: "
    "`<group>.<events topic>.changelog`",
    "topics.model_updates": "model updates topic; empty: `<group>.model-updates` (1 partition, "
    "time retention: 12 publish intervals, at least 1 h; 7 days when publishing is off)",
    "topics.model": "model snapshot topic; empty: `<group>.model` (1 partition, compacted)",
    "topics.partitions": "partitions of new topics",
    "topics.replication_factor": "replication factor of new topics; 0: 3 (and "
    "`min.insync.replicas=2`) on 3 or more brokers, else 1",
    "worker.group": "consumer group",
    "worker.state_dir": "state directory (RocksDB stores, model snapshot, worker id)",
    "worker.metrics_port": "Prometheus metrics port (0: off)",
    "worker.stall_after_s": "seconds without progress while work waits before the worker "
    "counts as stalled (`interest_stalled`, `/healthz` fails)",
    "worker.batch_max_events": "micro-batch size",
    "worker.batch_max_ms": "micro-batch time (ms)",
    "worker.batch_catch_up_events": "micro-batch size while catching up (at most "
    "`batch_max_events`: off)",
    "worker.k": "list length K",
    "worker.max_payload_bytes": "largest accepted event (bytes)",
    "worker.max_id_bytes": "longest accepted id (UTF-8 bytes)",
    "worker.snapshot_every_s": "model snapshot every N seconds (0: off)",
    "worker.snapshot_every_batches": "model snapshot every N batches (0: off)",
    "worker.processing_guarantee": "processing guarantee",
    "worker.runtime": "runtime: `native` (confluent-kafka) or `faust` (faust-streaming, "
    "at-least-once)",
    "worker.model_sharing": "one model across the group's workers (`off`: each worker "
    "trains alone)",
    "worker.sync_every_s": "merge learned parameters every N seconds (0: every batch)",
    "worker.model_publish_every_s": "publish the model to the model topic every N seconds (0: off)",
    "worker.refresh_budget_percent": "refresh: share of the worker's time (0: refresh and the "
    "newcomer list off)",
    "worker.refresh_max_users": "refresh: users per pass",
    "worker.refresh_interval_ms": "refresh: at most one pass per N ms",
    "worker.refresh_stale_events": "refresh: a list is stale after N events learnt",
    "worker.refresh_track_users": "refresh: recently active users tracked per partition",
    "privacy.id_key_file": "a file holding the user-id key (pseudonymised ids); the key itself "
    "comes from `INTEREST_ID_KEY` or this file, never from the TOML file",
    "privacy.log_ids": "user ids and exception messages in logs (debugging only)",
}
# Commands whose flags set the service's settings (evaluate's flags of the same
# names configure the offline replay instead).
SETTING_COMMANDS = ("worker", "topics")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: each marker line replaced by what it names."""
    return MARKER.sub(lambda m: render(m.group(1)), markdown)


def render(name: str) -> str:
    """The Markdown a marker ``name`` stands for."""
    renderers: dict[str, Callable[[], str]] = {
        "cli": cli_reference,
        "settings": settings_reference,
        "metrics": metrics_reference,
        "models": models_reference,
    }
    if name not in renderers:
        raise ValueError(f"unknown generated section {name!r} (known: {sorted(renderers)})")
    return renderers[name]()


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser``'s subcommand parsers, depth first, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from _subcommands(sub)


def _root_parser() -> argparse.ArgumentParser:
    # argparse wraps help to the terminal's width: fix it so the page is the same anywhere.
    os.environ["COLUMNS"] = "100"
    from stream.cli.main import build_parser

    return build_parser()


def cli_reference() -> str:
    """``interest-stream --help`` and the help of every subcommand, each under a heading."""
    root = _root_parser()
    parts = [f"## `{root.prog}`\n\n```text\n{root.format_help().rstrip()}\n```\n"]
    for sub in _subcommands(root):
        parts.append(f"## `{sub.prog}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def _setting_flags() -> dict[str, str]:
    """``{field name: flag}`` of the options of the commands that set the service's settings."""
    root = _root_parser()
    flags: dict[str, str] = {}
    for sub in _subcommands(root):
        if sub.prog.split()[-1] not in SETTING_COMMANDS:
            continue
        for action in sub._actions:
            if action.option_strings and action.dest not in flags:
                flags[action.dest] = max(action.option_strings, key=len)
    return flags


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None or value == {} or value == "":
        return "none" if value is None or value == {} else "(empty)"
    return f"`{value}`"


def settings_reference() -> str:
    """The settings table: one row per field of the settings dataclasses."""
    from stream.config import (
        CLIENT_ENV_PREFIX,
        KafkaConfig,
        PrivacyConfig,
        TopicsConfig,
        WorkerConfig,
    )

    sections: list[tuple[str, type]] = [
        ("kafka", KafkaConfig),
        ("topics", TopicsConfig),
        ("worker", WorkerConfig),
        ("privacy", PrivacyConfig),
    ]
    flags = _setting_flags()
    rows = ["| setting | flag | environment | TOML | default |", "| --- | --- | --- | --- | --- |"]
    documented = set()
    for section, cls in sections:
        for f in dataclasses.fields(cls):
            if f.metadata.get("secret"):
                continue  # the key itself: never a setting of the file (see id_key_file)
            key = f"{section}.{f.name}"
            if key not in SETTING_DOCS:
                raise ValueError(f"setting {key} has no description in docs/gen_ref.py")
            documented.add(key)
            if key == "kafka.client":
                flag, toml = "`-X name=value`", "`[kafka.client]`"
                env = f"`{CLIENT_ENV_PREFIX}<NAME>` (`_` → `.`)"
            else:
                flag = f"`{flags[f.name]}`" if f.name in flags else ""
                env = f"`{f.metadata['env']}`" if "env" in f.metadata else ""
                toml = f"`[{section}] {f.name}`"
            doc = SETTING_DOCS[key]
            choices = f.metadata.get("choices")
            if choices:
                doc += " (" + ", ".join(f"`{c}`" for c in choices) + ")"
            rows.append(f"| {doc} | {flag} | {env} | {toml} | {_default(f)} |")
    stale = set(SETTING_DOCS) - documented
    if stale:
        raise ValueError(f"docs/gen_ref.py describes settings that are gone: {sorted(stale)}")
    return "\n".join(rows) + "\n"


def metrics_reference() -> str:
    """The metrics table: every family a worker's registry holds, in registration order."""
    from prometheus_client import CollectorRegistry

    from engine.metrics import WorkerMetrics

    metrics = WorkerMetrics.create(CollectorRegistry())
    collected = {family.name: family for family in metrics.registry.collect()}
    rows = ["| metric | type | labels | what |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(WorkerMetrics):
        metric = getattr(metrics, f.name)
        if isinstance(metric, CollectorRegistry):
            continue
        (family,) = metric.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        # prometheus_client keeps a metric's label names in a private attribute only.
        names = getattr(metric, "_labelnames", ())
        samples = collected[family.name].samples if family.name in collected else []
        labels = []
        for label in names:
            values = sorted({s.labels[label] for s in samples if s.labels.get(label)})
            labels.append(f"`{label}`" + (": " + ", ".join(values) if values else ""))
        doc = family.documentation
        rows.append(f"| `{name}` | {family.type} | {'; '.join(labels)} | {doc} |")
    return "\n".join(rows) + "\n"


def models_reference() -> str:
    """Every model the registry builds by name, with its help and where it runs."""
    from model import factory

    rows = ["| `INTEREST_MODEL` / `--models` | what | in `evaluate` by default |"]
    rows.append("| --- | --- | --- |")
    # The registry itself, in registration order (model.factory keeps no public list of
    # every name: MODEL_NAMES holds the evaluated ones).
    for name, spec in factory._REGISTRY.items():
        rows.append(f"| `{name}` | {spec.help} | {'yes' if spec.evaluated else 'no'} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python docs/gen_ref.py NAME: print a section
    print(render(sys.argv[1] if len(sys.argv) > 1 else "settings"))
