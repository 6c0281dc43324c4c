"""The soak benchmark samples a worker process through a short run, and reports trends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import TRENDS, main, summarize


def test_a_short_soak_samples_the_worker(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("INTEREST_KAFKA_BOOTSTRAP", kafka_bootstrap)
    out = tmp_path / "soak.json"
    argv = ["--minutes", "0.3", "--sample-s", "5", "--rate", "200", "--model", "popular"]
    argv += ["--users", "2000", "--items", "2000", "--partitions", "2"]
    argv += ["--workdir", str(tmp_path / "w"), "--json", str(out), "--csv", str(tmp_path / "s.csv")]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    samples = report["samples"]
    assert len(samples) >= 3 and report["ended_early"] is None
    for s in samples:
        assert s["rss_mib"] > 50 and s["threads"] > 1 and s["open_files"] > 3
        assert s["state_mib"] is not None and s["lag"] is not None
        assert 100 < s["sent_per_s"] < 300
        assert s["cpu_pct"] is not None and s["applied_per_s"] is not None
    # The worker answered the events: latencies were measured and lists were seen.
    assert sum(s["answered"] for s in samples) > 0 and samples[-1]["lists_per_s"] > 0
    assert sum(s["applied_per_s"] for s in samples) > 0
    assert any(s["cpu_ms_per_event"] for s in samples)
    assert set(TRENDS) <= set(report["summary"])
    assert (tmp_path / "s.csv").read_text().count("\n") == len(samples) + 1
    assert "rss_mib" in capsys.readouterr().out


def test_trends_are_start_end_and_slope_per_hour_after_the_warm_up() -> None:
    samples = [
        {"t_min": float(t), **{k: None for k in TRENDS}, "rss_mib": 100.0 + t} for t in range(10)
    ]
    summary = summarize(samples, warmup_min=4)
    assert summary["samples_after_warmup"] == 6
    assert summary["rss_mib"] == {"start": 104.0, "end": 109.0, "slope_per_hour": 60.0}
    assert summary["p99_ms"] == {"start": None, "end": None, "slope_per_hour": None}
