"""Per-partition user state: store -> partition -> transaction.

A *store* owns one database per input partition (``open_partition``); a
*partition* knows the last input offset it has applied and hands out
*transactions*; a transaction is the :class:`~core.types.StateView` the pure
step reads and writes, and its :meth:`PartitionTransaction.commit` writes the
batch's user states, the partition's last processed offset and its user count
in **one atomic write** (a rocksdict ``WriteBatch``). A crash therefore leaves
state and offset in step: the runtime resumes at ``last_offset() + 1`` and no
event is lost or applied twice.

Writes go through RocksDB's write-ahead log without an fsync per batch: a killed
process loses nothing, a power cut may lose the newest batches, but states and
offset always go back together, so the worker replays exactly what was lost.

Two stores share the contract (``tests/state/test_store_contract.py``):
:class:`RocksDBStore` (one RocksDB under ``root/<topic>/<partition>``) and
:class:`MemoryStore`, its in-memory twin for tests and offline runs.

Key layout inside a partition database::

    b"u" + utf-8 user id  -> encode_state(UserState)
    b"\\x00offset"         -> i64 big endian, last applied input offset
    b"\\x00users"          -> i64 big endian, number of users stored
    b"\\x00changelog"      -> i64 big endian, offset of the last changelog record
                             this database holds (written or restored)
    b"\\x00ids"            -> how the user ids in the keys were made (see
                             :meth:`StorePartition.claim_ids`)

A transaction can also delete a user (:meth:`PartitionTransaction.delete`,
an erasure): the key goes, and the batch's changelog records carry a
tombstone (the key with no value) that deletes it wherever the changelog is
restored.

The changelog (see :mod:`stream.runtime.restore`) mirrors the user keys and the offset
key record for record: :meth:`PartitionTransaction.changes` is what a batch adds
to it, :meth:`StorePartition.apply_changelog` puts records back.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from rocksdict import Options, Rdict, WriteBatch

from core.errors import ConfigError, InterestStreamError
from core.types import UserState
from state.codec import CodecError, decode_state, encode_state

__all__ = [
    "StateStoreError",
    "StateDiskFullError",
    "user_of_key",
    "ids_of_record",
    "offset_of_record",
    "Store",
    "StatePartition",
    "StateTransaction",
    "StorePartition",
    "PartitionTransaction",
    "RocksDBStore",
    "MemoryStore",
]

log = logging.getLogger("interest_stream.state")

_USER = b"u"
_USER_END = b"v"
_OFFSET_KEY = b"\x00offset"
_USERS_KEY = b"\x00users"
_CHANGELOG_KEY = b"\x00changelog"
_IDS_KEY = b"\x00ids"
_I64 = struct.Struct(">q")


class StateStoreError(InterestStreamError):
    """A state database cannot be opened, read or written."""


class StateDiskFullError(StateStoreError):
    """The state directory's filesystem is full (ENOSPC): the worker must stop.

    Nothing is lost by stopping: a batch's state is written only after its Kafka
    transaction committed, and that transaction holds the batch's changelog
    records, so a restart with space restores what could not be written.
    """


def _user_key(user_id: str) -> bytes:
    return _USER + user_id.encode("utf-8")


def user_of_key(key: bytes) -> str | None:
    """The user id of a state key (None for the partition's own keys, e.g. its offset)."""
    if not key.startswith(_USER):
        return None
    try:
        return key[len(_USER) :].decode("utf-8")
    except UnicodeDecodeError:
        return None


def ids_of_record(key: bytes, value: bytes | None) -> bytes | None:
    """The id scheme an ids record holds (None for any other record; see ``claim_ids``)."""
    return value if key == _IDS_KEY else None


def offset_of_record(key: bytes, value: bytes | None) -> int | None:
    """The input offset an offset record holds (None for any other record)."""
    if key != _OFFSET_KEY or value is None or len(value) != _I64.size:
        return None
    return int(_I64.unpack(value)[0])


class StateTransaction(Protocol):
    """What a batch's step does with a partition's states (:class:`PartitionTransaction`)."""

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]: ...
    def put(self, user_id: str, state: UserState) -> None: ...
    def delete(self, user_id: str) -> bool: ...
    def set_offset(self, offset: int) -> None: ...
    def changes(self) -> list[tuple[bytes, bytes | None]]: ...
    def commit(self, changelog_offset: int | None = None) -> None: ...
    def discard(self) -> None: ...


class StatePartition(Protocol):
    """One input partition's states as the batch driver uses them (:class:`StorePartition`;
    offline replays keep theirs in memory)."""

    topic: str
    partition: int

    @property
    def name(self) -> str: ...
    def last_offset(self) -> int | None: ...
    def user_count(self) -> int: ...
    def claim_ids(self, scheme: bytes) -> None: ...
    def begin(self) -> StateTransaction: ...


class _Backend(Protocol):
    """What a partition database must offer: batched reads, one atomic write, a user scan."""

    def read_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def write_atomic(self, puts: dict[bytes, bytes | None]) -> None:
        """Put every key, delete those whose value is None, all or nothing."""
        ...

    def iter_users(self) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


class PartitionTransaction:
    """The state changes of one micro-batch on one partition.

    Reads see this transaction's own puts and deletes first. Nothing reaches
    the database until :meth:`commit`, which writes every change plus the
    offset at once.
    """

    def __init__(self, partition: StorePartition) -> None:
        self._partition = partition
        self._puts: dict[str, bytes | None] = {}  # None: deleted
        self._known: dict[str, bool] = {}  # user id -> exists in the database
        self._offset: int | None = None
        self._done = False

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """States of the given users that exist (missing users are absent)."""
        self._check_open()
        out: dict[str, UserState] = {}
        missing = [u for u in dict.fromkeys(user_ids) if u not in self._puts]
        raws = self._partition.backend.read_many([_user_key(u) for u in missing])
        for user, raw in zip(missing, raws, strict=True):
            self._known[user] = raw is not None
            if raw is not None:
                out[user] = self._partition.decode(user, raw)
        for user in user_ids:
            raw_put = self._puts.get(user)
            if raw_put is not None:
                out[user] = self._partition.decode(user, raw_put)
        return out

    def put(self, user_id: str, state: UserState) -> None:
        """Stage the new state of a user (encoded now, written on commit)."""
        self._check_open()
        self._learn_known(user_id)
        try:
            self._puts[user_id] = encode_state(state)
        except CodecError as exc:
            # Never the user id: error messages end up in logs (docs/operating/privacy.md).
            raise StateStoreError(
                f"{self._partition.name}: cannot encode a user state: {exc}"
            ) from None

    def delete(self, user_id: str) -> bool:
        """Stage the deletion of a user; True when they had a state (here or stored)."""
        self._check_open()
        self._learn_known(user_id)
        had = self._puts[user_id] is not None if user_id in self._puts else self._known[user_id]
        self._puts[user_id] = None
        return had

    def _learn_known(self, user_id: str) -> None:
        if user_id not in self._known:
            (raw,) = self._partition.backend.read_many([_user_key(user_id)])
            self._known[user_id] = raw is not None

    def set_offset(self, offset: int) -> None:
        """Record ``offset`` as the last input offset this batch applies."""
        self._check_open()
        last = self._partition.last_offset()
        if last is not None and offset <= last:
            raise StateStoreError(
                f"{self._partition.name}: offset {offset} is not after the stored {last}"
            )
        self._offset = offset

    @property
    def new_users(self) -> int:
        """Users this transaction adds to the partition (negative when it deletes more)."""
        return sum((raw is not None) - self._known.get(u, False) for u, raw in self._puts.items())

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """The batch's changelog records: every staged state (None: deleted), the offset.

        The partition's ids record comes first when this commit is what claims it.
        """
        out: list[tuple[bytes, bytes | None]] = []
        ids = self._partition.unclaimed_ids()
        if ids is not None:
            out.append((_IDS_KEY, ids))
        out += [(_user_key(u), raw) for u, raw in self._puts.items()]
        if self._offset is not None:
            out.append((_OFFSET_KEY, _I64.pack(self._offset)))
        return out

    def commit(self, changelog_offset: int | None = None) -> None:
        """Write the staged states, user count, offset (and changelog offset) at once.

        ``changelog_offset`` is the offset of the last changelog record that
        holds these changes, when the runtime keeps a changelog.
        """
        self._check_open()
        self._done = True
        if not self._puts and self._offset is None:
            return
        p = self._partition
        users = p.user_count() + self.new_users
        writes: dict[bytes, bytes | None] = {_user_key(u): raw for u, raw in self._puts.items()}
        writes[_USERS_KEY] = _I64.pack(users)
        ids = p.unclaimed_ids()
        if ids is not None:
            writes[_IDS_KEY] = ids
        if self._offset is not None:
            writes[_OFFSET_KEY] = _I64.pack(self._offset)
        if changelog_offset is not None:
            writes[_CHANGELOG_KEY] = _I64.pack(changelog_offset)
        p.backend.write_atomic(writes)
        p.after_commit(self._offset, users, changelog_offset, ids)

    def discard(self) -> None:
        """Drop the staged changes (the batch will be read again)."""
        self._done = True
        self._puts.clear()

    def _check_open(self) -> None:
        if self._done:
            raise StateStoreError("transaction already committed or discarded")


class StorePartition:
    """The state database of one input partition."""

    def __init__(self, topic: str, partition: int, backend: _Backend) -> None:
        self.topic = topic
        self.partition = partition
        self.backend = backend
        offset_raw, users_raw, changelog_raw, ids = backend.read_many(
            [_OFFSET_KEY, _USERS_KEY, _CHANGELOG_KEY, _IDS_KEY]
        )
        self._offset = None if offset_raw is None else _I64.unpack(offset_raw)[0]
        self._users = 0 if users_raw is None else _I64.unpack(users_raw)[0]
        self._changelog = None if changelog_raw is None else _I64.unpack(changelog_raw)[0]
        self._ids = ids
        self._claim: bytes | None = None  # the scheme the next commit writes (unclaimed yet)

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"

    def last_offset(self) -> int | None:
        """Offset of the last input message applied to this state (None: none yet)."""
        return self._offset

    def user_count(self) -> int:
        return self._users

    def changelog_offset(self) -> int | None:
        """Offset of the last changelog record this database holds (None: none)."""
        return self._changelog

    def ids(self) -> bytes | None:
        """How the user ids of this partition's keys were made (None: not recorded)."""
        return self._ids

    def claim_ids(self, scheme: bytes) -> None:
        """Declare that the user ids of this partition's keys are made by ``scheme``.

        ``scheme`` is opaque here (e.g. plain ids, or a keyed hash named by the
        fingerprint of its key). A partition that recorded another one raises
        :class:`~core.errors.ConfigError`, so states keyed by one scheme are
        never mixed with states keyed by another; so does a partition with
        users but no record (stored before there was one) unless ``scheme`` is
        ``b"plain"``. A partition without a record takes ``scheme`` with its
        next commit, which also writes it to the changelog.
        """
        have = self._ids if self._ids is not None else (b"plain" if self._users else None)
        if have is not None and have != scheme:
            raise ConfigError(
                f"{self.name}: its user states are keyed by "
                f"{_scheme_name(have)}, this worker by {_scheme_name(scheme)}: "
                "changing the user-id key needs a new consumer group (see the documentation, "
                "Privacy: pseudonymised user ids)"
            )
        self._claim = scheme if self._ids is None else None

    def unclaimed_ids(self) -> bytes | None:
        """The ids scheme the next commit must record (None: already recorded, or unclaimed)."""
        return self._claim

    def apply_changelog(self, records: Sequence[tuple[bytes, bytes | None]], last: int) -> None:
        """Put changelog ``records`` back, in order, up to changelog offset ``last``; one write.

        A user record holds a whole state (a None value deletes the user), an
        offset record the input offset the states reflect; other keys are ignored.
        """
        writes: dict[bytes, bytes | None] = {}
        offset = self._offset
        ids = None
        for key, value in records:
            if user_of_key(key) is not None:
                writes[key] = value
            elif (found := offset_of_record(key, value)) is not None:
                offset = found
            elif (scheme := ids_of_record(key, value)) is not None:
                ids = writes[_IDS_KEY] = scheme
        users = self._users
        if writes:
            keys = [k for k in writes if k != _IDS_KEY]
            before = self.backend.read_many(keys)
            for key, old in zip(keys, before, strict=True):
                users += (writes[key] is not None) - (old is not None)
        writes[_USERS_KEY] = _I64.pack(users)
        writes[_CHANGELOG_KEY] = _I64.pack(last)
        if offset is not None:
            writes[_OFFSET_KEY] = _I64.pack(offset)
        self.backend.write_atomic(writes)
        self.after_commit(offset, users, last, ids)

    def forget_changelog(self) -> None:
        """Forget where this database stands in the changelog (it was recreated)."""
        self.backend.write_atomic({_CHANGELOG_KEY: None})
        self._changelog = None

    def changelog_records(self) -> Iterator[tuple[bytes, bytes]]:
        """The records a changelog needs to rebuild this database: ids, every state, offset."""
        if self._ids is not None:
            yield _IDS_KEY, self._ids
        yield from self.backend.iter_users()
        if self._offset is not None:
            yield _OFFSET_KEY, _I64.pack(self._offset)

    def reset_offset(self, offset: int) -> None:
        """Make ``offset`` the last applied one, also backwards (-1: none of the log).

        Only for an input log whose offsets started over (topic recreated or
        truncated); user states are left as they are.
        """
        self.backend.write_atomic({_OFFSET_KEY: _I64.pack(offset)})
        self._offset = offset

    def begin(self) -> PartitionTransaction:
        return PartitionTransaction(self)

    def get(self, user_id: str) -> UserState | None:
        (raw,) = self.backend.read_many([_user_key(user_id)])
        return None if raw is None else self.decode(user_id, raw)

    def items(self) -> Iterator[tuple[str, UserState]]:
        """Every (user id, state) of this partition, in key order."""
        for key, raw in self.backend.iter_users():
            user = key[len(_USER) :].decode("utf-8")
            yield user, self.decode(user, raw)

    def decode(self, user_id: str, raw: bytes) -> UserState:
        try:
            return decode_state(raw)
        except CodecError as exc:
            # Never the user id: error messages end up in logs (docs/operating/privacy.md).
            raise StateStoreError(
                f"{self.name}: a stored user state is unreadable: {exc}"
            ) from None

    def after_commit(
        self,
        offset: int | None,
        users: int,
        changelog: int | None = None,
        ids: bytes | None = None,
    ) -> None:
        if offset is not None:
            self._offset = offset
        self._users = users
        if changelog is not None:
            self._changelog = changelog
        if ids is not None:
            self._ids, self._claim = ids, None

    def close(self) -> None:
        self.backend.close()


def _scheme_name(scheme: bytes) -> str:
    return "plain user ids" if scheme == b"plain" else f"ids of {scheme.decode('ascii', 'replace')}"


class Store(Protocol):
    """Opens and closes the partition databases of one consumer.

    ``location`` is the directory the store keeps its data in, or None when it
    keeps nothing on disk (things that belong next to the state, e.g. model
    snapshots, are saved only when there is a location).
    """

    @property
    def location(self) -> Path | None: ...

    def open_partition(self, topic: str, partition: int) -> StorePartition: ...

    def close_partition(self, topic: str, partition: int) -> None: ...

    def partitions(self) -> dict[tuple[str, int], StorePartition]: ...

    def close(self) -> None: ...


class _Registry:
    """Bookkeeping shared by both stores: which partitions are open."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], StorePartition] = {}

    def partitions(self) -> dict[tuple[str, int], StorePartition]:
        return dict(self._open)

    def close_partition(self, topic: str, partition: int) -> None:
        part = self._open.pop((topic, partition), None)
        if part is not None:
            part.close()

    def close(self) -> None:
        for topic, partition in list(self._open):
            self.close_partition(topic, partition)

    def _remember(self, part: StorePartition) -> StorePartition:
        self._open[(part.topic, part.partition)] = part
        return part


# --- in memory -----------------------------------------------------------------------


class _DictBackend:
    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data

    def read_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.data.get(k) for k in keys]

    def write_atomic(self, puts: dict[bytes, bytes | None]) -> None:
        for key, value in puts.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def iter_users(self) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self.data if k.startswith(_USER)):
            yield key, self.data[key]

    def close(self) -> None:
        pass


class MemoryStore(_Registry):
    """In-memory twin of :class:`RocksDBStore`; data outlives close/reopen of a partition."""

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[tuple[str, int], dict[bytes, bytes]] = {}

    @property
    def location(self) -> Path | None:
        return None

    def open_partition(self, topic: str, partition: int) -> StorePartition:
        if (topic, partition) in self._open:
            return self._open[(topic, partition)]
        data = self._data.setdefault((topic, partition), {})
        return self._remember(StorePartition(topic, partition, _DictBackend(data)))


# --- RocksDB -------------------------------------------------------------------------


_NO_SPACE = ("no space left on device", "enospc")


def _failure(path: Path, doing: str, exc: Exception) -> StateStoreError:
    """One error for a failed RocksDB call; a full disk gets its own, telling what to do."""
    msg = str(exc)
    if any(mark in msg.lower() for mark in _NO_SPACE):
        return StateDiskFullError(
            f"the state directory is full: cannot {doing} {path} (No space left on device); "
            "free space and restart the worker: what was committed to Kafka is restored "
            "from the changelog"
        )
    return StateStoreError(f"state {doing} failed: {msg}")


class _RocksBackend:
    def __init__(self, path: Path) -> None:
        self.path = path
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        # Many small databases share two cores: keep each one's background work small.
        opts.set_max_background_jobs(2)
        opts.set_write_buffer_size(8 * 1024 * 1024)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.db = Rdict(str(path), opts)
        except Exception as exc:  # rocksdict raises plain Exception
            msg = str(exc)
            if "lock" in msg.lower():
                msg = "it is in use by another worker (each worker needs its own --state-dir)"
            elif any(mark in msg.lower() for mark in _NO_SPACE):
                raise _failure(path, "open", exc) from None
            raise StateStoreError(f"cannot open state database {path}: {msg}") from None

    def read_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            found = self.db.get(list(keys))
        except Exception as exc:  # rocksdict raises plain Exception
            raise _failure(self.path, "read", exc) from None
        if not isinstance(found, list):
            raise StateStoreError(f"state read returned {type(found).__name__}, not a list")
        return found

    def write_atomic(self, puts: dict[bytes, bytes | None]) -> None:
        wb = WriteBatch(raw_mode=True)
        for key, value in puts.items():
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        try:
            self.db.write(wb)
        except Exception as exc:  # rocksdict raises plain Exception
            raise _failure(self.path, "write", exc) from None

    def iter_users(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.db.items(from_key=_USER):
            assert isinstance(key, bytes)  # raw mode: keys are bytes
            if key >= _USER_END:
                break
            yield key, value

    def close(self) -> None:
        try:
            self.db.close()
        except Exception as exc:  # rocksdict raises plain Exception
            # On a full disk the close fails too (its flush cannot write a file, or "Writer
            # has previous error"): what was written is in the database's log, what was not
            # is in the changelog, and the error that stops the worker says so already.
            msg = str(exc)
            full = "previous error" in msg or any(m in msg.lower() for m in _NO_SPACE)
            log.log(logging.DEBUG if full else logging.WARNING, "closing %s: %s", self.path, msg)


class RocksDBStore(_Registry):
    """One RocksDB per input partition under ``root/<topic>/<partition>``.

    ``root`` must be private to one worker: RocksDB locks an open database.
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = Path(root)

    @property
    def location(self) -> Path | None:
        return self.root

    def path_of(self, topic: str, partition: int) -> Path:
        return self.root / topic / str(partition)

    def open_partition(self, topic: str, partition: int) -> StorePartition:
        if (topic, partition) in self._open:
            return self._open[(topic, partition)]
        backend = _RocksBackend(self.path_of(topic, partition))
        return self._remember(StorePartition(topic, partition, backend))

    def on_disk(self) -> list[tuple[str, int]]:
        """(topic, partition) of every database under ``root``."""
        if not self.root.is_dir():
            return []
        found = []
        for topic_dir in sorted(self.root.iterdir()):
            for part_dir in topic_dir.iterdir() if topic_dir.is_dir() else []:
                if part_dir.name.isdigit() and (part_dir / "CURRENT").exists():
                    found.append((topic_dir.name, int(part_dir.name)))
        return sorted(found)
