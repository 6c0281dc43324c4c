"""Which partition a key belongs to: Kafka's default partitioner (murmur2), in pure Python.

The Java client's default partitioner, and librdkafka's ``murmur2_random``,
place a keyed message on ``(murmur2(key) & 0x7fffffff) % partitions``. State is
kept per partition, so everything that must find a user's partition (the state
inspection command, the offline twin of several workers, a check that events
arrived where they belong) uses this function.

>>> murmur2(b"21"), murmur2(b"foobar")  # the Java client's own test vectors
(-973932308, -790332482)
>>> partition_for(b"u7", 4)
2
"""

from __future__ import annotations

__all__ = ["murmur2", "partition_for"]

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash of ``data``, as the signed int the Java client computes."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= data[end + 2] << 16
    if tail >= 2:
        h ^= data[end + 1] << 8
    if tail >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (murmur2, as the Java client places it)."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
