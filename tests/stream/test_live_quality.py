"""Lists held live through Kafka agree with the evaluator's subscriber replay where they must.

One worker process serves the ``popular`` model (deterministic) on one
partition; the replay of :mod:`bench.live_quality` sends the scored events one
at a time (each once the list covering the one before came), so every batch
is one event, as in the evaluator's replay with ``batch_size=1``. Then:

* a list the user holds because of their own previous event is the same list
  live and offline (both ranked after the same events by the same model);
* a refreshed list, live, is what the model ranks for that user at some point
  between their previous event and this one (offline: every ranking of the
  user at each event in between), and so is the newcomer list for an empty
  state: refresh publishes what the evaluator credits it with;
* both replays hold refreshed lists (the policy ran), and live Recall@K is
  computed from these very lists.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.live_quality import LiveConfig, _distinct_ts, run_live
from core.types import UserState
from engine.replay.subscriber import subscriber_replay
from model.baselines.popular import MostPopular
from model.data.synthetic import SyntheticStream
from model.refresh import RefreshPolicy
from model.step import process_batch
from state.views import MemoryStates

K = 10
POLICY = RefreshPolicy(stale_events=15, max_users=64, interval_ms=200)


def _events() -> tuple[list, list]:
    stream = list(SyntheticStream(seed=5, n_users=16, n_events=360))
    events = _distinct_ts([replace(ev, event="purchase") for ev in stream])
    return events[:100], events[100:]


Rankings = dict[str, list[tuple[set[tuple[str, ...]], set[tuple[str, ...]]]]]


def _rankings(warm: list, scored: list) -> Rankings:
    """user -> for each of their scored events: every list the model ranked for them
    since their previous event (one event at a time; popular counts do not depend on
    how events were batched), and every newcomer list so far."""
    model, view = MostPopular(), MemoryStates()
    users = {ev.user_id for ev in [*warm, *scored]}
    since: dict[str, set[tuple[str, ...]]] = {u: set() for u in users}
    newcomers: set[tuple[str, ...]] = set()
    out: Rankings = {u: [] for u in users}
    for i, ev in enumerate([*warm, *scored]):
        if i >= len(warm):
            out[ev.user_id].append((since[ev.user_id], set(newcomers)))
        since[ev.user_id] = set()
        process_batch([ev], view, model, k=K, score=False)
        for user, st in view.states.items():
            since[user].add(tuple(item for item, _ in model.rank(user, st, K)))
        newcomers.add(tuple(item for item, _ in model.rank("", UserState(), K)))
    return out


@pytest.mark.timeout(240)
def test_held_lists_live_agree_with_the_evaluator(kafka_bootstrap: str, tmp_path) -> None:
    warm, scored = _events()
    cfg = LiveConfig(
        workers=1,
        model="popular",
        k=K,
        partitions=1,
        policy=POLICY,
        budget_percent=50,
        sequential=True,
        timeout_s=10.0,
    )
    live: list[tuple[str, int, str, tuple[str, ...]]] = []
    figures = run_live(cfg, kafka_bootstrap, tmp_path, warm, scored, trace=live)
    reports = subscriber_replay(
        {"popular": MostPopular()}, warm, scored, {"refresh": POLICY}, k=K, batch_size=1, trace=True
    )
    offline = reports["popular"].views["refresh"].trace
    assert offline is not None and len(live) == len(offline) == len(scored)
    assert figures["previous_list_missing_share"] == 0.0

    # Both replays scored the same events in the same order.
    assert [(u, ts) for u, ts, _, _ in live] == [(u, ts) for u, ts, _, _ in offline]
    # Recall is computed from the lists traced.
    hits = sum(ev.item_id in held for ev, (_, _, _, held) in zip(scored, live, strict=True))
    assert figures["recall"] == round(hits / len(scored), 5)

    # The user's own event lists: identical, once the previous event was a scored one
    # (warm-up batches depend on how the worker drained the backlog).
    first_scored: dict[str, int] = {}
    compared = 0
    for i, ((user, _, kind, held), (_, _, kind_off, held_off)) in enumerate(
        zip(live, offline, strict=True)
    ):
        first = first_scored.setdefault(user, i)
        if kind == kind_off == "events" and first < i:
            assert held == held_off, f"event {i}: {user} holds {held} live, {held_off} offline"
            compared += 1
    assert compared > 100

    # Refreshed and newcomer lists: what the model ranked for the user meanwhile.
    rankings = _rankings(warm, scored)
    at: dict[str, int] = {}
    refreshed = 0
    for user, _, kind, held in live:
        n = at.get(user, 0)
        at[user] = n + 1
        own, newcomers = rankings[user][n]
        if kind in ("refresh", "newcomers"):
            assert held in (own if kind == "refresh" else newcomers), (
                f"{user}: a {kind} list the model never ranked"
            )
            refreshed += kind == "refresh"
    assert refreshed > 0
    assert any(kind == "refresh" for _, _, kind, _ in offline)
