"""Versioned binary codec for per-user state (no pickle).

Layout of version 1 (little endian)::

    b"U" u8:version
    u32[4] counts per event type        i64 last_ts (ms)
    u16 d, f32[d] long-term vector
    u16 n, (i64 ts, u8 event type)[n], str[n] recent items (oldest first)
    u32 n, str[n] seen items            u32 n, str[n] purchased items
    u16 n, str[n] last published list

where ``str`` is ``u16 length`` + UTF-8 bytes. Decoding refuses unknown
versions and truncated or trailing bytes with :class:`CodecError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

__all__ = ["UserState", "CodecError", "encode_state", "decode_state", "CODEC_VERSION"]

CODEC_VERSION = 1
_HEAD = struct.Struct("<cB4Iq")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MAX_STR = 0xFFFF


class CodecError(ValueError):
    """Bytes that are not a user state this code can read."""


@dataclass(slots=True)
class UserState:
    """Everything the model keeps about one user between batches.

    ``recent_*`` are parallel lists, oldest first (the model bounds their
    length); ``long_term`` is float32[d] (d may be 0 when unused).
    """

    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    last_ts: int = 0
    long_term: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    recent_items: list[str] = field(default_factory=list)
    recent_ts: list[int] = field(default_factory=list)
    recent_types: list[int] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    purchased: list[str] = field(default_factory=list)
    last_list: list[str] = field(default_factory=list)

    @property
    def n_events(self) -> int:
        return sum(self.counts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserState):
            return NotImplemented
        return (
            self.counts == other.counts
            and self.last_ts == other.last_ts
            and np.array_equal(self.long_term, other.long_term)
            and self.recent_items == other.recent_items
            and self.recent_ts == other.recent_ts
            and self.recent_types == other.recent_types
            and self.seen == other.seen
            and self.purchased == other.purchased
            and self.last_list == other.last_list
        )


def _pack_strs(out: list[bytes], items: list[str], count_fmt: struct.Struct | None) -> None:
    if count_fmt is not None:
        out.append(count_fmt.pack(len(items)))
    for s in items:
        b = s.encode("utf-8")
        if len(b) > _MAX_STR:
            raise CodecError(f"string of {len(b)} bytes is too long for the state codec")
        out.append(_U16.pack(len(b)))
        out.append(b)


def encode_state(state: UserState) -> bytes:
    """Serialise a :class:`UserState` to bytes (current codec version)."""
    n = len(state.recent_items)
    if not (len(state.recent_ts) == len(state.recent_types) == n):
        raise CodecError("recent_items, recent_ts and recent_types differ in length")
    vec = np.ascontiguousarray(state.long_term, dtype="<f4")
    out: list[bytes] = [
        _HEAD.pack(b"U", CODEC_VERSION, *state.counts, state.last_ts),
        _U16.pack(vec.shape[0]),
        vec.tobytes(),
        _U16.pack(n),
        np.asarray(state.recent_ts, dtype="<i8").tobytes(),
        np.asarray(state.recent_types, dtype="u1").tobytes(),
    ]
    _pack_strs(out, state.recent_items, None)
    _pack_strs(out, state.seen, _U32)
    _pack_strs(out, state.purchased, _U32)
    _pack_strs(out, state.last_list, _U16)
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
        view = self.buf[self.pos:end]
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


def decode_state(data: bytes) -> UserState:
    """Read bytes written by :func:`encode_state`."""
    r = _Reader(data)
    magic, version, c0, c1, c2, c3, last_ts = r.unpack(_HEAD)
    if magic != b"U" or version != CODEC_VERSION:
        raise CodecError(f"unknown user state format (magic {magic!r}, version {version})")
    (d,) = r.unpack(_U16)
    vec = np.frombuffer(r.take(4 * d), dtype="<f4").astype(np.float32)
    (n,) = r.unpack(_U16)
    ts = np.frombuffer(r.take(8 * n), dtype="<i8").tolist()
    types = list(r.take(n))
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
