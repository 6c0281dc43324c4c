"""Versioned binary codec for per-user state (no pickle).

Version 4 (what is written): ``b"U" u8:version`` then one MessagePack array::

    [counts (4 ints), last_ts (ms), w, vector (bin: d values of w bytes, little endian),
     recent times (ints), recent types (bin, one byte each),
     recent items, seen items, purchased items, last published list (string lists)]

with ``w`` = 2 (float16) or 4 (float32). A string list is one str, its items
joined by NUL (``""``: no items), unless an item holds a NUL (or the list is
``[""]``): then an array of str. MessagePack is packed and read in C
(``msgpack``), and joined lists are split in C. CPU per state (encode /
decode), against version 3 (struct-packed, NUL-joined lists): 12-14 / 15-16 µs
against 28-40 / 17-30 for a new user (50 recent items, a 64-value vector),
which is most users of a batch on a large catalogue; with 2,000 seen items both
take 50-70 / 75-120 µs, most of it making the 2,000 str objects of the seen
list. Versions 1-3 are still read:

* version 3: ``u32[4]`` counts, ``i64`` last_ts, ``u16 d, u8 w`` and the vector,
  ``u16 n``, ``i64[n]`` times and ``u8[n]`` types of the recent items, then
  four string lists (recent, seen, purchased, last list), each ``u32 count,
  u32 size`` and the strings in UTF-8 joined by NUL;
* version 2: the same, but each string ``u16 length`` + UTF-8 and list counts
  ``u16`` (recent, last list) or ``u32`` (seen, purchased);
* version 1: version 2 without ``w`` (the vector was always float32).

A release that reads only versions 1-3 cannot take over version-4 states (roll
back only to one that reads them).

The long-term vector is stored as float16 by default: half the bytes, and the
model works on it in float32 again as soon as it is read. Its relative rounding
error (at most 2^-11) cost nothing measurable on MovieLens-100K (FluRS Recall@10
0.2023 either way, ``docs/model/results-history.md``). Values beyond float16's range are
clipped to +-65504. Decoding refuses unknown versions, malformed, truncated or
trailing bytes with :class:`CodecError`.

>>> from core.types import UserState
>>> state = UserState(counts=[2, 0, 0, 1], last_ts=1767225600000,
...                   recent_items=["i1", "i2"], recent_ts=[1767225599000, 1767225600000],
...                   recent_types=[0, 3], seen=["i1", "i2"], purchased=["i2"])
>>> raw = encode_state(state)
>>> raw[:1], raw[1]  # magic byte, codec version
(b'U', 4)
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
from typing import Any, Literal

import msgpack
import numpy as np

from core.types import UserState

__all__ = ["CodecError", "encode_state", "decode_state", "CODEC_VERSION", "Precision"]

CODEC_VERSION = 4
_READS = (1, 2, 3, 4)  # versions decode_state understands
_V4 = b"U\x04"
_FIELDS = 10  # elements of a version-4 array
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
_VECTOR: dict[tuple[str, int], struct.Struct] = {}  # (code, length) -> its Struct


# The vector of states that have none (shared: nothing writes into an empty array).
_EMPTY = np.zeros(0, dtype=np.float32)
_EMPTY.flags.writeable = False


class CodecError(ValueError):
    """Bytes that are not a user state this code can read."""


def _pack_vector(vector: np.ndarray, width: int) -> bytes:
    """The vector's bytes, ``width`` bytes a value (float16 values clipped to its range)."""
    values = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
    code = "e" if width == 2 else "f"
    fmt = _VECTOR.get((code, len(values)))
    if fmt is None:
        fmt = _VECTOR[(code, len(values))] = struct.Struct(f"<{len(values)}{code}")
    try:
        return fmt.pack(*values)  # struct, not numpy: a few µs for 48 values, not 14
    except OverflowError:  # beyond float16's range: clipped (NaN stays NaN)
        return fmt.pack(*np.clip(values, -_F16_MAX, _F16_MAX).tolist())


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
    vec = _pack_vector(state.long_term, width) if state.long_term.size else b""
    try:
        body = msgpack.packb(
            [
                state.counts,
                state.last_ts,
                width,
                vec,
                state.recent_ts,
                bytes(state.recent_types),
                _joined(state.recent_items),
                _joined(state.seen),
                _joined(state.purchased),
                _joined(state.last_list),
            ],
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a type >= 256, a huge int
        raise CodecError(f"cannot encode the user state: {exc}") from None
    return _V4 + body


def _joined(items: list[str]) -> str | list[str]:
    """A string list as one NUL-joined str, when that reads back the same."""
    joined = _SEP.join(items)
    if joined and joined.count(_SEP) == len(items) - 1:  # no item holds a NUL
        return joined
    return items if items else ""  # [""] would be read back as []


def _split(field: Any) -> list[str] | None:
    """A string list as :func:`_joined` wrote it (None: neither form)."""
    if type(field) is str:
        return field.split(_SEP) if field else []
    if type(field) is list and all(type(x) is str for x in field):
        return field
    return None


def _decode_v4(data: bytes) -> UserState:
    try:
        doc: Any = msgpack.unpackb(memoryview(data)[2:], raw=False, use_list=True)
    except msgpack.ExtraData:
        raise CodecError("trailing bytes after user state") from None
    except (ValueError, msgpack.UnpackException) as exc:  # truncated, invalid UTF-8, ...
        if "incomplete" in str(exc):
            raise CodecError("truncated user state") from None
        raise CodecError(f"corrupt user state: {exc}") from None
    if not isinstance(doc, list) or len(doc) != _FIELDS:
        raise CodecError("corrupt user state: not a version-4 record")
    counts, last_ts, width, vec, ts, types, *lists = doc
    recent, seen, purchased, last_list = (_split(x) for x in lists)
    dtype = _DTYPE.get(width)
    if (
        type(counts) is not list
        or len(counts) != 4
        or type(last_ts) is not int
        or dtype is None
        or type(vec) is not bytes
        or len(vec) % width
        or type(types) is not bytes
        or type(ts) is not list
        or recent is None
        or seen is None
        or purchased is None
        or last_list is None
        or len(ts) != len(types)
        or len(recent) != len(types)
    ):
        raise CodecError("corrupt user state: fields of the wrong type or length")
    lt = np.frombuffer(vec, dtype=dtype).astype(np.float32) if vec else _EMPTY
    # Positional: a third faster than by keyword, on the path of every user of a batch.
    return UserState(counts, last_ts, lt, recent, ts, list(types), seen, purchased, last_list)


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
    """Read bytes written by :func:`encode_state` (any version it wrote)."""
    if data[:2] == _V4:
        return _decode_v4(data)
    r = _Reader(data)
    magic, version, c0, c1, c2, c3, last_ts = r.unpack(_HEAD)
    if magic != b"U" or version not in _READS or version == 4:
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
