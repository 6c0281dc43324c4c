"""Model snapshots on a compacted Kafka topic: chunks and a manifest, written in one go.

A snapshot is the model's safetensors bytes (:mod:`model.persist`) cut into
records of at most :data:`CHUNK_BYTES` (keys ``chunk-0``, ``chunk-1``, ...; header
``version``) followed by a manifest (key ``manifest``, JSON): format, version,
number of chunks, size, sha256 of the bytes, the model's name and version, and
where the snapshot stands in the model-updates topic (the next offset of every
partition whose updates it includes) with the writer's sync book. A worker
writes chunks and manifest in one transaction (exactly-once mode), so a
read_committed reader sees all of a snapshot or none of it.

The topic has one partition and is compacted: the newest manifest and the
newest record of each chunk key survive, and a reader takes the newest
manifest whose chunks carry its version and add up to its checksum. Anything
else (a missing topic, a torn or corrupt snapshot) is one WARNING and no
snapshot: the worker goes on from its local snapshot, or a fresh model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.config import Settings
from stream.kafka.clients import make_client

__all__ = [
    "TopicSnapshot",
    "CHUNK_BYTES",
    "MANIFEST_FORMAT",
    "snapshot_records",
    "read_newest",
    "watermarks",
]

log = logging.getLogger("interest_stream.worker")

MANIFEST_FORMAT = "interest-model-manifest-1"
# Below the broker's and librdkafka's default largest message (1 MB) with room for headers.
CHUNK_BYTES = 512 * 1024
MANIFEST_KEY = b"manifest"
_READ_TIMEOUT_S = 30.0


@dataclass
class TopicSnapshot:
    """A complete snapshot read from the model topic."""

    version: int
    data: bytes
    positions: dict[int, int]  # model-updates partition -> next offset included
    book: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def snapshot_records(
    data: bytes, version: int, extra: dict[str, Any]
) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """(key, value, headers) of the chunks, then the manifest, of snapshot bytes ``data``.

    ``extra`` joins the manifest (model name and version, positions, book).
    """
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, max(len(data), 1), CHUNK_BYTES)]
    tag = [("version", str(version).encode())]
    out = [(f"chunk-{i}".encode(), chunk, tag) for i, chunk in enumerate(chunks)]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "chunks": len(chunks),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "created_ms": int(time.time() * 1000),
        **extra,
    }
    out.append((MANIFEST_KEY, json.dumps(manifest).encode(), tag))
    return out


def read_newest(settings: Settings, topic: str) -> TopicSnapshot | None:
    """The newest complete snapshot on ``topic``; None (and one WARNING) when there is none
    that can be used (an empty topic is silently None)."""
    kafka, group = settings.kafka, settings.worker.group
    base = {"group.id": f"{group}.model-load", "enable.auto.commit": False}
    reader = make_client(
        Consumer, kafka.client_config(**base, **{"isolation.level": "read_committed"})
    )
    marks = make_client(
        Consumer, kafka.client_config(**base, **{"isolation.level": "read_uncommitted"})
    )
    try:
        tp = TopicPartition(topic, 0)
        try:
            if not _exists(marks, topic):
                log.warning("model topic %s is missing: no shared model to start from", topic)
                return None
            low, high = watermarks(marks, tp)
        except KafkaException as exc:
            log.warning("model topic %s cannot be read (%s): no shared model", topic, exc)
            return None
        if high <= low:
            return None
        latest = _read_latest(reader, tp, low, high)
    finally:
        reader.close()
        marks.close()
    try:
        return _complete(latest)
    except ValueError as exc:
        log.warning("model topic %s holds no usable snapshot (%s); going on without it", topic, exc)
        return None


def _read_latest(
    reader: Any, tp: TopicPartition, low: int, high: int
) -> dict[bytes, tuple[bytes, dict[str, bytes]]]:
    """The newest value (and headers) of every key, reading up to ``high`` (the HWM)."""
    reader.assign([TopicPartition(tp.topic, tp.partition, low)])
    latest: dict[bytes, tuple[bytes, dict[str, bytes]]] = {}
    deadline = time.monotonic() + _READ_TIMEOUT_S
    at = low
    while time.monotonic() < deadline:
        for msg in reader.consume(500, timeout=0.2):
            if msg.error() is not None or msg.key() is None:
                continue
            if msg.value() is None:
                latest.pop(msg.key(), None)
            else:
                latest[msg.key()] = (msg.value(), dict(msg.headers() or ()))
        (pos,) = reader.position([tp])
        at = max(at, pos.offset)
        if at >= high:
            return latest
    log.warning("stopped reading %s at offset %d of %d (an open transaction?)", tp.topic, at, high)
    return latest


def _complete(latest: dict[bytes, tuple[bytes, dict[str, bytes]]]) -> TopicSnapshot | None:
    if MANIFEST_KEY not in latest:
        if latest:
            raise ValueError("chunks without a manifest")
        return None
    try:
        manifest = json.loads(latest[MANIFEST_KEY][0])
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {manifest.get('format')!r}")
        version, n = int(manifest["version"]), int(manifest["chunks"])
        positions = {int(p): int(o) for p, o in manifest["positions"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable manifest: {exc}") from None
    parts = []
    for i in range(n):
        chunk = latest.get(f"chunk-{i}".encode())
        if chunk is None or chunk[1].get("version") != str(version).encode():
            raise ValueError(f"chunk {i} of snapshot {version} is missing")
        parts.append(chunk[0])
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise ValueError(f"snapshot {version} does not match its checksum")
    book = manifest.get("book") if isinstance(manifest.get("book"), dict) else {}
    return TopicSnapshot(version, data, positions, book, manifest)


def _exists(client: Any, topic: str, wait_s: float = 5.0) -> bool:
    """Whether ``topic`` exists; asked again for ``wait_s`` (a topic another worker of the
    group is creating right now is missing from the metadata for a moment)."""
    deadline = time.monotonic() + wait_s
    while True:
        meta = client.list_topics(topic, timeout=10).topics.get(topic)
        if meta is not None and meta.error is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def watermarks(client: Any, tp: TopicPartition, wait_s: float = 15.0) -> tuple[int, int]:
    """(low, high watermark), retried for ``wait_s`` (a partition just created has no
    leader for a moment)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            low, high = client.get_watermark_offsets(tp, timeout=5, cached=False)
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() > deadline:  # no leader yet (NOT_LEADER_FOR_PARTITION ...)
                raise
            time.sleep(0.2)
