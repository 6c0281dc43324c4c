"""Evaluator: FluRS split, metric arithmetic, adaptation lag, and the CLI end to end."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from model.data.synthetic import Switch
from model.eval.metrics import ModelReport, _LagTracker, split_flurs
from stream.cli import evaluate as cli
from tests.helpers import ev as _ev


def test_flurs_split_keeps_positives_in_order() -> None:
    events = [_ev("u", f"i{i}", i) for i in range(100)]
    ratings = [5.0 if i % 2 else 3.0 for i in range(100)]
    train, update, test = split_flurs(events, ratings)
    assert (len(train), len(update), len(test)) == (10, 5, 35)
    assert all(int(e.item_id[1:]) % 2 for e in train + update + test)
    assert train[-1].ts < update[0].ts and update[-1].ts < test[0].ts
    assert sum(map(len, split_flurs(events, None))) == 100


def test_report_metrics_follow_their_definitions() -> None:
    rep = ModelReport(k=10)
    rep.add(0, ["a", "b"])
    rep.add(2, ["c"])
    rep.add(None, ["a"])
    rep.add(None, [])
    out = rep.summary(catalogue=6, with_lag=False)
    assert out["recall"] == 0.5
    assert out["precision"] == 0.05
    assert out["mrr"] == pytest.approx((1 + 1 / 3) / 4, abs=1e-5)
    assert out["ndcg"] == pytest.approx((1 + 1 / math.log2(4)) / 4, abs=1e-5)
    assert out["f1"] == pytest.approx(2 * 0.05 * 0.5 / 0.55, abs=1e-5)
    assert out["coverage"] == 0.5


def test_lag_counts_user_events_until_the_list_follows() -> None:
    cats = {f"n{i}": "new" for i in range(10)} | {f"o{i}": "old" for i in range(10)}
    old = [f"o{i}" for i in range(10)]
    mixed = [f"n{i}" for i in range(6)] + old[:4]
    # u switches at seq 1, v at seq 2, w near the end: too few events to judge.
    events = (
        [_ev("u", "x")] + [_ev(u, "x") for _ in range(12) for u in ("u", "v")] + [_ev("w", "x")] * 3
    )
    switches = [
        Switch(1, "u", "old", "new"),
        Switch(2, "v", "old", "new"),
        Switch(len(events) - 3, "w", "old", "new"),
    ]
    tracker = _LagTracker(switches, cats, k=10, events=events, first_seq=0)
    assert tracker.censored == 1
    u_seen = 0
    for seq, ev in enumerate(events):
        listed = old
        if ev.user_id == "u" and seq >= 1:
            listed = mixed if u_seen == 2 else old  # u's list follows after 2 events
            u_seen += 1
        tracker.observe(seq, ev, listed)  # v's list never follows
    assert tracker.close() == [2.0, math.inf]


def _args(**kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    base = ["evaluate"]
    for key, value in kw.items():
        base += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(base)


def test_cli_synthetic_writes_json_with_all_models_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    args = _args(format="synthetic", protocol="prequential", events=1500, json=out, plot=png)
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"protocol", "k", "events_tested", "content", "models"}
    assert result["content"] == {"items": 0}  # synthetic items have no metadata
    assert set(result["models"]) == {
        "interest",
        "interest-static",
        "interest-nocontent",
        "popular",
        "imf",
        "itemknn",
    }
    assert result["events_tested"] == 1500
    for metrics in result["models"].values():
        assert {
            "recall",
            "ndcg",
            "mrr",
            "precision",
            "f1",
            "coverage",
            "lag_median",
            "lag_p90",
        } <= set(metrics)
        assert 0.0 <= metrics["recall"] <= 1.0
        segments = metrics["segments"]
        assert set(segments) == {"new_items", "old_items", "new_users", "old_users"}
        assert segments["new_items"]["events"] + segments["old_items"]["events"] == 1500
        assert segments["new_users"]["events"] + segments["old_users"]["events"] == 1500
        assert {"recall", "ndcg", "mrr", "precision", "f1", "coverage"} <= set(
            segments["new_users"]
        )
    assert png.stat().st_size > 1000


def test_cli_flurs_on_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    # 20 users one after the other, each walking 15 steps along a ring of 60 items
    # from its own start: the next item always follows the current one.
    rows = [
        f"u{u},i{(u * 17 + j) % 60},click,{1000 + 15 * u + j}" for u in range(20) for j in range(15)
    ]
    path.write_text("user,item,type,ts\n" + "\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    args = _args(data=path, format="csv", protocol="flurs", models="popular,itemknn", k=5, json=out)
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    # No ratings: every event is positive; 30% warm up (train + update), 70% are scored.
    assert (result["protocol"], result["k"], result["events_tested"]) == ("flurs", 5, 210)
    assert set(result["models"]) == {"popular", "itemknn"}
    # Item-kNN learns "after i comes i+1" from earlier users; popularity ignores order.
    assert result["models"]["itemknn"]["recall"] > result["models"]["popular"]["recall"]
    assert result["models"]["popular"]["coverage"] > 0


def test_cli_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["evaluate", "--format", "recbole", "--data", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: ")
    assert cli.main(["evaluate", "--format", "csv"]) != 0
    assert cli.main(["evaluate", "--models", "popular,magic", "--events", "100"]) != 0
