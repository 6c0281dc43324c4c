"""The item vocabulary: rows handed out, expiry by event time, reuse, snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from model.vocab import ItemVocab

DAY = 86_400_000


def _add(vocab: ItemVocab, *events: tuple[str, str | None, int]) -> list[int]:
    return vocab.add_events(events).tolist()


def test_rows_are_handed_out_in_order_and_fresh_rows_are_reported() -> None:
    vocab = ItemVocab()
    assert _add(vocab, ("a", "x", 1), ("b", None, 2), ("a", None, 3)) == [0, 1, 0]
    fresh, fresh_cats = vocab.fresh()
    assert fresh.tolist() == [0, 1] and fresh_cats.tolist() == [1]
    assert _add(vocab, ("b", "y", 4)) == [1]  # a late category is filled in
    assert vocab.fresh()[0].tolist() == [] and vocab.fresh()[1].tolist() == [2]
    assert vocab.item_categories().tolist() == [1, 2]
    assert vocab.categories_of(np.array([[1, -1]])).tolist() == [[2, 0]]


def test_items_unseen_for_the_expiry_time_are_freed_and_their_rows_reused() -> None:
    vocab = ItemVocab(expire_after_ms=10 * DAY)
    _add(vocab, ("old", "c-old", 0), ("kept", "c", 0), ("other", "c", DAY // 2))
    assert not vocab.sweep_due(DAY)  # a sweep waits for 1/8 of the expiry time
    _add(vocab, ("kept", None, 11 * DAY))
    assert vocab.sweep_due()
    rows, cats = vocab.expire()
    # "old" (last seen on day 0) and "other" (day 0.5) are over 10 days old on day 11.
    assert rows.tolist() == [0, 2]
    assert cats.tolist() == [1]  # c-old went with its only item; c lives on with "kept"
    assert len(vocab) == 1 and vocab.n_rows == 3
    assert "old" not in vocab.index and vocab.ids == [None, "kept", None]
    assert vocab.live().tolist() == [False, True, False]
    assert vocab.item_categories().tolist() == [0, 2, 0]
    # New items take the lowest free rows; a new category takes the freed category row.
    assert _add(vocab, ("new1", "c-new", 12 * DAY), ("new2", None, 12 * DAY)) == [0, 2]
    assert vocab.categories == [None, "c-new", "c"]
    assert vocab.fresh()[0].tolist() == [0, 2]
    # An expired item that comes back is a new item.
    assert _add(vocab, ("old", None, 12 * DAY)) == [3]


def test_without_an_expiry_time_nothing_expires() -> None:
    vocab = ItemVocab()
    _add(vocab, ("a", None, 0), ("b", None, 1000 * DAY))
    assert not vocab.sweep_due()
    assert [r.tolist() for r in vocab.expire()] == [[], []]


def test_state_round_trip_keeps_free_rows_and_clocks() -> None:
    vocab = ItemVocab(expire_after_ms=DAY)
    _add(vocab, ("a", "x", 0), ("b", "y", 0), ("c", "y", 3 * DAY))
    vocab.expire()
    copy = ItemVocab(expire_after_ms=DAY)
    copy.load_state_dict(vocab.state_dict())
    assert copy.ids == vocab.ids and copy.categories == vocab.categories
    assert copy.now == vocab.now and not copy.sweep_due()
    # Both hand out the same rows from here on.
    more = [("d", "z", 4 * DAY), ("e", None, 4 * DAY), ("f", None, 4 * DAY)]
    assert _add(copy, *more) == _add(vocab, *more) == [0, 1, 3]
    assert copy.categories == vocab.categories


def test_inconsistent_state_is_refused() -> None:
    vocab = ItemVocab()
    _add(vocab, ("a", None, 0), ("b", None, 0))
    state = vocab.state_dict()
    state.meta["items"] = ["a", "a"]
    with pytest.raises(ValueError, match="twice"):
        ItemVocab().load_state_dict(state)
