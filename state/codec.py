"""Versioned binary codec for per-user state (no pickle).

Layout of version 3 (little endian)::

    b"U" u8:version
    u32[4] counts per event type        i64 last_ts (ms)
    u16 d, u8 w, (f16 | f32)[d] long-term vector, w = 2 (float16) or 4 (float32) bytes a value
    u16 n, i64[n] event times, u8[n] event types of the recent items (oldest first)
    strs recent items (n of them)       strs seen items
    strs purchased items                strs last published list

where ``strs`` is ``u32 count, u32 size`` and ``size`` bytes: the strings in
UTF-8 joined by NUL, so a list is read with one decode and one split instead of
a step per string (item ids never hold NUL: events refuse control characters).
A state with a NUL in one of its strings is written in version 2, which stored
each string as ``u16 length`` + UTF-8 bytes and list counts as ``u16 n``
(recent, last list) or ``u32 n`` (seen, purchased). Versions 1 and 2 are still
read; version 1 had no ``w``: the vector was always float32. A worker writes
version 3, so a release that reads only versions 1 and 2 cannot take over its
states (roll back to one that reads version 3).

The long-term vector is stored as float16 by default: half the bytes, and the
model works on it in float32 again as soon as it is read. Its relative rounding
error (at most 2^-11) cost nothing measurable on MovieLens-100K (FluRS Recall@10
0.2023 either way, ``bench/RESULTS.md``). Values beyond float16's range are
clipped to +-65504. Decoding refuses unknown versions and truncated or trailing
bytes with :class:`CodecError`.

>>> from core.types import UserState
>>> state = UserState(counts=[2, 0, 0, 1], last_ts=1767225600000,
...                   recent_items=["i1", "i2"], recent_ts=[1767225599000, 1767225600000],
...                   recent_types=[0, 3], seen=["i1", "i2"], purchased=["i2"])
>>> raw = encode_state(state)
>>> raw[:1], raw[1]  # magic byte, codec version
(b'U', 3)
>>> decode_state(raw) == state
True
>>> state.long_term = np.array([0.1, -2.0], dtype=np.float32)
>>> decode_state(encode_state(state)).long_term  # float16 on disk, float32 when read
array([ 0.09997559, -2.        ], dtype=float32)
>>> decode_state(encode_state(state, precision="float32")).long_term
array([ 0.1, -2. ], dtype=float32)
>>> decode_state(raw[:-1])
Traceback (most recent call last):
...
state.codec.CodecError: truncated user state
"""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np

from core.types import UserState

__all__ = ["CodecError", "encode_state", "decode_state", "CODEC_VERSION", "Precision"]

CODEC_VERSION = 3
_READS = (1, 2, 3)  # versions decode_state understands
_HEAD = struct.Struct("<cB4Iq")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_LIST = struct.Struct("<II")  # count, size of a NUL-joined string list (version 3)
_SEP = "\x00"
_MAX_STR = 0xFFFF
_F16_MAX = float(np.finfo(np.float16).max)
Precision = Literal["float16", "float32"]
_WIDTH: dict[str, int] = {"float16": 2, "float32": 4}
_DTYPE: dict[int, str] = {2: "<f2", 4: "<f4"}


class CodecError(ValueError):
    """Bytes that are not a user state this code can read."""


def _pack_strs(out: list[bytes], items: list[str], count_fmt: struct.Struct | None) -> None:
    if count_fmt is not None:
        out.append(count_fmt.pack(len(items)))
    for s in items:
        b = s.encode("utf-8")
        if len(b) > _MAX_STR:
            raise CodecError(f"string of {len(b)} bytes is too long for the state codec")
        out.append(_U16.pack(len(b)))
        out.append(b)


def encode_state(state: UserState, precision: Precision = "float16") -> bytes:
    """Serialise a :class:`UserState` to bytes (current codec version).

    ``precision`` is how the long-term vector is stored: ``float16`` (the
    default, see the module docstring) or ``float32`` (exact).
    """
    n = len(state.recent_items)
    if not (len(state.recent_ts) == len(state.recent_types) == n):
        raise CodecError("recent_items, recent_ts and recent_types differ in length")
    width = _WIDTH.get(precision)
    if width is None:
        raise CodecError(f"unknown vector precision {precision!r}")
    vec = np.asarray(state.long_term, dtype=np.float32).reshape(-1)
    if width == 2:
        vec = np.clip(vec, -_F16_MAX, _F16_MAX)  # NaN stays NaN
    vec = np.ascontiguousarray(vec, dtype=_DTYPE[width])
    body = [
        _U16.pack(vec.shape[0]),
        _U8.pack(width),
        vec.tobytes(),
        _U16.pack(n),
        np.asarray(state.recent_ts, dtype="<i8").tobytes(),
        np.asarray(state.recent_types, dtype="u1").tobytes(),
    ]
    lists = (state.recent_items, state.seen, state.purchased, state.last_list)
    joined = [_SEP.join(items) for items in lists]
    if any(j.count(_SEP) != max(len(items) - 1, 0) for j, items in zip(joined, lists, strict=True)):
        # A string holds NUL: the length-prefixed layout of version 2 keeps it.
        out = [_HEAD.pack(b"U", 2, *state.counts, state.last_ts), *body]
        for items, count_fmt in zip(lists, (None, _U32, _U32, _U16), strict=True):
            _pack_strs(out, items, count_fmt)
        return b"".join(out)
    out = [_HEAD.pack(b"U", CODEC_VERSION, *state.counts, state.last_ts), *body]
    for j, items in zip(joined, lists, strict=True):
        blob = j.encode("utf-8")
        out += [_LIST.pack(len(items), len(blob)), blob]
    return b"".join(out)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise CodecError("truncated user state")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))

    def strs(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            (length,) = self.unpack(_U16)
            try:
                out.append(str(self.take(length), "utf-8"))
            except UnicodeDecodeError:
                raise CodecError("user state holds invalid UTF-8") from None
        return out

    def joined(self) -> list[str]:
        """A version-3 string list: count, size, NUL-joined UTF-8."""
        count, size = self.unpack(_LIST)
        raw = self.take(size)
        if count == 0:
            if size:
                raise CodecError("corrupt user state: bytes in an empty list")
            return []
        try:
            out = str(raw, "utf-8").split(_SEP)
        except UnicodeDecodeError:
            raise CodecError("user state holds invalid UTF-8") from None
        if len(out) != count:
            raise CodecError("corrupt user state: a list does not hold its count")
        return out


def decode_state(data: bytes) -> UserState:
    """Read bytes written by :func:`encode_state`."""
    r = _Reader(data)
    magic, version, c0, c1, c2, c3, last_ts = r.unpack(_HEAD)
    if magic != b"U" or version not in _READS:
        raise CodecError(f"unknown user state format (magic {magic!r}, version {version})")
    (d,) = r.unpack(_U16)
    (width,) = r.unpack(_U8) if version >= 2 else (4,)
    dtype = _DTYPE.get(width)
    if dtype is None:
        raise CodecError(f"unknown vector width {width}")
    vec = np.frombuffer(r.take(width * d), dtype=dtype).astype(np.float32)
    (n,) = r.unpack(_U16)
    ts = np.frombuffer(r.take(8 * n), dtype="<i8").tolist()
    types = list(r.take(n))
    if version >= 3:
        recent, seen, purchased, last_list = r.joined(), r.joined(), r.joined(), r.joined()
        if len(recent) != n:
            raise CodecError("corrupt user state: recent items and their times differ")
    else:
        recent = r.strs(n)
        seen = r.strs(r.unpack(_U32)[0])
        purchased = r.strs(r.unpack(_U32)[0])
        last_list = r.strs(r.unpack(_U16)[0])
    if r.pos != len(r.buf):
        raise CodecError("trailing bytes after user state")
    return UserState(
        counts=[c0, c1, c2, c3],
        last_ts=last_ts,
        long_term=vec,
        recent_items=recent,
        recent_ts=ts,
        recent_types=types,
        seen=seen,
        purchased=purchased,
        last_list=last_list,
    )
