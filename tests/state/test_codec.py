"""The user-state codec: exact round trips (float16 vectors within their rounding), states
written by versions 1, 2 and 3 still read; truncated, corrupt or foreign bytes are refused."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from core.types import UserState
from state.codec import CODEC_VERSION, CodecError, decode_state, encode_state


def _state() -> UserState:
    return UserState(
        counts=[3, 1, 2, 1],
        last_ts=1_767_225_600_123,
        long_term=np.arange(8, dtype=np.float32) / 7,
        recent_items=["a", "bé", "ç"],
        recent_ts=[1, 2, 3],
        recent_types=[0, 3, 2],
        seen=["a", "bé", "ç", "d"],
        purchased=["bé"],
        last_list=["x", "y"],
    )


def test_round_trip_is_exact_with_float32_vectors() -> None:
    st = _state()
    back = decode_state(encode_state(st, precision="float32"))
    assert back == st
    assert back.long_term.dtype == np.float32
    assert decode_state(encode_state(UserState())) == UserState()


def test_float16_vectors_are_half_the_bytes_and_round_within_float16_precision() -> None:
    st = _state()
    exact, compact = encode_state(st, precision="float32"), encode_state(st)
    assert len(exact) - len(compact) == 2 * len(st.long_term)
    back = decode_state(compact)
    assert back.long_term.dtype == np.float32
    np.testing.assert_allclose(back.long_term, st.long_term, rtol=2**-11, atol=0)
    assert not np.array_equal(back.long_term, st.long_term)  # it is float16 on disk
    back.long_term = st.long_term
    assert back == st  # everything else is exact
    # Encoding what was read gives the same bytes: no drift from re-encoding alone.
    assert encode_state(decode_state(compact)) == compact


def test_float16_clips_what_it_cannot_hold() -> None:
    st = UserState(long_term=np.array([1e6, -1e6, np.nan], dtype=np.float32))
    back = decode_state(encode_state(st)).long_term
    assert back[0] == 65504.0 and back[1] == -65504.0 and np.isnan(back[2])


# Written by codec version 1 (float32 vector, no width byte); must stay readable.
_V1 = bytes.fromhex(
    "5501030000000100000002000000010000007ba8da769b01000004000000003f0000a0bf00004040"
    "cdcccc3d020000a8da769b0100007ba8da769b0100000003010061030062c3a902000000010061"
    "030062c3a901000000030062c3a90100010078"
)


def test_states_written_by_version_1_are_read() -> None:
    st = decode_state(_V1)
    assert st == UserState(
        counts=[3, 1, 2, 1],
        last_ts=1_767_225_600_123,
        long_term=np.array([0.5, -1.25, 3.0, 0.1], dtype=np.float32),
        recent_items=["a", "bé"],
        recent_ts=[1_767_225_600_000, 1_767_225_600_123],
        recent_types=[0, 3],
        seen=["a", "bé"],
        purchased=["bé"],
        last_list=["x"],
    )
    for cut in range(len(_V1)):
        with pytest.raises(CodecError):
            decode_state(_V1[:cut])
    # Written again, a version-1 state becomes version 4.
    assert encode_state(st)[1] == CODEC_VERSION == 4


# The same state written by codec version 2 (float16 vector, u16-length-prefixed strings).
_V2 = bytes.fromhex(
    "5502030000000100000002000000010000007ba8da769b010000040002003800bd0042662e020000"
    "a8da769b0100007ba8da769b0100000003010061030062c3a902000000010061030062c3a9010000"
    "00030062c3a90100010078"
)


def test_states_written_by_version_2_are_read() -> None:
    st, v1 = decode_state(_V2), decode_state(_V1)
    np.testing.assert_allclose(st.long_term, v1.long_term, rtol=2**-11)  # float16 there
    st.long_term = v1.long_term
    assert st == v1
    for cut in range(len(_V2)):
        with pytest.raises(CodecError):
            decode_state(_V2[:cut])
    assert decode_state(encode_state(st, precision="float32")) == st


# The same state written by codec version 3 (float16 vector, NUL-joined string lists).
_V3 = bytes.fromhex(
    "5503030000000100000002000000010000007ba8da769b010000040002003800bd0042662e020000"
    "a8da769b0100007ba8da769b01000000030200000005000000610062c3a90200000005000000610062"
    "c3a9010000000300000062c3a9010000000100000078"
)


def test_states_written_by_version_3_are_read() -> None:
    assert decode_state(_V3) == decode_state(_V2)
    for cut in range(len(_V3)):
        with pytest.raises(CodecError):
            decode_state(_V3[:cut])


def test_a_version_3_list_that_does_not_hold_its_count_is_refused() -> None:
    data = bytearray(_V3)
    # The seen list's count: after the header, vector, recent times and types and the
    # recent list (count, size, bytes).
    at = 1 + 1 + 4 * 4 + 8 + 2 + 1 + 4 * 2 + 2 + 2 * 8 + 2
    at += 8 + len("a\x00bé".encode())
    assert int.from_bytes(data[at : at + 4], "little") == 2
    data[at] = 3
    with pytest.raises(CodecError, match="count"):
        decode_state(bytes(data))
    data[at] = 0
    with pytest.raises(CodecError, match="empty"):
        decode_state(bytes(data))


def test_empty_strings_empty_lists_and_nul_round_trip() -> None:
    st = _state()
    st.seen, st.purchased, st.last_list = ["", "a", ""], [], [""]
    raw = encode_state(st, precision="float32")
    assert raw[1] == 4
    assert decode_state(raw) == st
    st.seen = ["a\x00b", "c"]  # a NUL: stored as an array, not joined
    assert decode_state(encode_state(st)).seen == ["a\x00b", "c"]
    for items in ([], [""], ["", ""], ["a"], ["a", "", "b"], ["\x00"], ["x"] * 2000):
        st.seen = items
        assert decode_state(encode_state(st)).seen == items


def _v4(fields: list) -> bytes:
    return b"U\x04" + msgpack.packb(fields, use_bin_type=True)


def test_version_4_fields_of_the_wrong_type_or_length_are_refused() -> None:
    good = [[1, 0, 0, 0], 5, 2, b"", [5], b"\x00", ["i1"], ["i1"], [], []]
    assert decode_state(_v4(good)).recent_items == ["i1"]
    for at, bad in (
        (0, [1, 0, 0]),  # three counts
        (1, "5"),  # last_ts not a number
        (2, 3),  # no such vector width
        (3, b"\x00"),  # a vector of one byte at two bytes a value
        (4, [5, 6]),  # two times for one recent item
        (6, 7),  # neither a joined str nor a list of str
        (7, ["i1", 2]),  # a list holding a number
        (6, "i1\x00i2"),  # two recent items for one time
    ):
        fields = list(good)
        fields[at] = bad
        with pytest.raises(CodecError):
            decode_state(_v4(fields))
    with pytest.raises(CodecError):
        decode_state(_v4(good[:-1]))
    with pytest.raises(CodecError):
        decode_state(b"U\x04" + b"\xc1")  # a byte MessagePack never uses


def test_truncated_bytes_are_refused_at_every_length() -> None:
    data = encode_state(_state())
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode_state(data[:cut])


def test_unknown_version_magic_and_trailing_bytes_are_refused() -> None:
    data = bytearray(encode_state(_state()))
    data[1] = CODEC_VERSION + 1
    with pytest.raises(CodecError, match="version"):
        decode_state(bytes(data))
    with pytest.raises(CodecError):
        decode_state(b"X" + encode_state(_state())[1:])
    with pytest.raises(CodecError, match="trailing"):
        decode_state(encode_state(_state()) + b"\0")
    data = bytearray(_V3)
    data[_WIDTH_AT] = 3
    with pytest.raises(CodecError, match="width"):
        decode_state(bytes(data))
    with pytest.raises(CodecError, match="precision"):
        encode_state(_state(), precision="int8")  # type: ignore[arg-type]


_WIDTH_AT = 1 + 1 + 4 * 4 + 8 + 2  # magic, version, counts, last_ts, d


def test_inconsistent_state_cannot_be_encoded() -> None:
    st = _state()
    st.recent_ts.pop()
    with pytest.raises(CodecError):
        encode_state(st)
