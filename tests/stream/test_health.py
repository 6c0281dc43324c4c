"""``/healthz``, ``/readyz`` and the stall gauges, on the metrics port of a real worker.

Two stalls: a real one, a restore that cannot end because another producer left
a transaction open on the changelog (read_committed readers wait for it), as a
stopped worker's open transaction does until the broker aborts it; and a batch
step that hangs (``tests.stream.hung_worker``), where the loop itself stops.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from engine.health import Health
from engine.metrics import MetricsServer, WorkerMetrics
from stream.cli.publish import Publisher
from stream.kafka.broker import free_port
from stream.kafka.topics import ensure_topics, topic_specs
from tests.helpers import exposed
from tests.stream.helpers import (
    committed_all,
    make_events,
    make_settings,
    wait_for,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, str]:
    """Status and body of a GET (a 503 is an answer, not an error); 0 when nobody answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_healthz_and_readyz_follow_progress_and_readiness():
    now = [100.0]
    health = Health(stall_after_s=30, clock=lambda: now[0])
    metrics = WorkerMetrics.create(CollectorRegistry())
    metrics.watch(health)
    server = MetricsServer(metrics.registry, free_port(), addr="127.0.0.1", health=health)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(base + "/healthz") == (200, "ok: starting\n")
        assert _get(base + "/readyz") == (503, "not ok: starting\n")
        assert "interest_seconds_since_progress" not in exposed(metrics.registry)

        health.start()
        health.set_ready(True, "consuming 2 partition(s)")
        now[0] += 10
        assert _get(base + "/readyz") == (200, "ok: consuming 2 partition(s)\n")
        assert _get(base + "/healthz")[0] == 200
        seen = exposed(metrics.registry)
        assert seen["interest_seconds_since_progress"] == [({}, 10.0)]
        assert seen["interest_stalled"] == [({}, 0.0)] and seen["interest_ready"] == [({}, 1.0)]

        now[0] += 25  # 35 s without progress: stalled, and so not ready either
        status, body = _get(base + "/healthz")
        assert status == 503 and "no progress for 35s" in body
        assert _get(base + "/readyz")[0] == 503
        seen = exposed(metrics.registry)
        assert seen["interest_stalled"] == [({}, 1.0)] and seen["interest_ready"] == [({}, 0.0)]
        assert _get(base + "/metrics")[0] == 200  # the metrics themselves are still served

        health.progressed()
        assert _get(base + "/healthz")[0] == 200 and _get(base + "/readyz")[0] == 200
    finally:
        server.stop()


def test_a_restore_held_by_an_open_transaction_is_not_ready_then_stalled_then_recovers(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    group = f"health-{uuid.uuid4().hex[:8]}"
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "a", group)
    ensure_topics(settings.kafka, topic_specs(topics))
    with Publisher(settings) as pub:
        pub.publish(make_events(3000, n_users=1500, seed=5))
    cmd = [sys.executable, "-m", "stream.cli", "worker"]

    # A first worker fills the changelog, and stops.
    env = worker_env(kafka_bootstrap, topics, group, tmp_path / "a")
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: committed_all(settings.kafka, group, topics.events, 2), 90, "first run")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)

    # Another producer opens a transaction on changelog partition 0 and leaves it open.
    zombie = Producer(
        settings.kafka.client_config(
            **{"transactional.id": f"zombie-{group}", "transaction.timeout.ms": 120_000}
        )
    )
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce(settings.changelog_topic, b"not a state", b"\x00zombie", partition=0)
    zombie.flush(30)

    # A worker with an empty state dir must restore both partitions; partition 0 cannot end.
    port = free_port()
    env = worker_env(kafka_bootstrap, topics, group, tmp_path / "b") | {
        "INTEREST_METRICS_PORT": str(port),
        "INTEREST_STALL_AFTER_S": "3",
    }
    base = f"http://127.0.0.1:{port}"
    second = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    aborted = False
    try:
        answers: list[tuple[float, str, int, str]] = []

        def probe(path: str) -> tuple[int, str]:
            status, body = _get(base + path)
            answers.append((time.monotonic(), path, status, body))
            return status, body

        wait_for(lambda: "restoring" in probe("/readyz")[1], 60, "/readyz to say restoring")
        assert answers[-1][2] == 503
        assert probe("/healthz")[0] == 200  # restoring, not (yet) stalled
        restoring_at = time.monotonic()
        wait_for(lambda: probe("/healthz")[0] == 503, 30, "/healthz to fail")
        stalled_after = time.monotonic() - restoring_at
        assert "no progress" in answers[-1][3]
        status, body = probe("/readyz")
        assert status == 503 and "stalled" in body
        metrics = _get(base + "/metrics")[1]
        assert "interest_stalled 1.0" in metrics
        assert 'interest_restore_remaining_records{partition="0"}' in metrics

        zombie.abort_transaction(30)  # the transaction ends: the restore can finish
        aborted = True
        wait_for(lambda: probe("/readyz")[0] == 200, 60, "/readyz to be ready")
        assert "consuming 2 partition(s)" in answers[-1][3]
        assert probe("/healthz")[0] == 200
        time.sleep(5)  # idle and caught up for longer than the threshold: not a stall
        assert probe("/healthz")[0] == 200 and probe("/readyz")[0] == 200
        assert "interest_stalled 0.0" in _get(base + "/metrics")[1]
        print(f"stalled {stalled_after:.1f}s after the restore was seen (threshold 3 s)")
    finally:
        if not aborted:
            zombie.abort_transaction(30)
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(60)
        finally:
            if second.poll() is None:
                second.kill()
    assert second.returncode == 0


def test_a_hung_batch_step_fails_healthz_and_recovers(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=2)
    group = f"hang-{uuid.uuid4().hex[:8]}"
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "s", group)
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(2000, n_users=300, seed=8)
    flag = tmp_path / "hang"
    port = free_port()
    env = worker_env(kafka_bootstrap, topics, group, tmp_path / "s") | {
        "HANG_FLAG": str(flag),
        "INTEREST_METRICS_PORT": str(port),
        "INTEREST_STALL_AFTER_S": "3",
    }
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tests.stream.hung_worker", "worker"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        with Publisher(settings) as pub:
            pub.publish(events[:1000])
        wait_for(lambda: committed_all(settings.kafka, group, topics.events, 2), 90, "a start")
        assert _get(base + "/healthz")[0] == 200 and _get(base + "/readyz")[0] == 200

        flag.touch()  # the next batch's step hangs
        hung_at = time.monotonic()
        with Publisher(settings) as pub:
            pub.publish(events[1000:])
        wait_for(lambda: _get(base + "/healthz")[0] == 503, 30, "/healthz to fail")
        seen_after = time.monotonic() - hung_at
        metrics = _get(base + "/metrics")[1]
        assert "interest_stalled 1.0" in metrics and "interest_ready 0.0" in metrics
        assert not committed_all(settings.kafka, group, topics.events, 2)

        flag.unlink()
        wait_for(lambda: committed_all(settings.kafka, group, topics.events, 2), 90, "the rest")
        wait_for(lambda: _get(base + "/healthz")[0] == 200, 10, "/healthz to pass again")
        assert _get(base + "/readyz")[0] == 200
        print(f"/healthz failed {seen_after:.1f}s after the hang began (threshold 3 s)")
    finally:
        flag.unlink(missing_ok=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
