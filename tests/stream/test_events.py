"""Event validation: each bad input kind gets its own reason; good input decodes exactly."""

from __future__ import annotations

import json

import pytest

from core.types import Event, Recommendation
from stream.events import (
    PROCESSING_ERROR,
    REASONS,
    EventValidator,
    Rejected,
    decode_event,
    decode_recommendation,
    encode_event,
    encode_recommendation,
)
from stream.tail import format_list

NOW = 1_790_000_000_000
KAFKA_TS = NOW - 5_000


def _decode(key: bytes | None, value: object, **kw: object) -> Event | Rejected:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return decode_event(
        key, raw, KAFKA_TS, EventValidator(max_payload_bytes=20_000), now_ms=NOW, **kw
    )


GOOD = {"user_id": "u1", "item_id": "i9", "event": "cart", "ts": NOW - 1000}

BAD_CASES = [
    ("empty-key", None, GOOD),
    ("empty-key", b"", GOOD),
    ("empty-value", b"u1", None),
    ("empty-value", b"u1", b""),
    ("oversized", b"u1", {**GOOD, "pad": "x" * 20_000}),
    ("not-utf8", b"u1", b'\xff\xfe{"user_id": 1}'),
    ("not-json", b"u1", b"{user_id: u1"),
    ("not-json", b"u1", b"[" * 200),
    ("not-object", b"u1", [1, 2]),
    ("not-object", b"u1", "u1"),
    ("missing-field", b"u1", {"user_id": "u1", "event": "click"}),
    ("missing-field", b"u1", {"user_id": "u1", "item_id": "i", "event": None}),
    ("bad-type", b"u1", {**GOOD, "item_id": {"id": 1}}),
    ("bad-type", b"u1", {**GOOD, "user_id": True}),
    ("bad-type", b"u1", {**GOOD, "event": 3}),
    ("bad-type", b"u1", {**GOOD, "ts": "yesterday"}),
    ("bad-type", b"u1", {**GOOD, "ts": 1.5e12 + 0.5}),
    ("bad-type", b"u1", {**GOOD, "category": ["a"]}),
    ("bad-type", b"u1", {**GOOD, "category": "c" * 10_000}),
    ("bad-type", b"u1", b'{"user_id": "u1", "item_id": "\\ud800", "event": "click"}'),
    ("bad-type", b"u1", {**GOOD, "item_id": "x" * 600}),
    ("bad-type", b"u1", {**GOOD, "item_id": ""}),
    ("unknown-event", b"u1", {**GOOD, "event": "hover"}),
    ("bad-timestamp", b"u1", {**GOOD, "ts": 1_700_000_000}),  # seconds, not ms
    ("bad-timestamp", b"u1", {**GOOD, "ts": NOW + 10 * 24 * 3600 * 1000}),
    ("bad-timestamp", b"u1", {**GOOD, "ts": -1}),
    ("key-mismatch", b"u2", GOOD),
    ("key-mismatch", b"\xff", GOOD),
]


@pytest.mark.parametrize(("reason", "key", "value"), BAD_CASES)
def test_bad_input_is_rejected_with_its_reason(reason, key, value):
    got = _decode(key, value)
    assert isinstance(got, Rejected)
    assert got.reason == reason
    assert got.reason in REASONS


def test_every_reason_code_is_exercised():
    assert {case[0] for case in BAD_CASES} == set(REASONS) - {PROCESSING_ERROR}


def test_good_event_decodes_exactly():
    assert _decode(b"u1", {**GOOD, "category": "shoes"}) == Event(
        "u1", "i9", "cart", NOW - 1000, "shoes"
    )


def test_numeric_ids_and_category_become_strings():
    got = _decode(b"42", {"user_id": 42, "item_id": 7, "event": "click", "ts": NOW, "category": 3})
    assert got == Event("42", "7", "click", NOW, "3")


def test_missing_ts_uses_the_kafka_timestamp():
    got = _decode(b"u1", {"user_id": "u1", "item_id": "i", "event": "purchase"})
    assert isinstance(got, Event) and got.ts == KAFKA_TS


def test_integral_float_ts_is_accepted():
    got = _decode(b"u1", {**GOOD, "ts": float(NOW)})
    assert isinstance(got, Event) and got.ts == NOW


def test_event_round_trip_through_the_wire_format():
    ev = Event("u é", "i1", "favourite", NOW, "c")
    key, value = encode_event(ev)
    assert decode_event(key, value, None, now_ms=NOW) == ev


def test_recommendation_wire_format():
    rec = Recommendation("u1", (("a", 2.5), ("b", float("nan"))), "m-1", NOW - 3)
    key, value = encode_recommendation(rec, NOW)
    doc = decode_recommendation(value)
    assert key == b"u1"
    assert doc == {
        "user_id": "u1",
        "items": [{"item_id": "a", "score": 2.5}, {"item_id": "b", "score": 0.0}],
        "model_version": "m-1",
        "generated_at": NOW,
        "event_ts": NOW - 3,
    }
    assert b"NaN" not in value


def test_recommendation_carries_its_explanation_when_there_is_one():
    rec = Recommendation("u1", (("a", 2.5),), "m-1", NOW - 3, ("x", "y"))
    doc = decode_recommendation(encode_recommendation(rec, NOW)[1])
    assert doc == {
        "user_id": "u1",
        "items": [{"item_id": "a", "score": 2.5}],
        "model_version": "m-1",
        "generated_at": NOW,
        "event_ts": NOW - 3,
        "explanation": ["x", "y"],
    }
    assert format_list(doc).endswith("[m-1] a:2.5 (because of x, y)")
    with pytest.raises(ValueError):
        decode_recommendation(b'{"items":[],"explanation":[1]}')


def _random_value(rng, depth: int = 0):  # noqa: ANN001, ANN202
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 7, 2**63, -(2**63) - 1, NOW, NOW // 1000, 10**40])
    if kind == 3:
        return rng.choice([0.5, 1e308, float(NOW), -0.0, 1.7e12])
    if kind == 4:
        return "".join(rng.choice('ab\u00e9\u4e00\ud800\x00"\\') for _ in range(rng.randrange(6)))
    if kind == 5:
        return rng.choice(list(REASONS) + ["click", "purchase", "u1", ""])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {
        rng.choice(["user_id", "item_id", "event", "ts", "category", "x"]): _random_value(
            rng, depth + 1
        )
        for _ in range(rng.randrange(6))
    }


def test_decoding_never_raises_and_accepted_events_are_storable():
    """Random documents, keys and byte mutations: a reason or a clean event, nothing else."""
    import random

    rng = random.Random(1234)
    accepted = 0
    for _ in range(20_000):
        doc = _random_value(rng)
        if isinstance(doc, dict) and rng.random() < 0.5:
            doc.update(
                {
                    "user_id": rng.choice(["u1", 1, "u\u00e9"]),
                    "item_id": "i",
                    "event": rng.choice(["click", "cart"]),
                }
            )
        raw = json.dumps(doc).encode()
        if rng.random() < 0.2 and raw:
            pos = rng.randrange(len(raw))
            raw = raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1 :]
        key = rng.choice([b"u1", b"1", "u\u00e9".encode(), b"", None, b"\xff"])
        got = decode_event(key, raw, rng.choice([None, 0, KAFKA_TS]), now_ms=NOW)
        assert isinstance(got, Event | Rejected)
        if isinstance(got, Rejected):
            assert got.reason in REASONS
            continue
        accepted += 1
        for text in (got.user_id, got.item_id, got.category or "x"):
            text.encode("utf-8")
        assert got.event in {"click", "favourite", "cart", "purchase"}
        assert 631_152_000_000 <= got.ts <= NOW + 24 * 3600 * 1000
        assert key is not None and key.decode() == got.user_id
    assert accepted > 100
