"""Where each user's events belong, and what to do with those that arrived elsewhere.

State is kept per input partition, so all of a user's events must reach the
partition their key hashes to with murmur2 (the Java client's partitioner,
librdkafka's ``murmur2_random``). Producers that use another partitioner
(librdkafka's default, ``consistent_random``, is CRC32) spread a user over
several partitions. The worker checks every valid event: one that arrived on
another partition is not applied there but forwarded, bytes, headers and
timestamp unchanged plus a ``forwarded-from`` header, to the partition it
belongs to, in the batch's checkpoint (so exactly once where that guarantee is
on), and applied there like any other event.
"""

from __future__ import annotations

import logging
import time

from core.partition import partition_for

__all__ = ["Placement", "FORWARDED_FROM"]

log = logging.getLogger("interest_stream.worker")

FORWARDED_FROM = "forwarded-from"  # header: topic/partition/offset the event arrived on
_CACHE = 200_000  # keys remembered (a dict lookup instead of a Python murmur2)
_WARN_EVERY_S = 60.0


class Placement:
    """The events topic's partition count, and each key's partition under it."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions  # the configured count until the topic's is known
        self._known = False
        self._cache: dict[bytes, int] = {}
        self._warned_at = -_WARN_EVERY_S
        self._since_warning = 0

    def resize(self, partitions: int) -> None:
        """The events topic has ``partitions`` (as just read from the cluster)."""
        if partitions != self.partitions and self._known:
            log.warning(
                "the events topic now has %d partitions (was %d): users whose key "
                "hashes elsewhere now are forwarded there, their earlier state stays "
                "behind",
                partitions,
                self.partitions,
            )
        if partitions != self.partitions:
            self.partitions = partitions
            self._cache.clear()
        self._known = True

    def of(self, key: bytes) -> int:
        """The partition ``key`` belongs to."""
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            found = self._cache[key] = partition_for(key, self.partitions)
        return found

    def forwarded(self, n: int) -> None:
        """Say, at most once a minute, that ``n`` more events had to be forwarded."""
        self._since_warning += n
        now = time.monotonic()
        if n and now - self._warned_at >= _WARN_EVERY_S:
            log.warning(
                "%d event(s) arrived on a partition their key does not hash to and were "
                "forwarded to the right one: a producer is not partitioning by murmur2 of "
                "the key (librdkafka clients such as kcat or confluent-kafka need "
                "partitioner=murmur2_random; the Java client's default is right)",
                self._since_warning,
            )
            self._warned_at, self._since_warning = now, 0
