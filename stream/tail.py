"""Print recommendation lists as they arrive on the recommendations topic.

Reads from the end of the topic (only new lists) without committing offsets,
so any number of tails can watch a running worker.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaException

from core.errors import KafkaClientError
from stream.clients import make_client
from stream.config import Settings
from stream.events import decode_recommendation

__all__ = ["tail", "format_list"]


def format_list(doc: dict[str, Any], width: int = 10) -> str:
    """One line: time, user, model, item:score best first, then what drove the list."""
    at = datetime.fromtimestamp(doc.get("generated_at", 0) / 1000, tz=UTC)
    items = " ".join(f"{it['item_id']}:{float(it['score']):.3g}" for it in doc["items"][:width])
    why = doc.get("explanation")
    because = f" (because of {', '.join(why)})" if why else ""
    return (
        f"{at:%H:%M:%S}.{at.microsecond // 1000:03d} {doc.get('user_id')} "
        f"[{doc.get('model_version')}] {items}{because}"
    )


def tail(
    settings: Settings,
    user: str | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    from_beginning: bool = False,
    on_list: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Print (or hand to ``on_list``) every new list, until ``stop``; returns the count."""
    out = out if out is not None else sys.stdout
    consumer = make_client(
        Consumer,
        settings.kafka.client_config(
            **{
                "group.id": f"interest-tail-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
            }
        ),
    )
    try:
        try:
            consumer.list_topics(settings.topics.recommendations, timeout=10)
        except KafkaException as exc:
            raise KafkaClientError(
                f"cannot reach Kafka at {settings.kafka.bootstrap_servers}", exc.args[0].name()
            ) from None
        consumer.subscribe([settings.topics.recommendations])
        seen = 0
        while stop is None or not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().fatal():
                    raise KafkaClientError(f"tail: {msg.error().str()}", msg.error().name())
                continue
            if user is not None and (msg.key() or b"").decode("utf-8", "replace") != user:
                continue
            try:
                doc = decode_recommendation(msg.value() or b"")
            except ValueError:
                print(f"(unreadable list at offset {msg.offset()})", file=out)
                continue
            seen += 1
            if on_list is not None:
                on_list(doc)
            else:
                print(format_list(doc), file=out, flush=True)
        return seen
    finally:
        consumer.close()
