"""``interest-stream demo`` (what ``make demo`` runs) end to end, embedded broker included."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from stream.config import BOOTSTRAP_ENV
from stream.kafka.broker import free_port


@pytest.mark.kafka  # starts a broker of its own
def test_demo_runs_its_own_broker_and_every_event_is_accounted_for(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env["INTEREST_CACHE_DIR"] = os.environ.get(
        "INTEREST_CACHE_DIR", os.path.expanduser("~/.cache/interest-stream")
    )
    assert BOOTSTRAP_ENV not in env
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "demo",
            "--seconds",
            "8",
            "--rate",
            "400",
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
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


def test_demo_on_a_given_cluster_keeps_to_its_own_topics_and_group(kafka_bootstrap, tmp_path):
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    before = set(admin.list_topics(timeout=10).topics)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    port = free_port()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "demo",
            "--seconds",
            "5",
            "--metrics-port",
            str(port),
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "starting the embedded Kafka broker" not in out.stderr
    tag = re.search(r"with topics (interest-demo-[0-9a-f]{8})\.\* and group \1", out.stderr)
    assert tag, out.stderr
    assert re.search(r"summary: \d+ events published", out.stdout)
    # How to watch the worker without Grafana.
    url = f"http://localhost:{port}/metrics"
    assert f"worker metrics: {url} " in out.stderr
    assert f"interest-stream top --url {url})" in out.stderr
    after = set(admin.list_topics(timeout=10).topics)
    assert "interest.events" not in after - before
    assert not {t for t in after if t.startswith(tag.group(1))}
