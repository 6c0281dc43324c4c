"""The user-state codec: exact round trips; truncated or foreign bytes are refused."""

from __future__ import annotations

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


def test_round_trip_is_exact() -> None:
    st = _state()
    back = decode_state(encode_state(st))
    assert back == st
    assert back.long_term.dtype == np.float32
    assert decode_state(encode_state(UserState())) == UserState()


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


def test_inconsistent_state_cannot_be_encoded() -> None:
    st = _state()
    st.recent_ts.pop()
    with pytest.raises(CodecError):
        encode_state(st)
