"""The subscriber view of the evaluator, and the refresh policy it shares with the worker."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from core.types import Event, UserState
from engine.replay.subscriber import subscriber_replay, user_batches
from model.refresh import RecentUsers, RefreshPolicy, refresh_lists
from model.step import process_batch
from state.views import MemoryStates
from stream.cli import evaluate as cli
from tests.helpers import ev as _ev

S = 1000  # ms


class Counting:
    """Items ranked by how often they were touched, ties by id; nothing excluded."""

    name = "counting"
    version = "counting-1"

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        for ev in events:
            self.counts[ev.item_id] = self.counts.get(ev.item_id, 0) + 1

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(item, float(n)) for item, n in ranked[:k]]


# Top-1 lists. i3 becomes the most touched item while u1, who was shown i1 at the
# start, is away; u4 arrives once i3 leads.
STREAM = [
    _ev("u1", "i1", 0),  # nothing known yet: a miss for every view
    _ev("u2", "i3", 10 * S),  # newcomer; i1 leads (tie broken by id)
    _ev("u3", "i3", 20 * S),  # newcomer; i1 and i3 tie: still i1
    _ev("u4", "i3", 30 * S),  # newcomer; i3 leads: pull hits, the newcomer list too
    _ev("u1", "i3", 40 * S),  # u1 still holds [i1] unless it was refreshed
]


def _replay() -> dict:
    policy = RefreshPolicy(stale_events=1, max_users=10, interval_ms=S)
    policies = {"refresh": policy, "off": RefreshPolicy(enabled=False)}
    return subscriber_replay({"m": Counting()}, [], STREAM, policies, k=1, batch_size=1)


def test_subscriber_view_on_a_stream_whose_answer_is_known() -> None:
    rep = _replay()["m"]
    assert rep.pull.hits == [0, 0, 0, 1, 1]
    off, on = rep.views["off"], rep.views["refresh"]
    # Without refresh newcomers hold nothing and u1 still holds [i1] at 40 s.
    assert off.report.hits == [0, 0, 0, 0, 0]
    assert off.ages == [40.0]
    # With refresh the newcomer list ([i1] from 1 s, [i3] from 21 s) and u1's
    # refreshed list ([i3] from 21 s) are what users hold.
    assert on.report.hits == [0, 0, 0, 1, 1]
    # Ages are of users' own lists, as the worker's metric: u1's refreshed one.
    assert on.ages == [19.0]
    # Published: the newcomer list twice, u1 and u2 once each when i3 took the lead;
    # every other re-rank gave the list the user held and was not published.
    assert on.refreshed == 4
    assert on.unchanged > 0
    summary = rep.summary(catalogue=2, main="refresh", others={"off": "without_refresh"})
    assert summary["recall"] == 0.4 and summary["without_refresh"]["recall"] == 0.0
    assert summary["pull"]["recall"] == 0.4
    assert summary["lists_refreshed"] == 4 and summary["list_age_median_s"] == 19.0


def test_a_replay_never_holds_two_events_of_one_user_in_a_batch() -> None:
    events = [_ev(f"u{i % 7}", "i", i) for i in range(100)]
    batches = list(user_batches(events, 5))
    assert [ev for b in batches for ev in b] == events
    assert all(len({ev.user_id for ev in b}) == len(b) <= 5 for b in batches)


def test_the_same_seed_gives_the_same_subscriber_numbers() -> None:
    first, second = _replay()["m"], _replay()["m"]
    assert first.views["refresh"].report.hits == second.views["refresh"].report.hits
    assert first.views["refresh"].ages == second.views["refresh"].ages


def test_refresh_never_republishes_the_list_a_user_holds() -> None:
    view, model = MemoryStates(), Counting()
    process_batch([_ev("u1", "i1", 0), _ev("u2", "i2", 1)], view, model, k=2)
    assert view.states["u1"].last_list == ["i1", "i2"]
    recs, same = refresh_lists(["u1", "u2", "nobody"], view, model, k=2)
    assert recs == [] and same == ["u1", "u2"]
    model.learn_many([_ev("u3", "i2", 2)], [UserState()])
    recs, same = refresh_lists(["u1", "u2"], view, model, k=2)
    assert [(r.user_id, [i for i, _ in r.items], r.trigger, r.event_ts) for r in recs] == [
        ("u1", ["i2", "i1"], "refresh", 0),
        ("u2", ["i2", "i1"], "refresh", 1),
    ]
    assert view.states["u1"].last_list == ["i2", "i1"]  # what the user now holds


def test_recent_users_are_bounded_and_picked_stalest_first() -> None:
    recent = RecentUsers(capacity=3)
    for clock, user in enumerate(["a", "b", "c", "d"]):
        recent.published(user, clock, clock * S)
    assert list(recent) == ["b", "c", "d"]  # "a" was the least recently active
    assert recent.stale(clock=10, stale_events=8, limit=5) == ["b", "c"]
    assert recent.stale(clock=10, stale_events=1, limit=2) == ["b", "c"]
    recent.refreshed("b", 10, None)  # re-ranked, unchanged: still the list from 1 s
    assert recent.stale(clock=10, stale_events=1, limit=5) == ["c", "d"]
    assert recent.held_at("b") == 1 * S and recent.ranked_at("b") == 10


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["evaluate", *extra])


def test_cli_subscriber_view_beside_pull(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    args = _args("--events", "1200", "--models", "popular,interest", "--json", str(out))
    args.subscriber = True
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    pull_keys = {"recall", "ndcg", "mrr", "precision", "f1", "coverage"}
    for metrics in result["models"].values():
        sub = metrics["subscriber"]
        assert pull_keys <= set(sub) and pull_keys <= set(sub["without_refresh"])
        assert pull_keys <= set(sub["pull"])
        assert {"lists_refreshed", "list_age_median_s", "refresh_seconds"} <= set(sub)
        assert 0.0 <= sub["without_refresh"]["recall"] <= sub["recall"] <= 1.0
    err = capsys.readouterr().err
    assert "subscriber" in err and "no refresh" in err
    # Pull figures are those of a run without the subscriber view.
    plain = tmp_path / "plain.json"
    args = _args("--events", "1200", "--models", "popular,interest", "--json", str(plain))
    assert args.func(args) == 0
    again = json.loads(plain.read_text())
    for name, metrics in again["models"].items():
        assert "subscriber" not in metrics
        assert {k: v for k, v in metrics.items() if k != "seconds"} == {
            k: v for k, v in result["models"][name].items() if k not in ("seconds", "subscriber")
        }


def test_cli_refresh_flags_must_be_positive(capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["evaluate", "--events", "100", "--subscriber", "--refresh-max-users", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err == [
        "error: --refresh-stale-events, -max-users and -interval-ms must be positive"
    ]
