"""The commands a user runs: one clear error line and a non-zero exit, never a traceback."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from confluent_kafka import Producer

from core.types import Recommendation
from engine.events import decode_recommendation, encode_recommendation
from stream.cli.tail import tail
from stream.config import KafkaConfig, Settings
from stream.kafka.topics import ensure_topics, topic_specs
from tests.stream.helpers import read_topic, wait_for

CLI = [sys.executable, "-m", "stream.cli"]


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    return subprocess.run(
        CLI + args, env=base | (env or {}), capture_output=True, text=True, timeout=timeout
    )


def _one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_worker_without_bootstrap_servers(tmp_path):
    proc = _run(["worker", "--state-dir", str(tmp_path)])
    _one_clear_line(proc, "bootstrap")


def test_worker_with_unreachable_broker(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run(
        [
            "worker",
            "--bootstrap-servers",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(tmp_path),
            "--metrics-port",
            "0",
        ]
    )
    _one_clear_line(proc, "cannot reach Kafka", f"127.0.0.1:{port}")


def test_worker_with_bad_config(tmp_path):
    proc = _run(
        ["worker", "--bootstrap-servers", "127.0.0.1:9", "--state-dir", str(tmp_path)],
        env={"INTEREST_BATCH_MAX_EVENTS": "many"},
    )
    _one_clear_line(proc, "batch_max_events")
    assert proc.returncode == 2


def test_worker_with_bad_snapshot_setting(tmp_path):
    proc = _run(
        ["worker", "--bootstrap-servers", "127.0.0.1:9", "--state-dir", str(tmp_path)],
        env={"INTEREST_SNAPSHOT_EVERY_S": "often"},
    )
    _one_clear_line(proc, "INTEREST_SNAPSHOT_EVERY_S")
    assert proc.returncode == 2
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[worker]\nbatch_max_ms = \n")
    _one_clear_line(_run(["worker", "--config", str(bad_toml)]), "TOML")


def test_worker_with_unwritable_state_dir(kafka_bootstrap, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = _run(
        [
            "worker",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--metrics-port",
            "0",
            "--state-dir",
            str(blocker / "state"),
        ]
    )
    _one_clear_line(proc, "state dir", "not writable")


def test_worker_with_metrics_port_in_use(kafka_bootstrap, tmp_path, unique_topics):
    topics = unique_topics(partitions=1)
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _run(
            [
                "worker",
                "--bootstrap-servers",
                kafka_bootstrap,
                "--state-dir",
                str(tmp_path),
                "--metrics-port",
                str(port),
            ],
            env={"INTEREST_TOPIC_EVENTS": topics.events},
        )
    _one_clear_line(proc, "metrics", str(port))


def test_publish_csv_file_in_time_order(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=2)
    data = tmp_path / "events.csv"
    data.write_text(
        "user,item,type,ts\n"
        "7,i2,purchase,1700000002000\n"
        "u1,i1,click,1700000000000\n"
        "u1,i3,cart,1700000001000\n"
    )
    env = {
        "INTEREST_TOPIC_EVENTS": topics.events,
        "INTEREST_TOPIC_RECOMMENDATIONS": topics.recommendations,
        "INTEREST_TOPIC_DEAD_LETTER": topics.dead_letter,
        "INTEREST_TOPIC_PARTITIONS": "2",
    }
    proc = _run(
        ["publish", "--bootstrap-servers", kafka_bootstrap, "--data", str(data), "--format", "csv"],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "published 3 event(s)" in proc.stderr
    msgs = read_topic(KafkaConfig(bootstrap_servers=kafka_bootstrap), topics.events)
    docs = sorted((json.loads(m.value())["ts"], m.key(), json.loads(m.value())) for m in msgs)
    assert [(k, d["user_id"], d["event"]) for _, k, d in docs] == [
        (b"u1", "u1", "click"),
        (b"u1", "u1", "cart"),
        (b"7", "7", "purchase"),
    ]
    assert len({m.partition() for m in msgs if m.key() == b"u1"}) == 1


def test_publish_needs_data_for_files():
    proc = _run(["publish", "--bootstrap-servers", "127.0.0.1:9", "--format", "csv"])
    _one_clear_line(proc, "--data")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "synthetic", "--items", "1"], "--items must be at least 2"),
        (
            ["--format", "csv", "--data", "x.csv", "--items", "100"],
            "--items is for --format synthetic",
        ),
    ],
)
def test_publish_items_mistakes_are_one_line(extra, message):
    _one_clear_line(_run(["publish", "--bootstrap-servers", "127.0.0.1:9", *extra]), message)


def test_publish_a_synthetic_catalogue_of_a_given_size(kafka_bootstrap, unique_topics):
    topics = unique_topics(partitions=1)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    ensure_topics(kafka, topic_specs(topics))
    args = ["publish", "--bootstrap-servers", kafka_bootstrap, "--format", "synthetic"]
    proc = _run(
        [*args, "--items", "200000", "--limit", "300"],
        env={"INTEREST_TOPIC_EVENTS": topics.events},
    )
    assert proc.returncode == 0, proc.stderr
    items = {json.loads(m.value())["item_id"] for m in read_topic(kafka, topics.events)}
    # Item ids run up to the catalogue size (the default catalogue has about 500 items).
    assert len(items) > 200 and max(int(i[1:]) for i in items) > 10_000


def test_tail_prints_lists_for_one_user(kafka_bootstrap, unique_topics):
    topics = unique_topics(partitions=1)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    ensure_topics(kafka, topic_specs(topics))
    settings = Settings(kafka=kafka, topics=topics)
    got: list[dict] = []
    stop = threading.Event()

    def on_list(doc: dict) -> None:
        got.append(doc)
        if len(got) == 2:
            stop.set()

    th = threading.Thread(
        target=tail,
        kwargs=dict(settings=settings, user="u2", stop=stop, from_beginning=True, on_list=on_list),
    )
    th.start()
    p = Producer(kafka.client_config())
    for i, user in enumerate(["u1", "u2", "u3", "u2"]):
        rec = Recommendation(user, (("a", 1.0),), "m", i)
        key, value = encode_recommendation(rec, 1000 + i)
        p.produce(topics.recommendations, value, key)
    p.flush(10)
    th.join(30)
    stop.set()
    assert not th.is_alive()
    assert [(d["user_id"], d["event_ts"]) for d in got] == [("u2", 1), ("u2", 3)]
    first = decode_recommendation(read_topic(kafka, topics.recommendations)[0].value())
    assert first == {
        "user_id": "u1",
        "items": [{"item_id": "a", "score": 1.0}],
        "model_version": "m",
        "generated_at": 1000,
        "event_ts": 0,
        "trigger": "events",
    }


@pytest.mark.parametrize(
    "command",
    [
        ["worker", "--metrics-port", "0"],
        ["tail"],
        ["topics"],
        ["publish", "--format", "synthetic", "--limit", "1"],
    ],
)
def test_client_setting_librdkafka_rejects(command, tmp_path):
    proc = _run(
        command + ["--bootstrap-servers", "127.0.0.1:9", "-X", "no.such.setting=1"],
        env={"INTEREST_STATE_DIR": str(tmp_path)},
    )
    _one_clear_line(proc, "no.such.setting")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_worker_stops_cleanly_on_signal(kafka_bootstrap, unique_topics, tmp_path, sig):
    topics = unique_topics(partitions=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")} | {
        "INTEREST_TOPIC_EVENTS": topics.events,
        "INTEREST_TOPIC_RECOMMENDATIONS": topics.recommendations,
        "INTEREST_TOPIC_DEAD_LETTER": topics.dead_letter,
        "INTEREST_MODEL": "popular",
        "INTEREST_LOG_LEVEL": "INFO",
    }
    proc = subprocess.Popen(
        CLI
        + [
            "worker",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--group",
            f"sig-{sig.name}",
            "--state-dir",
            str(tmp_path),
            "--metrics-port",
            "0",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:  # assignments are logged at INFO
            if "assigned" in line:
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "worker stopped" in err and "Traceback" not in err


def test_tail_survives_malformed_lists(kafka_bootstrap, unique_topics):
    topics = unique_topics(partitions=1)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    ensure_topics(kafka, topic_specs(topics))
    p = Producer(kafka.client_config())
    for value in (b'{"items":[1,2]}', b'{"items":[{"item_id":"a"}]}', b'{"items":{}}', b"[]"):
        p.produce(topics.recommendations, value, b"u1")
    key, value = encode_recommendation(Recommendation("u9", (("a", 1.0),), "m", 5), 1000)
    p.produce(topics.recommendations, value, key)
    p.flush(10)
    out, stop, errors = io.StringIO(), threading.Event(), []

    def run() -> None:
        try:
            tail(Settings(kafka=kafka, topics=topics), out=out, stop=stop, from_beginning=True)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    th = threading.Thread(target=run)
    th.start()
    try:
        wait_for(lambda: " u9 " in out.getvalue() or not th.is_alive(), 30, "the good list")
    finally:
        stop.set()
        th.join(30)
    assert not errors, errors
    lines = out.getvalue().splitlines()
    assert lines[:4] == [f"(unreadable list at offset {i})" for i in range(4)]
    assert " u9 [m] a:1" in lines[4]


def test_publish_uses_an_existing_topic_with_another_partition_count(
    kafka_bootstrap, unique_topics
):
    topics = unique_topics(partitions=3)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    ensure_topics(kafka, topic_specs(topics))
    env = {
        "INTEREST_TOPIC_EVENTS": topics.events,
        "INTEREST_TOPIC_RECOMMENDATIONS": topics.recommendations,
        "INTEREST_TOPIC_DEAD_LETTER": topics.dead_letter,
    }  # partitions: the default 4
    proc = _run(
        [
            "publish",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--format",
            "synthetic",
            "--limit",
            "20",
        ],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        f"topic {topics.events} exists with 3 partitions (the topics created here get 4"
        in proc.stderr
    )
    assert "published 20 event(s)" in proc.stderr
    assert len(read_topic(kafka, topics.events)) == 20
