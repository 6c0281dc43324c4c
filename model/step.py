"""The pure step shared by every runtime and the offline evaluator.

``process_batch(events, state_view, model)`` scores each event against the
user's state *before* it (so the online hit-rate is honest), lets the model
learn from the batch, updates the user states and returns one refreshed list
per touched user. It never imports Kafka.

Purity contract (who owns what; ``tests/model/test_step.py`` checks it):

* the step reads the batch's users once with ``state_view.get_many`` and owns
  the states it gets (see :class:`core.types.StateView`): it changes them in
  place and hands each one back with ``state_view.put`` at the very end, after
  the model has learnt and ranked;
* if the model raises, nothing has been put: the view is as it was before the
  call, so a caller may retry the batch (the model may have learnt, though:
  see :mod:`engine.isolation` for how the worker avoids learning twice);
* with ``learn="later"`` a model that has ``learn_later`` does at once only
  what must go out with the batch (new items, shared counts) and the returned
  :attr:`~core.types.BatchResult.finish_learning` does the rest; the caller
  runs it before using the model again (the worker: while the batch commits);
* apart from the view, only the model changes (``learn_many``; and
  ``update_state`` for model-owned parts of a state). ``events`` are never
  changed; the returned :class:`core.types.BatchResult` shares nothing with the
  view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from core.types import EVENT_INDEX, BatchResult, Event, Recommendation, StateView, UserState
from model.capabilities import Capabilities, RankingModel, capabilities

__all__ = ["process_batch", "apply_event", "RECENT_CAPACITY"]

RECENT_CAPACITY = 50
SEEN_CAPACITY = 2000


def apply_event(state: UserState, ev: Event) -> None:
    """Fold one event into a user's state (bounded buffers, counters)."""
    state.counts[EVENT_INDEX[ev.event]] += 1
    state.last_ts = max(state.last_ts, ev.ts)
    state.recent_items.append(ev.item_id)
    state.recent_ts.append(ev.ts)
    state.recent_types.append(EVENT_INDEX[ev.event])
    if len(state.recent_items) > RECENT_CAPACITY:
        del state.recent_items[0], state.recent_ts[0], state.recent_types[0]
    if ev.item_id not in state.seen:
        state.seen.append(ev.item_id)
        if len(state.seen) > SEEN_CAPACITY:
            del state.seen[0]
    if ev.event == "purchase" and ev.item_id not in state.purchased:
        state.purchased.append(ev.item_id)
        if len(state.purchased) > SEEN_CAPACITY:
            del state.purchased[0]


def process_batch(
    events: Sequence[Event],
    state_view: StateView,
    model: RankingModel,
    k: int = 10,
    score: bool | Literal["held"] = True,
    keep_lists: bool = False,
    learn: bool | Literal["later"] = True,
    *,
    caps: Capabilities | None = None,
    version: str | None = None,
) -> BatchResult:
    """Test-then-learn on one micro-batch; returns lists for every touched user.

    Each event is scored against its user's state as it was just before the
    event (earlier events of the same batch included) and the model as it was
    before the batch, so an event can never help its own score. ``score="held"``
    scores it instead against the list the user holds (``last_list``, the one
    published after their previous batch): what a subscriber was shown, at no
    ranking cost, which is how the worker measures its online hit rate. Then the model
    learns from the batch (``learn=False`` skips that), the states move on and
    every touched user gets a fresh list. ``keep_lists`` also returns the
    scored lists (for adaptation metrics). ``learn="later"``: the lists are
    ranked before the model's gradient step on the batch, which comes back as
    ``result.finish_learning`` (for models that learn later; others learn
    at once). ``caps``: the model's capabilities (:func:`model.capabilities.capabilities`,
    checked here when not given); ``version``: what the lists say they were
    ranked with (default: the model's version).

    >>> from core.types import Event
    >>> from state.views import MemoryStates
    >>> from model.baselines.popular import MostPopular
    >>> view, model = MemoryStates(), MostPopular()
    >>> t = 1767225600000
    >>> first = [Event("u1", "i1", "click", t), Event("u2", "i1", "click", t + 1),
    ...          Event("u2", "i2", "purchase", t + 2)]
    >>> result = process_batch(first, view, model, k=2)
    >>> [(rec.user_id, [item for item, _ in rec.items]) for rec in result.recommendations]
    [('u1', ['i1', 'i2']), ('u2', ['i1'])]
    >>> view.states["u2"].purchased
    ['i2']
    >>> result = process_batch([Event("u1", "i2", "click", t + 3)], view, model, k=2)
    >>> result.ranks  # i2 was second in u1's list before this event
    [1]
    """
    caps = capabilities(model) if caps is None else caps
    users = list(dict.fromkeys(ev.user_id for ev in events))
    states = state_view.get_many(users)
    result = BatchResult()
    before: list[UserState] = []
    owner = caps.keeps_user_parts
    # A model that says what it reads of a state copies only that (one copy per event).
    reader = caps.reads_part_of_state
    snapshot = reader.state_before if reader is not None else UserState.copy
    for ev in events:
        st = states.get(ev.user_id)
        if st is None:
            st = states[ev.user_id] = UserState()
        before.append(snapshot(st))
        apply_event(st, ev)
        if owner is not None:
            owner.update_state(st, ev)
    if score == "held":
        for ev, st in zip(events, before, strict=True):
            held = st.last_list
            result.ranks.append(held.index(ev.item_id) if ev.item_id in held else None)
            if keep_lists:
                result.lists.append(list(held))
        result.scored += len(events)
    elif score:
        lists = caps.rank_many([ev.user_id for ev in events], before, k)
        for ev, ranked in zip(events, lists, strict=True):
            ids = [item for item, _ in ranked]
            result.ranks.append(ids.index(ev.item_id) if ev.item_id in ids else None)
            if keep_lists:
                result.lists.append(ids)
        result.scored += len(events)
    else:
        result.ranks.extend([None] * len(events))
    if learn == "later" and caps.learns_later is not None:
        result.finish_learning = caps.learns_later.learn_later(events, before)
    elif learn and caps.learns is not None:
        caps.learns.learn_many(events, before)
    final = [states[u] for u in users]
    fresh = caps.rank_many(users, final, k)
    served = version or model.version
    reasons = caps.explain_many(users, final, fresh)
    for user, st, items, why in zip(users, final, fresh, reasons, strict=True):
        st.last_list = [item for item, _ in items]
        state_view.put(user, st)
        result.recommendations.append(Recommendation(user, tuple(items), served, st.last_ts, why))
    return result
