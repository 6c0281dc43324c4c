"""A real Prometheus server scrapes a running worker and sees what it did."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from stream.cli.publish import Publisher
from stream.kafka.broker import free_port
from stream.runtime.native import Worker
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    running_worker,
    wait_for,
)


def _start_prometheus(binary: str, target: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: interest-stream\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    address = f"127.0.0.1:{free_port()}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://{address}"


def _query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)["data"]["result"]
    except OSError:
        return []


def _value(base: str, expr: str) -> float | None:
    result = _query(base, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_worker_metrics(
    prometheus_bin, kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    port = free_port()
    settings = make_settings(
        kafka_bootstrap, topics, tmp_path / "state", "g-prom", metrics_port=port
    )
    events = make_events(600, n_users=40)
    worker = Worker(settings, TinyPopularity())
    prom, base = _start_prometheus(prometheus_bin, f"127.0.0.1:{port}", tmp_path)
    try:
        with running_worker(worker):
            wait_for(lambda: worker.metrics_url is not None, 60, "the metrics endpoint")
            with Publisher(settings) as pub:
                pub.publish(events)
                pub.send(b"u1", b"{broken json")
            wait_for(lambda: worker.stats.consumed == len(events) + 1, 60, "the worker")
            wait_for(
                lambda: _value(base, 'up{job="interest-stream"}') == 1.0,
                60,
                "Prometheus to scrape the worker",
            )
            wait_for(
                lambda: _value(base, "interest_events_applied_total") == len(events),
                30,
                "the applied count in Prometheus",
            )
            assert _value(base, 'interest_dead_letters_total{reason="not-json"}') == 1.0
            by_type = {
                r["metric"]["event"]: float(r["value"][1])
                for r in _query(base, "interest_events_consumed_total")
            }
            assert sum(by_type.values()) == len(events)
            assert by_type["click"] == sum(e.event == "click" for e in events)
            assert _value(base, "interest_lists_published_total") == worker.stats.lists_published
            latency_count = _value(base, "interest_event_to_list_latency_seconds_count")
            assert latency_count == len(events)
    finally:
        prom.terminate()
        prom.wait(timeout=20)
