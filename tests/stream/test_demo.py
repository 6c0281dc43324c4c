"""``interest-stream demo`` (what ``make demo`` runs) end to end, embedded broker included."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from stream.config import BOOTSTRAP_ENV


def test_demo_runs_its_own_broker_and_every_event_is_accounted_for(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env["INTEREST_CACHE_DIR"] = os.environ.get(
        "INTEREST_CACHE_DIR", os.path.expanduser("~/.cache/interest-stream")
    )
    assert BOOTSTRAP_ENV not in env
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--seconds", "8", "--rate", "400",
         "--metrics-port", "0"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "starting the embedded Kafka broker" in out.stderr
    assert "stopping the Kafka broker" in out.stderr
    m = re.search(
        r"summary: (\d+) events published, (\d+) applied, (\d+) dead-lettered, "
        r"(\d+) lists published, latency p50 (\d+) ms, p99 (\d+) ms",
        out.stdout,
    )
    assert m, out.stdout[-2000:]
    published, applied, dead, lists = (int(g) for g in m.groups()[:4])
    assert published > 1000
    assert applied + dead == published
    assert dead >= 1  # the demo's malformed messages went to the dead-letter topic
    assert 0 < lists <= applied
    # The followed users are on screen with their lists.
    assert re.search(r"interest now: c\d+\s+list: \d+/10 in it", out.stdout)
