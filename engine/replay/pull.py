"""Prequential (test-then-learn) evaluation of several models on the same events.

Every model replays the same event sequence through the worker's batch driver
(:class:`engine.replay.harness.Replica`: the very step, guard and checkpoint
order the worker runs) with its own in-memory user states, so an event is
always scored before anything learns from it.

Protocols
---------
``flurs``
    Positive events only (``rating == 5`` when the data has ratings), in time
    order: the first 20% train without scoring, the next 10% update without
    scoring, the last 70% are test-then-learn. Items the user has already
    touched are excluded from lists. This reproduces the published FluRS
    numbers (most-popular Recall@10 ~ 0.105 on MovieLens-100K).
``prequential``
    Every event is test-then-learn; only purchased items are excluded.
``last-item``
    Leave-one-out: every event but each user's last is learnt (in stream order),
    then each user's last item is ranked against every item, without learning
    from it; items the user touched are excluded (as RecBole's full ranking
    does, which the published UniSRec and Recformer figures use). With
    ``--validation`` the item before last is held out instead.

Metrics and segments: :mod:`model.eval.metrics`.

Item metadata (``items``) is handed to every model that takes it
(``add_item_metadata``) before the replay, as a catalogue published before the
stream starts, and each such model is waited for until its texts are in
(``await_content``), so that runs are repeatable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from core.types import Event, StateView
from engine.replay.harness import Replica
from model.capabilities import Capabilities, RankingModel
from model.data.synthetic import Switch
from model.eval.metrics import NEW_ITEM_EVENTS, NEW_USER_EVENTS, ModelReport, _LagTracker
from model.items import ItemMeta
from state.views import MemoryStates

__all__ = ["evaluate_models", "give_items", "ItemSchedule", "first_event_times"]


def _batches(events: Sequence[Event], size: int) -> Iterable[Sequence[Event]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]


def evaluate_models(
    models: dict[str, RankingModel],
    warmup: Sequence[Event],
    test: Sequence[Event],
    *,
    k: int = 10,
    batch_size: int = 32,
    switches: Sequence[Switch] | None = None,
    first_seq: int = 0,
    static: Iterable[str] = (),
    freeze_after: int = 0,
    progress: Callable[[int], object] | None = None,
    items: Sequence[ItemMeta] = (),
    states: Callable[[], StateView] = MemoryStates,
    learn_test: bool = True,
    item_times: Mapping[str, int] | None = None,
) -> dict[str, ModelReport]:
    """Replay ``warmup`` (learn only) then ``test`` (test-then-learn) through each model.

    Models named in ``static`` stop fine-tuning after warm-up plus the first
    ``freeze_after`` test events: ``freeze()`` is called on them when they have
    it (their optimiser stops; count memories and user states still move),
    otherwise they stop learning altogether.
    ``switches`` (ground truth, with ``seq`` counted from ``first_seq`` = global
    index of ``test[0]``) enables adaptation lag.
    ``progress(n)`` is called with the number of events done. ``items``: the
    catalogue's metadata, given to the models that take it before the replay, or with
    ``item_times`` (event time per item id) each item just before the first batch that
    reaches its time (:class:`ItemSchedule`).
    ``states`` builds each model's user-state view (default: plain objects in
    memory; :class:`CodecStates` stores them as the worker does). ``learn_test=False``
    scores the ``test`` events without learning from them (the last-item protocol).
    """
    frozen = set(static)
    categories = {ev.item_id: ev.category for ev in [*warmup, *test] if ev.category}
    reports: dict[str, ModelReport] = {name: ModelReport(k) for name in models}
    replicas = {name: Replica(model, k, states) for name, model in models.items()}
    trackers = (
        {name: _LagTracker(switches, categories, k, test, first_seq) for name in models}
        if switches
        else {}
    )
    schedule = ItemSchedule(items, item_times)

    def release(ts: int | None) -> None:
        due = schedule.due(ts)
        if due:
            for name, replica in replicas.items():
                t0 = time.perf_counter()
                give_items(replica.caps, due)
                reports[name].seconds += time.perf_counter() - t0

    release(None)
    item_seen: dict[str, int] = {}
    user_seen: dict[str, int] = {}
    for ev in warmup:
        item_seen[ev.item_id] = item_seen.get(ev.item_id, 0) + 1
        user_seen[ev.user_id] = user_seen.get(ev.user_id, 0) + 1
    for batch in _batches(warmup, batch_size):
        release(batch[-1].ts)
        for name, replica in replicas.items():
            t0 = time.perf_counter()
            replica.step(batch, score=False)
            reports[name].seconds += time.perf_counter() - t0
        if progress is not None:
            progress(len(batch))
    no_learning: set[str] = set()
    seq = first_seq
    for batch in _batches(test, batch_size):
        if frozen and seq - first_seq >= freeze_after:
            for name in frozen & set(models):
                freezes = replicas[name].caps.freezes
                if freezes is not None:
                    freezes.freeze()
                else:
                    no_learning.add(name)
            frozen = set()
        release(batch[-1].ts)
        segments = []
        for ev in batch:
            n_item, n_user = item_seen.get(ev.item_id, 0), user_seen.get(ev.user_id, 0)
            segments.append(
                (
                    "new_items" if n_item < NEW_ITEM_EVENTS else "old_items",
                    "new_users" if n_user < NEW_USER_EVENTS else "old_users",
                )
            )
            item_seen[ev.item_id], user_seen[ev.user_id] = n_item + 1, n_user + 1
        for name, replica in replicas.items():
            t0 = time.perf_counter()
            out = replica.step(batch, learn=learn_test and name not in no_learning)
            reports[name].seconds += time.perf_counter() - t0
            rep = reports[name]
            tracker = trackers.get(name)
            for i, (ev, rank, listed) in enumerate(zip(batch, out.ranks, out.lists, strict=True)):
                rep.add(rank, listed, segments[i])
                if tracker is not None:
                    tracker.observe(seq + i, ev, listed)
        seq += len(batch)
        if progress is not None:
            progress(len(batch))
    for replica in replicas.values():
        replica.close()
    for name, tracker in trackers.items():
        reports[name].lags = tracker.close()
        reports[name].lag_censored = tracker.censored
    return reports


def give_items(caps: Capabilities, items: Sequence[ItemMeta]) -> None:
    """Item metadata to a model that takes it, waiting until its texts are encoded."""
    if caps.takes_items is not None:
        caps.takes_items.add_item_metadata(items)
        caps.takes_items.await_content()


class ItemSchedule:
    """When the replayed models learn each item's metadata.

    Without ``times``, the whole catalogue before the first event. With ``times``
    (event time per item id, :func:`first_event_times`), each item once the replay
    reaches its time, and items without one at the start: a replay of a log with real
    time never lists an item before it exists (a worker learns an item when it is
    published to the items topic).

    >>> from model.items import ItemMeta
    >>> s = ItemSchedule([ItemMeta("a", "A"), ItemMeta("b", "B"), ItemMeta("c", "C")],
    ...                  {"a": 5, "b": 1})
    >>> [m.item_id for m in s.due(None)], [m.item_id for m in s.due(3)]
    (['c'], ['b'])
    >>> [m.item_id for m in s.due(3)], [m.item_id for m in s.due(9)]
    ([], ['a'])
    """

    def __init__(self, items: Sequence[ItemMeta], times: Mapping[str, int] | None = None) -> None:
        if times is None:
            self._start, self._later = list(items), []
        else:
            self._start = [m for m in items if m.item_id not in times]
            # latest first, so the next due is popped from the end
            self._later = sorted(
                (m for m in items if m.item_id in times),
                key=lambda m: times[m.item_id],
                reverse=True,
            )
        self._times = times or {}

    def due(self, ts: int | None) -> list[ItemMeta]:
        """The items to give now: at the start (``ts`` None), else those whose time is
        at most ``ts`` and were not given yet."""
        if ts is None:
            out, self._start = self._start, []
            return out
        out = []
        while self._later and self._times[self._later[-1].item_id] <= ts:
            out.append(self._later.pop())
        return out


def first_event_times(events: Iterable[Event]) -> dict[str, int]:
    """Each item's earliest event time."""
    out: dict[str, int] = {}
    for ev in events:
        if ev.ts < out.get(ev.item_id, ev.ts + 1):
            out[ev.item_id] = ev.ts
    return out
