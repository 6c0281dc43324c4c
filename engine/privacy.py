"""User ids at the boundary: pseudonymised with a secret key, and kept out of logs.

With a key configured (``INTEREST_ID_KEY``, ``INTEREST_ID_KEY_FILE`` or
``[privacy] id_key_file``, see ``stream.config.PrivacyConfig``), the
worker replaces every user id right after an event or erasure request is
validated by its pseudonym, the first 128 bits of HMAC-SHA256(key, UTF-8 id) in
hex (32 characters). Everything stored or derived from then on (RocksDB keys,
changelog records, the model's per-user data, logs, metrics) only ever holds
pseudonyms; the lists are still published under the key the producer used,
which the worker keeps beside each event (:attr:`engine.batch.PartitionBatch.keys`).
Placement stays on the raw key, so a user's partition does not change.

The key never leaves the process: it is not printed, logged or stored. What
is stored, with every partition's states (and in the changelog), is the id
scheme: ``plain``, or ``hmac-sha256/`` + an 8-byte fingerprint of the key (an
HMAC of a fixed text, which says nothing about the key), so a worker started
with another key, or none, stops with one clear line instead of mixing states
(see :meth:`state.store.StorePartition.claim_ids`).

>>> ids = UserIds(b"0123456789abcdef0123456789abcdef")
>>> ids.of("u7")
'8b25fadbb67fdc447520731d5b1edebe'
>>> UserIds(None).of("u7"), UserIds(None).scheme
('u7', b'plain')
"""

from __future__ import annotations

import hashlib
import hmac
import traceback
from pathlib import Path

__all__ = ["UserIds", "PLAIN", "exception_text"]

PLAIN = b"plain"
_PSEUDONYM_BYTES = 16
_FINGERPRINT_TEXT = b"interest-stream user-id key fingerprint"


class UserIds:
    """How the worker turns a producer's user id into the id it stores.

    ``key`` None: ids are stored as they are (the default). ``log_ids``: logs
    may name user ids and exception messages (for debugging; off by default).
    """

    def __init__(self, key: bytes | None, log_ids: bool = False) -> None:
        self._key = key
        self.log_ids = log_ids
        self.pseudonymised = key is not None
        if key is None:
            self.scheme = PLAIN
        else:
            tag = hmac.digest(key, _FINGERPRINT_TEXT, hashlib.sha256)[:8].hex()
            self.scheme = f"hmac-sha256/{tag}".encode("ascii")

    def __repr__(self) -> str:  # never the key
        return f"UserIds(scheme={self.scheme.decode()!r}, log_ids={self.log_ids})"

    def of(self, user_id: str) -> str:
        """The id stored for ``user_id``: its pseudonym, or itself without a key."""
        if self._key is None:
            return user_id
        digest = hmac.digest(self._key, user_id.encode("utf-8"), hashlib.sha256)
        return digest[:_PSEUDONYM_BYTES].hex()


def exception_text(exc: BaseException, log_ids: bool) -> str:
    """An exception for a log line: type and where it was raised, its message only if allowed.

    A model's exception message may name the user it failed on (``KeyError('u7')``);
    the type and the line that raised it are what a developer needs first.
    """
    if log_ids:
        return f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno}"
