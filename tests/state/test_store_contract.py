"""One contract, two stores: RocksDB and the in-memory twin behave the same."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from core.errors import ConfigError
from core.types import UserState
from state.store import MemoryStore, RocksDBStore, StateStoreError, Store


def _state(n: int, item: str = "i1") -> UserState:
    return UserState(
        counts=[n, 0, 0, 1],
        last_ts=1_700_000_000_000 + n,
        long_term=np.arange(4, dtype=np.float32) * n,
        recent_items=[item],
        recent_ts=[1_700_000_000_000],
        recent_types=[0],
        seen=[item],
        purchased=["p"],
        last_list=["a", "b"],
    )


@pytest.fixture(params=["rocksdb", "memory"])
def reopenable(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[[], Store]]:
    """A factory: each call closes the previous store and opens it again on the same data."""
    current: list[Store] = []
    memory = MemoryStore()

    def reopen() -> Store:
        for s in current:
            s.close()
        current.clear()
        store = RocksDBStore(tmp_path / "state") if request.param == "rocksdb" else memory
        current.append(store)
        return store

    yield reopen
    for s in current:
        s.close()


def test_fresh_partition_is_empty(reopenable):
    part = reopenable().open_partition("events", 0)
    assert part.last_offset() is None
    assert part.user_count() == 0
    assert part.get("u1") is None
    assert list(part.items()) == []


def test_commit_writes_states_and_offset_together(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.put("u2", _state(2))
    txn.set_offset(41)
    txn.commit()
    part = reopenable().open_partition("events", 0)
    assert part.last_offset() == 41
    assert part.user_count() == 2
    assert part.get("u1") == _state(1)
    assert dict(part.items()) == {"u1": _state(1), "u2": _state(2)}


def test_uncommitted_changes_are_invisible(reopenable):
    part = reopenable().open_partition("events", 3)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.set_offset(5)
    assert part.get("u1") is None
    txn.discard()
    part = reopenable().open_partition("events", 3)
    assert part.get("u1") is None and part.last_offset() is None


def test_transaction_reads_its_own_writes(reopenable):
    part = reopenable().open_partition("events", 0)
    first = part.begin()
    first.put("u1", _state(1))
    first.set_offset(0)
    first.commit()
    txn = part.begin()
    assert txn.get_many(["u1", "u9"]) == {"u1": _state(1)}
    txn.put("u9", _state(9))
    txn.put("u1", _state(7))
    assert txn.get_many(["u1", "u9"]) == {"u1": _state(7), "u9": _state(9)}


def test_user_count_counts_each_user_once(reopenable):
    part = reopenable().open_partition("events", 0)
    for offset, users in enumerate([["a", "b"], ["a", "c"], ["b"]]):
        txn = part.begin()
        txn.get_many(users[:1])  # one read through get_many, one staged blind
        for u in users:
            txn.put(u, _state(offset))
        txn.set_offset(offset)
        txn.commit()
    assert part.user_count() == 3
    assert reopenable().open_partition("events", 0).user_count() == 3


def test_offset_must_move_forward(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.set_offset(10)
    txn.commit()
    with pytest.raises(StateStoreError):
        part.begin().set_offset(10)
    with pytest.raises(StateStoreError):
        part.begin().set_offset(3)


def test_a_transaction_commits_once(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u", _state(1))
    txn.commit()
    with pytest.raises(StateStoreError):
        txn.commit()
    with pytest.raises(StateStoreError):
        txn.put("u", _state(2))


def test_partitions_are_independent(reopenable):
    store = reopenable()
    p0, p1 = store.open_partition("events", 0), store.open_partition("events", 1)
    txn = p0.begin()
    txn.put("u1", _state(1))
    txn.set_offset(100)
    txn.commit()
    assert p1.get("u1") is None and p1.last_offset() is None
    assert set(store.partitions()) == {("events", 0), ("events", 1)}
    store.close_partition("events", 0)
    assert set(store.partitions()) == {("events", 1)}
    assert store.open_partition("events", 0).last_offset() == 100


def test_offset_only_commit_keeps_states(reopenable):
    """A batch of dead letters only moves the offset."""
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.set_offset(1)
    txn.commit()
    txn = part.begin()
    txn.set_offset(7)
    txn.commit()
    part = reopenable().open_partition("events", 0)
    assert part.last_offset() == 7 and part.get("u1") == _state(1)


def test_unicode_user_ids_round_trip(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("ユーザー/1", _state(3))
    txn.put("", _state(4))
    txn.commit()
    assert dict(reopenable().open_partition("events", 0).items()) == {
        "": _state(4),
        "ユーザー/1": _state(3),
    }


def test_rocksdb_database_is_private_to_one_worker(tmp_path):
    first = RocksDBStore(tmp_path)
    first.open_partition("events", 0)
    try:
        with pytest.raises(StateStoreError, match="another worker"):
            RocksDBStore(tmp_path).open_partition("events", 0)
    finally:
        first.close()


def test_rocksdb_lists_partitions_on_disk(tmp_path):
    store = RocksDBStore(tmp_path)
    store.open_partition("events", 2)
    store.open_partition("other.topic", 0)
    store.close()
    assert RocksDBStore(tmp_path).on_disk() == [("events", 2), ("other.topic", 0)]


def test_offset_can_be_reset_backwards_for_a_recreated_log(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.set_offset(41)
    txn.commit()
    part.reset_offset(-1)
    part = reopenable().open_partition("events", 0)
    assert part.last_offset() == -1
    assert part.get("u1") == _state(1)  # user states are kept
    txn = part.begin()
    txn.set_offset(0)  # the recreated log's first message is new again
    txn.commit()
    assert part.last_offset() == 0


@pytest.fixture(params=["rocksdb", "memory", "evaluator"])
def state_view(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    """Every StateView this project has, each holding u1 = _state(1)."""
    if request.param == "evaluator":
        from state.views import MemoryStates

        view = MemoryStates()
        view.put("u1", _state(1))
        yield view
        return
    store = RocksDBStore(tmp_path / "state") if request.param == "rocksdb" else MemoryStore()
    part = store.open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.commit()
    yield part.begin()
    store.close()


def test_get_many_hands_out_states_the_caller_owns(state_view):
    got = state_view.get_many(["u1", "nobody"])
    assert set(got) == {"u1"}
    st = got["u1"]
    st.counts[0] += 10
    st.last_list.append("changed")
    st.long_term += 1.0
    st.seen.clear()
    # Nothing changed in the view until put: a failed step can be retried as it was.
    again = state_view.get_many(["u1"])["u1"]
    assert again == _state(1) and again is not st
    state_view.put("u1", st)
    assert state_view.get_many(["u1"])["u1"] == st


def test_a_batch_is_its_changelog_and_the_changelog_rebuilds_the_store(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.put("u2", _state(2))
    txn.set_offset(9)
    records = txn.changes()
    txn.commit(changelog_offset=3)
    assert part.changelog_offset() == 3
    # Another store (a new owner) puts the records back, in order, with a deletion.
    other = MemoryStore().open_partition("events", 0)
    other.apply_changelog(records, last=3)
    assert dict(other.items()) == dict(part.items())
    assert (other.last_offset(), other.user_count(), other.changelog_offset()) == (9, 2, 3)
    deleted = [(k, None) for k, _ in records if k.startswith(b"u") and k.endswith(b"1")]
    other.apply_changelog(deleted, last=4)
    assert other.get("u1") is None and other.user_count() == 1
    assert list(other.changelog_records()) == [
        (k, v) for k, v in records if k.endswith(b"2") or k == b"\x00offset"
    ]


def test_changelog_position_survives_reopen_and_can_be_forgotten(reopenable):
    part = reopenable().open_partition("events", 0)
    part.apply_changelog([], last=41)
    part = reopenable().open_partition("events", 0)
    assert part.changelog_offset() == 41
    part.forget_changelog()
    assert reopenable().open_partition("events", 0).changelog_offset() is None


def test_a_transaction_deletes_users_and_its_changelog_carries_tombstones(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.put("u2", _state(2))
    txn.set_offset(1)
    txn.commit()
    txn = part.begin()
    assert txn.delete("u1") is True
    assert txn.delete("nobody") is False  # an unknown user: nothing to delete, no error
    assert txn.get_many(["u1", "u2"]) == {"u2": _state(2)}  # reads see the deletion
    assert part.get("u1") == _state(1)  # nothing written before the commit
    txn.set_offset(2)
    records = txn.changes()
    assert (b"uu1", None) in records and (b"unobody", None) in records
    txn.commit()
    part = reopenable().open_partition("events", 0)
    assert part.get("u1") is None and part.user_count() == 1
    assert dict(part.items()) == {"u2": _state(2)}
    # The changelog puts the deletion where it is restored, too.
    other = MemoryStore().open_partition("events", 0)
    other.apply_changelog([(b"uu1", b"stale"), (b"uu2", b"stale")], last=0)
    other.apply_changelog(records, last=1)
    assert other.get("u1") is None and other.user_count() == 1


def test_a_user_deleted_and_back_in_one_transaction_starts_over(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(5))
    txn.set_offset(1)
    txn.commit()
    txn = part.begin()
    assert txn.delete("u1") is True
    assert txn.get_many(["u1"]) == {}
    txn.put("u1", _state(1))
    assert txn.delete("u1") is True  # its new state, staged in this transaction
    txn.put("u1", _state(1))
    assert txn.new_users == 0
    txn.set_offset(2)
    txn.commit()
    part = reopenable().open_partition("events", 0)
    assert part.get("u1") == _state(1) and part.user_count() == 1


def test_the_ids_scheme_is_recorded_once_and_never_mixed(reopenable):
    part = reopenable().open_partition("events", 0)
    assert part.ids() is None
    part.claim_ids(b"hmac/abc")
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.set_offset(1)
    records = txn.changes()
    assert records[0] == (b"\x00ids", b"hmac/abc")  # the claim goes to the changelog too
    txn.commit()
    part = reopenable().open_partition("events", 0)
    assert part.ids() == b"hmac/abc"
    part.claim_ids(b"hmac/abc")
    assert part.unclaimed_ids() is None  # recorded: not written again
    with pytest.raises(ConfigError, match="new consumer group"):
        part.claim_ids(b"hmac/other")
    with pytest.raises(ConfigError, match="plain user ids"):
        part.claim_ids(b"plain")
    # A new owner restoring the changelog learns the scheme with the states.
    other = MemoryStore().open_partition("events", 0)
    other.apply_changelog(records, last=0)
    assert other.ids() == b"hmac/abc" and other.user_count() == 1
    assert next(iter(other.changelog_records())) == (b"\x00ids", b"hmac/abc")
    with pytest.raises(ConfigError):
        other.claim_ids(b"plain")


def test_states_stored_before_ids_were_recorded_are_plain(reopenable):
    part = reopenable().open_partition("events", 0)
    txn = part.begin()
    txn.put("u1", _state(1))
    txn.set_offset(1)
    txn.commit()
    part.claim_ids(b"plain")  # fine: and recorded with the next commit
    with pytest.raises(ConfigError, match="plain user ids"):
        part.claim_ids(b"hmac/abc")
