"""Wire formats: behaviour events in, recommendation lists out.

Event (value on the events topic, key = user id, UTF-8 JSON)::

    {"user_id": str, "item_id": str, "event": "click"|"favourite"|"cart"|"purchase",
     "ts": int (epoch ms, optional: the Kafka message timestamp is used when absent),
     "category": str (optional)}

Erasure request (same topic, same key, so it is ordered after the user's
earlier events)::

    {"user_id": str, "erase": true}

Numeric ids are accepted and turned into strings. :func:`decode_event`
returns an :class:`~core.types.Event`, an :class:`~core.types.Erasure` or a
:class:`Rejected` carrying one of the short reason codes in :data:`REASONS`;
the runtime sends rejected messages, bytes unchanged, to the dead-letter topic
with that code in the ``error`` header. A message with an ``erase`` field is an
erasure request: ``erase`` must be ``true`` and there must be no ``item_id``
or ``event`` (``bad-erasure`` otherwise); its ``user_id`` follows the id rules
and must match the key like an event's. Other fields are ignored.

Ids (``user_id``, ``item_id`` and a non-empty ``category``) travel on to every
subscriber of the lists, into logs, caches, CSV files and web pages, so an
accepted id is one they can use as it is. It

- is not empty and neither starts nor ends with a space (so it is never blank:
  ``" "``, ``" u1"`` and ``"u1 "`` are rejected, not trimmed, because a trimmed
  id would no longer match the message key);
- has only printable characters, as :meth:`str.isprintable` defines them: no
  control characters (Unicode Cc: NUL, tab, newline, DEL, C1), no format
  characters (Cf: zero-width space, byte-order mark, bidi overrides, soft
  hyphen), no separators but the ASCII space (Zs, Zl, Zp: no-break space,
  U+2028), no surrogate, private-use or unassigned code points;
- is at most ``max_id_bytes`` bytes long in UTF-8 (``worker.max_id_bytes``,
  default 256).

A violation is rejected as ``bad-id`` with the field and the broken rule in
the detail (``"item_id: control or invisible character"``); an empty
``category`` still means no category. The key must equal the user id's UTF-8
bytes exactly (``key-mismatch`` otherwise). NaN and Infinity are not JSON and
are rejected as ``not-json``.

Recommendation (value on the recommendations topic, key = user id)::

    {"user_id": str, "items": [{"item_id": str, "score": float}, ...],
     "model_version": str, "generated_at": int ms, "event_ts": int ms,
     "trigger": "events"|"refresh", "explanation": [str, ...] (optional)}

``explanation`` names the user's recent items that drove the list, most
influential first; it is present only when the model explains its lists
(the interest model does, the baselines do not). ``trigger`` is ``"events"``
when the user's own events caused the list and ``"refresh"`` when it was
re-ranked while the user was idle (``event_ts`` stays the newest event it
includes); :func:`decode_recommendation` reads a message without one as
``"events"``.

The list for users the service knows nothing about yet is published under the
reserved key :data:`NEWCOMERS_ID` (a NUL byte, then ``newcomers``; its
``user_id`` is the same string, ``event_ts`` 0). No valid user id can hold a
control character, so it never clashes with a user's list.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from math import isfinite
from typing import Any

import orjson

from core.types import EVENT_TYPES, TRIGGERS, Erasure, Event, Recommendation

__all__ = [
    "REASONS",
    "PROCESSING_ERROR",
    "Rejected",
    "EventValidator",
    "decode_event",
    "encode_event",
    "encode_erasure",
    "encode_recommendation",
    "decode_recommendation",
    "NEWCOMERS_ID",
]

# Reason codes (the dead-letter ``error`` header and the metrics label).
REASONS: dict[str, str] = {
    "empty-key": "message has no key (the key must be the user id)",
    "empty-value": "message has no value",
    "oversized": "value is larger than worker.max_payload_bytes",
    "not-utf8": "value is not valid UTF-8",
    "not-json": "value is not valid JSON",
    "not-object": "value is JSON but not an object",
    "missing-field": "user_id, item_id or event is missing",
    "bad-type": "a field has the wrong type",
    "bad-id": "user_id, item_id or category breaks the id rules (detail: field and rule)",
    "unknown-event": "event is not click, favourite, cart or purchase",
    "bad-timestamp": "ts is outside the plausible range",
    "key-mismatch": "message key differs from user_id (state is partitioned by key)",
    "bad-erasure": 'an erasure request other than {"user_id": U, "erase": true} (detail: why)',
    "processing-error": "a valid event the model failed on (detail: the exception type)",
}
PROCESSING_ERROR = "processing-error"

_EVENT_SET = frozenset(EVENT_TYPES)
# 1990-01-01: older than any public interaction log we replay (MovieLens starts
# 1995), newer than a seconds-since-epoch value misread as milliseconds.
MIN_TS_MS = 631_152_000_000
MAX_FUTURE_MS = 24 * 3600 * 1000
MAX_ID_BYTES = 256
# The key of the newcomer list: a control character makes it an invalid user id.
NEWCOMERS_ID = "\x00newcomers"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that cannot be applied; ``reason`` is a key of :data:`REASONS`."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EventValidator:
    """Limits applied while decoding; the byte limits come from WorkerConfig."""

    max_payload_bytes: int = 64 * 1024
    max_id_bytes: int = MAX_ID_BYTES
    min_ts_ms: int = MIN_TS_MS
    max_future_ms: int = MAX_FUTURE_MS


def _id_problem(text: str, max_bytes: int) -> str | None:
    """The id rule ``text`` breaks (see the module docstring), or None."""
    if not text:
        return "empty"
    # isprintable() is one C pass that also refuses lone surrogates ("\ud800",
    # which JSON may carry and no UTF-8 key can hold); the only whitespace it
    # lets through is the ASCII space.
    if not text.isprintable():
        return "control or invisible character"
    if text[0] == " " or text[-1] == " ":
        return "blank" if text.isspace() else "leading or trailing space"
    # A character is at most 4 bytes: short ids need no encoding to be measured.
    if len(text) > max_bytes // 4 and len(text.encode("utf-8")) > max_bytes:
        return f"longer than {max_bytes} bytes"
    return None


def _as_id(value: Any) -> str | None:
    # bool is an int subclass but never a sensible id.
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _not_json(constant: str) -> Any:
    # Python's json reads NaN and Infinity; other parsers (and RFC 8259) do not.
    raise ValueError(f"{constant} is not JSON")


# Built once: json.loads with any option builds a new decoder for every call, which
# made decoding 40% slower (3.6 against 2.6 µs per event, docs/model/results-history.md).
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def _as_ts(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def decode_event(
    key: bytes | None,
    value: bytes | None,
    kafka_ts_ms: int | None,
    validator: EventValidator | None = None,
    now_ms: int | None = None,
) -> Event | Erasure | Rejected:
    """Validate one message; never raises for bad input.

    >>> decode_event(b"u7", b'{"user_id": "u7", "item_id": 161, "event": "click",'
    ...              b' "ts": 1767225600000}', None)
    Event(user_id='u7', item_id='161', event='click', ts=1767225600000, category=None)
    >>> decode_event(b"u7", b'{"user_id": "u7", "event": "click"}', None)
    Rejected(reason='missing-field', detail='item_id')
    >>> decode_event(b"u8", b'{"user_id": "u7", "item_id": "i1", "event": "click"}',
    ...              1767225600000).reason
    'key-mismatch'
    >>> decode_event(b"u7", b'{"user_id": "u7", "erase": true}', None)
    Erasure(user_id='u7')
    >>> decode_event(b"u7", b'{"user_id": "u7", "erase": "yes"}', None)
    Rejected(reason='bad-erasure', detail='erase must be true')
    """
    v = validator or EventValidator()
    if not key:
        return Rejected("empty-key")
    if not value:
        return Rejected("empty-value")
    if len(value) > v.max_payload_bytes:
        return Rejected("oversized", f"{len(value)} bytes")
    # orjson (C) reads a valid message as Python's json does, with one exception: an
    # integer beyond 64 bits comes back as a float. What it refuses (invalid UTF-8,
    # lone surrogates, deep nesting), and a float where an id or time is read, goes to
    # the reference decoder, which gives the reason or the exact integer.
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        doc = None
    if doc is None or (
        type(doc) is dict
        and (
            type(doc.get("ts")) is float
            or type(doc.get("user_id")) is float
            or type(doc.get("item_id")) is float
            or type(doc.get("category")) is float
        )
    ):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected("not-utf8")
        try:
            doc = _DECODER.decode(text)
        except (ValueError, RecursionError):
            return Rejected("not-json")
    if not isinstance(doc, dict):
        return Rejected("not-object")
    if "erase" in doc:
        return _erasure(key, doc, v)
    for name in ("user_id", "item_id", "event"):
        if doc.get(name) is None:
            return Rejected("missing-field", name)
    user = _as_id(doc["user_id"])
    item = _as_id(doc["item_id"])
    kind = doc["event"]
    if user is None or item is None or not isinstance(kind, str):
        return Rejected("bad-type", "user_id/item_id/event")
    if kind not in _EVENT_SET:
        return Rejected("unknown-event", kind[:40])
    problem = _id_problem(user, v.max_id_bytes)
    if problem is not None:
        return Rejected("bad-id", f"user_id: {problem}")
    problem = _id_problem(item, v.max_id_bytes)
    if problem is not None:
        return Rejected("bad-id", f"item_id: {problem}")
    category = doc.get("category")
    if category is not None:
        if isinstance(category, int | float) and not isinstance(category, bool):
            category = str(category)
        if not isinstance(category, str):
            return Rejected("bad-type", "category")
        problem = _id_problem(category, v.max_id_bytes) if category else None
        if problem is not None:
            return Rejected("bad-id", f"category: {problem}")
    raw_ts = doc.get("ts")
    if raw_ts is None:
        ts = kafka_ts_ms if kafka_ts_ms and kafka_ts_ms > 0 else None
        if ts is None:
            ts = int(time.time() * 1000) if now_ms is None else now_ms
    else:
        ts = _as_ts(raw_ts)
        if ts is None:
            return Rejected("bad-type", "ts")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts < v.min_ts_ms or ts > now + v.max_future_ms:
        return Rejected("bad-timestamp", str(ts))
    # Byte for byte: state is partitioned by the key, lists are keyed by user_id.
    if key != user.encode("utf-8"):
        return Rejected("key-mismatch")
    return Event(user, item, kind, ts, category or None)


def _erasure(key: bytes, doc: dict[str, Any], v: EventValidator) -> Erasure | Rejected:
    if doc["erase"] is not True:
        return Rejected("bad-erasure", "erase must be true")
    if "item_id" in doc or "event" in doc:
        # Half an event, half an erasure: doing either could be the wrong one.
        return Rejected("bad-erasure", "an erasure has no item_id or event")
    if doc.get("user_id") is None:
        return Rejected("missing-field", "user_id")
    user = _as_id(doc["user_id"])
    if user is None:
        return Rejected("bad-type", "user_id")
    problem = _id_problem(user, v.max_id_bytes)
    if problem is not None:
        return Rejected("bad-id", f"user_id: {problem}")
    if key != user.encode("utf-8"):
        return Rejected("key-mismatch")
    return Erasure(user)


def encode_erasure(user_id: str) -> tuple[bytes, bytes]:
    """(key, value) of the request to erase ``user_id``, as a producer should send it."""
    doc = {"user_id": user_id, "erase": True}
    return user_id.encode("utf-8"), json.dumps(doc, separators=(",", ":")).encode("utf-8")


def encode_event(ev: Event) -> tuple[bytes, bytes]:
    """(key, value) of an event as a producer should send it."""
    doc: dict[str, Any] = {
        "user_id": ev.user_id,
        "item_id": ev.item_id,
        "event": ev.event,
        "ts": ev.ts,
    }
    if ev.category is not None:
        doc["category"] = ev.category
    return ev.user_id.encode("utf-8"), orjson.dumps(doc)


def encode_recommendation(rec: Recommendation, generated_at_ms: int) -> tuple[bytes, bytes]:
    """(key, value) of a list (``explanation`` only when the model gave one).

    >>> rec = Recommendation("u7", (("i1", 2.0),), "m-1", 1767225600000, trigger="refresh")
    >>> encode_recommendation(rec, 1767225600042)[1]
    b'{"user_id":"u7","items":[{"item_id":"i1","score":2.0}],"model_version":"m-1","generated_at":1767225600042,"event_ts":1767225600000,"trigger":"refresh"}'
    """
    doc: dict[str, Any] = {
        "user_id": rec.user_id,
        # JSON has no NaN or Infinity: 0 instead.
        "items": [
            {"item_id": item, "score": round(score, 6) if isfinite(score) else 0.0}
            for item, score in rec.items
        ],
        "model_version": rec.model_version,
        "generated_at": generated_at_ms,
        "event_ts": rec.event_ts,
        "trigger": rec.trigger,
    }
    if rec.explanation:
        doc["explanation"] = list(rec.explanation)
    # orjson: compact, UTF-8 (not \\u escapes), a few µs a list where json took ~25;
    # numpy scores too, as models may give them.
    return rec.user_id.encode("utf-8"), orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _is_item(entry: Any) -> bool:
    score = entry.get("score") if isinstance(entry, dict) else None
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("item_id"), str)
        and isinstance(score, int | float)
        and not isinstance(score, bool)
    )


def decode_recommendation(value: bytes) -> dict[str, Any]:
    """Parse a recommendation message value (raises ValueError when malformed)."""
    doc = json.loads(value)
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("items"), list)
        or not all(_is_item(entry) for entry in doc["items"])
    ):
        raise ValueError("not a recommendation message")
    why = doc.get("explanation", [])
    if not isinstance(why, list) or not all(isinstance(item, str) for item in why):
        raise ValueError("explanation is not a list of item ids")
    if doc.setdefault("trigger", TRIGGERS[0]) not in TRIGGERS:
        raise ValueError(f"trigger is not one of {', '.join(TRIGGERS)}")
    return doc
