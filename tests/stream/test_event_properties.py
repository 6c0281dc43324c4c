"""Property-based tests of the input boundary: whatever arrives, decode_event answers cleanly.

For arbitrary bytes, arbitrary JSON documents and mutations of valid events
and erasure requests, :func:`decode_event` returns an event, an erasure or a
rejection with a documented reason and never raises; an accepted event or
erasure satisfies every documented rule; a valid event survives encode/decode
unchanged. The number of cases per test and the
seed come from the Hypothesis profile in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import string

from hypothesis import event, given
from hypothesis import strategies as st

from core.types import EVENT_TYPES, Erasure, Event
from engine.events import (
    MAX_FUTURE_MS,
    MIN_TS_MS,
    REASONS,
    EventValidator,
    Rejected,
    decode_event,
    encode_erasure,
    encode_event,
)
from tests.stream.hostile import HOSTILE_CHARS, id_rule_broken

NOW = 1_790_000_000_000
KAFKA_TS = NOW - 5_000
VALIDATOR = EventValidator(max_payload_bytes=20_000)
FIELDS = ("user_id", "item_id", "event", "ts", "category", "erase")


def _decode(
    key: bytes | None, value: bytes | None, kafka_ts: int | None = KAFKA_TS
) -> Event | Erasure | Rejected:
    return decode_event(key, value, kafka_ts, VALIDATOR, now_ms=NOW)


def assert_documented(got: Event | Erasure | Rejected, key: bytes | None) -> None:
    """A rejection has a documented reason; an event or erasure keeps every documented rule."""
    # --hypothesis-show-statistics then shows how the cases spread over the outcomes.
    event(got.reason if isinstance(got, Rejected) else type(got).__name__)
    if isinstance(got, Rejected):
        assert got.reason in REASONS, got
        assert isinstance(got.detail, str)
        return
    if isinstance(got, Erasure):
        assert isinstance(got.user_id, str) and id_rule_broken(got.user_id) is None, got
        assert key == got.user_id.encode("utf-8")
        return
    assert isinstance(got, Event)
    for name in ("user_id", "item_id"):
        text = getattr(got, name)
        assert isinstance(text, str) and id_rule_broken(text) is None, (name, text)
    assert got.category is None or id_rule_broken(got.category) is None, got.category
    assert got.event in EVENT_TYPES
    assert isinstance(got.ts, int) and not isinstance(got.ts, bool)
    assert MIN_TS_MS <= got.ts <= NOW + MAX_FUTURE_MS
    assert key == got.user_id.encode("utf-8")


# --- strategies -------------------------------------------------------------------

_every_char = st.characters(exclude_categories=())  # surrogates and unassigned included
_any_text = st.one_of(
    st.text(_every_char, max_size=12),
    st.text(st.sampled_from(HOSTILE_CHARS), max_size=8),
    # Around the 256-byte limit, with 1-, 2- and 4-byte characters.
    st.builds(
        lambda ch, n: ch * n, st.sampled_from(["x", "é", "\U0001f642"]), st.integers(60, 260)
    ),
)
_good_id = st.text(
    st.characters(categories=["L", "M", "N", "P", "S"]) | st.sampled_from(string.printable[:62]),
    min_size=1,
    max_size=20,
).filter(lambda t: id_rule_broken(t) is None)
_ts = st.integers(MIN_TS_MS, NOW + MAX_FUTURE_MS)
_valid_event = st.builds(
    Event, _good_id, _good_id, st.sampled_from(EVENT_TYPES), _ts, st.none() | _good_id
)

_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _any_text,
    st.sampled_from(list(EVENT_TYPES) + list(FIELDS)),
)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | _any_text, inner, max_size=6)
    ),
    max_leaves=12,
)
_key = st.binary(min_size=1, max_size=12) | st.sampled_from(
    [None, b"", b"u1", b"1", b" ", b"u1 ", b"\x00", b"\xef\xbb\xbfu1"]
)
# What a producer puts in an id field: mostly strings and numbers, good or hostile.
_id_like = st.one_of(_good_id, _any_text, st.integers(), _json)
# Bytes from JSON's own alphabet, so that the parser sees near-misses, not only noise.
_json_like_bytes = st.text('{}[]":, .-+eE0123456789\\/tfnrulasidk_\u00e9', max_size=60).map(
    str.encode
)
_kafka_ts = st.none() | st.sampled_from([0, -1, KAFKA_TS]) | st.integers()


def _dumps(doc: object, ascii_only: bool) -> bytes:
    # ensure_ascii=False writes lone surrogates raw: CESU bytes, not UTF-8, as some producers do.
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --- properties -------------------------------------------------------------------


@given(key=_key, value=st.binary(max_size=300) | _json_like_bytes, kafka_ts=_kafka_ts)
def test_arbitrary_bytes_never_raise(key, value, kafka_ts):
    assert_documented(_decode(key, value, kafka_ts), key)


@given(doc=_json, key=_key, ascii_only=st.booleans(), kafka_ts=_kafka_ts)
def test_arbitrary_json_documents_never_raise(doc, key, ascii_only, kafka_ts):
    assert_documented(_decode(key, _dumps(doc, ascii_only), kafka_ts), key)


@given(
    doc=st.fixed_dictionaries(
        {"user_id": _id_like, "item_id": _id_like, "event": st.sampled_from(EVENT_TYPES) | _json},
        optional={"ts": _ts | _json, "category": _id_like},
    ),
    other_key=st.none() | _key,
    ascii_only=st.booleans(),
)
def test_event_shaped_documents_never_raise(doc, other_key, ascii_only):
    # Event-shaped so the checks past "missing-field" run; the user id as key unless
    # another key is drawn.
    key = other_key
    if key is None and isinstance(doc["user_id"], str | int):
        key = str(doc["user_id"]).encode("utf-8", "surrogatepass")
    assert_documented(_decode(key, _dumps(doc, ascii_only)), key)


_mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), _id_like),
    st.tuples(st.just("drop"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("duplicate"), st.sampled_from(FIELDS), _json),
    st.tuples(st.just("byte"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.none()),
    st.tuples(
        st.just("prefix"), st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b" ", b"["]), st.none()
    ),
    st.tuples(st.just("key"), st.none(), _key),
)


def _mutate(key: bytes | None, value: bytes, mutation: tuple) -> tuple[bytes | None, bytes]:
    op, where, what = mutation
    if op in ("set", "drop"):  # field-level, while the value is still a JSON object
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            return key, value
        if not isinstance(doc, dict):
            return key, value
        if op == "drop":
            doc.pop(where, None)
        else:
            doc[where] = what
            if where == "user_id" and isinstance(what, str):  # keep the key in step
                key = what.encode("utf-8", "surrogatepass")
        return key, _dumps(doc, True)
    if op == "duplicate":  # the same field twice: parsers disagree on which one counts
        return key, b'{"%s":%s,%s' % (where.encode(), _dumps(what, True), value[1:])
    if op == "byte" and value:
        pos = where % len(value)
        return key, value[:pos] + bytes([what]) + value[pos + 1 :]
    if op == "insert":
        pos = where % (len(value) + 1)
        return key, value[:pos] + what + value[pos:]
    if op == "truncate" and value:
        return key, value[: where % len(value)]
    if op == "prefix":
        return key, where + value
    if op == "key":
        return what, value
    return key, value


@given(ev=_valid_event, mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_mutated_valid_events_never_raise(ev, mutations):
    key, value = encode_event(ev)
    for mutation in mutations:
        key, value = _mutate(key, value, mutation)
    assert_documented(_decode(key, value), key)


@given(user=_good_id | st.integers(), mutations=st.lists(_mutation, max_size=3))
def test_erasure_requests_and_their_mutations_never_raise(user, mutations):
    key, value = encode_erasure(str(user))
    if not mutations:
        assert _decode(key, value) == Erasure(str(user))
    for mutation in mutations:
        key, value = _mutate(key, value, mutation)
    assert_documented(_decode(key, value), key)


@given(ev=_valid_event)
def test_valid_events_survive_encode_and_decode(ev):
    key, value = encode_event(ev)
    assert _decode(key, value) == ev


@given(field=st.sampled_from(["user_id", "item_id", "category"]), text=_any_text)
def test_an_id_is_accepted_exactly_when_it_keeps_the_rules(field, text):
    doc = {"user_id": "u1", "item_id": "i1", "event": "click", "ts": NOW, field: text}
    # The user id's own bytes as key (an empty key is "empty-key", checked first).
    key = (text.encode("utf-8", "surrogatepass") if field == "user_id" else b"") or b"u1"
    got = _decode(key, _dumps(doc, True))
    broken = id_rule_broken(text)
    if field == "category" and text == "":
        broken = None  # an empty category means no category
    if broken is None:
        assert isinstance(got, Event), (text, got)
        assert getattr(got, field) == (text or None)
    else:
        assert got == Rejected("bad-id", got.detail), (text, broken, got)
        assert got.detail.startswith(f"{field}: ")


@given(limit=st.integers(1, 600), text=_any_text)
def test_the_byte_limit_follows_the_setting(limit, text):
    doc = {"user_id": "u", "item_id": text, "event": "click", "ts": NOW}
    got = decode_event(b"u", _dumps(doc, True), None, EventValidator(max_id_bytes=limit), NOW)
    assert isinstance(got, Event) == (id_rule_broken(text, max_bytes=limit) is None)
