"""Event validation: each bad input kind gets its own reason; good input decodes exactly."""

from __future__ import annotations

import json

import pytest

from core.types import Erasure, Event, Recommendation
from engine.events import (
    NEWCOMERS_ID,
    PROCESSING_ERROR,
    REASONS,
    EventValidator,
    Rejected,
    decode_event,
    decode_recommendation,
    encode_erasure,
    encode_event,
    encode_recommendation,
)
from stream.cli.tail import format_list

NOW = 1_790_000_000_000
KAFKA_TS = NOW - 5_000


def _decode(key: bytes | None, value: object, **kw: object) -> Event | Erasure | Rejected:
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
    ("not-json", b"u1", b'{"user_id": "u1", "item_id": "i9", "event": "cart", "ts": NaN}'),
    ("not-json", b"u1", b'{"user_id": "u1", "item_id": "i9", "event": "cart", "ts": -Infinity}'),
    ("not-json", b"u1", b"\xef\xbb\xbf" + json.dumps(GOOD).encode()),
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
    ("bad-type", b"u1", {**GOOD, "item_id": 1.0}),
    ("bad-id", b"u1", {**GOOD, "category": "c" * 10_000}),
    ("bad-id", b"u1", b'{"user_id": "u1", "item_id": "\\ud800", "event": "click"}'),
    ("bad-id", b"u1", {**GOOD, "item_id": "x" * 600}),
    ("bad-id", b"u1", {**GOOD, "item_id": ""}),
    ("unknown-event", b"u1", {**GOOD, "event": "hover"}),
    ("bad-timestamp", b"u1", {**GOOD, "ts": 1_700_000_000}),  # seconds, not ms
    ("bad-timestamp", b"u1", {**GOOD, "ts": NOW + 10 * 24 * 3600 * 1000}),
    ("bad-timestamp", b"u1", {**GOOD, "ts": -1}),
    ("key-mismatch", b"u2", GOOD),
    ("key-mismatch", b"\xff", GOOD),
    ("key-mismatch", b"u1 ", GOOD),
    ("key-mismatch", b"\xef\xbb\xbfu1", GOOD),
    ("bad-erasure", b"u1", {"user_id": "u1", "erase": False}),
    ("bad-erasure", b"u1", {"user_id": "u1", "erase": 1}),
    ("bad-erasure", b"u1", {"user_id": "u1", "erase": None}),
    ("bad-erasure", b"u1", {**GOOD, "erase": True}),
    ("bad-erasure", b"u1", {"user_id": "u1", "event": "click", "erase": True}),
    ("missing-field", b"u1", {"erase": True}),
    ("bad-type", b"u1", {"user_id": ["u1"], "erase": True}),
    ("bad-id", b"u1 ", {"user_id": "u1 ", "erase": True}),
    ("key-mismatch", b"u2", {"user_id": "u1", "erase": True}),
]

# (field, value, the rule in the detail): ids downstream systems cannot trust.
BAD_IDS = [
    ("user_id", " ", "blank"),
    ("user_id", "\u3000", "control or invisible character"),  # ideographic space
    ("item_id", "\x00", "control or invisible character"),
    ("item_id", "a\nb", "control or invisible character"),
    ("item_id", "a\tb", "control or invisible character"),
    ("item_id", "i\x7f", "control or invisible character"),
    ("item_id", "i\x85", "control or invisible character"),  # C1 next line
    ("item_id", "\u200bi1", "control or invisible character"),  # zero-width space
    ("item_id", "\ufeffi1", "control or invisible character"),  # byte-order mark
    ("item_id", "\u202ei1", "control or invisible character"),  # right-to-left override
    ("item_id", "i\u2028", "control or invisible character"),  # line separator
    ("item_id", "i\u00a01", "control or invisible character"),  # no-break space
    ("item_id", "i\ue000", "control or invisible character"),  # private use
    ("item_id", " i1", "leading or trailing space"),
    ("item_id", "i1 ", "leading or trailing space"),
    ("item_id", "é" * 129, "longer than 256 bytes"),  # 129 characters, 258 bytes
    ("item_id", "", "empty"),
    ("category", "  ", "blank"),
    ("category", "c\r\n", "control or invisible character"),
]


@pytest.mark.parametrize(("field", "value", "rule"), BAD_IDS)
def test_ids_that_break_a_rule_are_rejected_with_field_and_rule(field, value, rule):
    doc = {**GOOD, field: value}
    key = value.encode() if field == "user_id" else b"u1"
    assert _decode(key, doc) == Rejected("bad-id", f"{field}: {rule}")


@pytest.mark.parametrize(
    "good_id",
    [
        "u1",
        "a b",
        "usuário",
        "\u4e00\u4e8c",
        "\U0001f642",
        "x" * 256,
        "é" * 128,
        "-1",
        "u-1_a.b:c/d@e",
        '"quoted"',
        "back\\slash",
    ],
)
def test_ids_within_the_rules_are_accepted_unchanged(good_id):
    doc = {**GOOD, "user_id": good_id, "item_id": good_id, "category": good_id}
    got = _decode(good_id.encode(), doc)
    assert got == Event(good_id, good_id, "cart", NOW - 1000, good_id)


def test_the_id_byte_limit_is_a_setting():
    doc = {**GOOD, "item_id": "i" * 20}
    raw = json.dumps(doc).encode()
    assert isinstance(decode_event(b"u1", raw, None, EventValidator(max_id_bytes=20), NOW), Event)
    got = decode_event(b"u1", raw, None, EventValidator(max_id_bytes=19), NOW)
    assert got == Rejected("bad-id", "item_id: longer than 19 bytes")
    assert EventValidator().max_id_bytes == 256


def test_a_numeric_id_follows_the_byte_limit_too():
    doc = {**GOOD, "user_id": 10**300, "item_id": 10**30}
    got = _decode(str(10**300).encode(), doc)
    assert got == Rejected("bad-id", "user_id: longer than 256 bytes")
    assert _decode(b"7", {**doc, "user_id": 7}) == Event("7", str(10**30), "cart", NOW - 1000)


def test_an_empty_category_still_means_none():
    assert _decode(b"u1", {**GOOD, "category": ""}) == Event("u1", "i9", "cart", NOW - 1000)


def test_user_id_is_checked_before_the_key():
    # A bad user id sent with itself as key is a bad id, not a key mismatch.
    assert _decode(b"u1\n", {**GOOD, "user_id": "u1\n"}) == Rejected(
        "bad-id", "user_id: control or invisible character"
    )


@pytest.mark.parametrize(("reason", "key", "value"), BAD_CASES)
def test_bad_input_is_rejected_with_its_reason(reason, key, value):
    got = _decode(key, value)
    assert isinstance(got, Rejected)
    assert got.reason == reason
    assert got.reason in REASONS


def test_every_reason_code_is_exercised():
    assert {case[0] for case in BAD_CASES} == set(REASONS) - {PROCESSING_ERROR}


def test_erasure_requests_decode_and_round_trip():
    assert _decode(b"u1", {"user_id": "u1", "erase": True}) == Erasure("u1")
    # Numeric ids as for events; other fields (a timestamp, a reason) are ignored.
    assert _decode(b"42", {"user_id": 42, "erase": True, "ts": NOW, "why": "asked"}) == Erasure(
        "42"
    )
    key, value = encode_erasure("é 7")
    assert key == "é 7".encode() and _decode(key, value) == Erasure("é 7")
    assert json.loads(value) == {"user_id": "é 7", "erase": True}
    detail = _decode(b"u1", {**GOOD, "erase": True}).detail
    assert detail == "an erasure has no item_id or event"


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
        "trigger": "events",
    }
    assert b"NaN" not in value


def test_recommendation_trigger_travels_and_defaults_to_events():
    rec = Recommendation("u1", (("a", 2.5),), "m-1", NOW - 3, trigger="refresh")
    assert decode_recommendation(encode_recommendation(rec, NOW)[1])["trigger"] == "refresh"
    # Lists written before the field existed were all caused by events.
    assert decode_recommendation(b'{"items":[]}')["trigger"] == "events"
    with pytest.raises(ValueError):
        decode_recommendation(b'{"items":[],"trigger":"cron"}')


def test_the_newcomer_key_is_never_a_valid_user_id():
    key = NEWCOMERS_ID.encode()
    value = json.dumps({"user_id": NEWCOMERS_ID, "item_id": "i1", "event": "click"}).encode()
    assert decode_event(key, value, NOW, now_ms=NOW) == Rejected(
        "bad-id", "user_id: control or invisible character"
    )


def test_recommendation_carries_its_explanation_when_there_is_one():
    rec = Recommendation("u1", (("a", 2.5),), "m-1", NOW - 3, ("x", "y"))
    doc = decode_recommendation(encode_recommendation(rec, NOW)[1])
    assert doc == {
        "user_id": "u1",
        "items": [{"item_id": "a", "score": 2.5}],
        "model_version": "m-1",
        "generated_at": NOW,
        "event_ts": NOW - 3,
        "trigger": "events",
        "explanation": ["x", "y"],
    }
    assert format_list(doc).endswith("[m-1] a:2.5 (because of x, y)")
    with pytest.raises(ValueError):
        decode_recommendation(b'{"items":[],"explanation":[1]}')


def test_tail_names_the_newcomer_list_and_marks_refreshed_lists():
    rec = Recommendation(NEWCOMERS_ID, (("a", 2.5),), "m-1", 0, trigger="refresh")
    line = format_list(decode_recommendation(encode_recommendation(rec, NOW)[1]))
    assert " (newcomers) [m-1] a:2.5 [refresh]" in line and "\x00" not in line
