"""The faust-streaming runtime runs the same pipeline as the native one: same states, same lists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.chaos import committed_messages, group_lag
from engine.events import decode_recommendation
from stream.cli.publish import Publisher
from stream.cli.state import read_states
from stream.config import KafkaConfig, Settings, TopicsConfig, WorkerConfig
from stream.kafka.topics import ensure_topics, topic_specs
from tests.stream.helpers import make_events, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _worker(
    bootstrap: str, topics: TopicsConfig, group: str, state: Path, runtime: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env.update(
        {
            "INTEREST_TOPIC_EVENTS": topics.events,
            "INTEREST_TOPIC_RECOMMENDATIONS": topics.recommendations,
            "INTEREST_TOPIC_DEAD_LETTER": topics.dead_letter,
            "INTEREST_TOPIC_PARTITIONS": "1",
            "INTEREST_BATCH_MAX_EVENTS": "1",  # one event a batch: the same model steps in both
            "INTEREST_BATCH_CATCH_UP_EVENTS": "1",  # (the native worker's would grow)
            "INTEREST_MODEL": "interest",
            "INTEREST_SNAPSHOT_EVERY_S": "0",
            # Refresh passes run on the clock: their lists would differ from run to run.
            "INTEREST_REFRESH_BUDGET_PERCENT": "0",
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "worker",
        "--runtime",
        runtime,
        "--bootstrap-servers",
        bootstrap,
        "--group",
        group,
        "--state-dir",
        str(state),
        "--metrics-port",
        "0",
    ]
    if runtime == "native":
        cmd += ["--guarantee", "at-least-once"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _run(bootstrap: str, events_topic: str, runtime: str, tmp: Path, n: int) -> tuple:
    tag = uuid.uuid4().hex[:6]
    topics = TopicsConfig(
        events=events_topic,
        recommendations=f"{events_topic}.{tag}.lists",
        dead_letter=f"{events_topic}.{tag}.dead",
        partitions=1,
    )
    settings = Settings(
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        topics=topics,
        worker=WorkerConfig(group=f"{runtime}-{tag}"),
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    log = tmp / f"{runtime}.log"
    proc = _worker(bootstrap, topics, settings.worker.group, tmp / runtime, runtime, log)
    try:
        wait_for(
            lambda: group_lag(settings) == 0 or proc.poll() is not None,
            180,
            f"the {runtime} worker to process {n} events",
        )
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    out = log.read_text()
    states = {
        u: (st.counts, st.recent_items, st.last_ts, st.last_list) for u, st in read_states(settings)
    }
    lists = [
        decode_recommendation(v)
        for _, v in committed_messages(settings.kafka, topics.recommendations)
    ]
    return states, [(d["user_id"], d["items"], d["event_ts"]) for d in lists], out


def test_faust_and_native_runtimes_give_the_same_states_and_lists(kafka_bootstrap, tmp_path):
    events_topic = f"t{uuid.uuid4().hex[:8]}.events"
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    ensure_topics(kafka, topic_specs(TopicsConfig(events=events_topic, partitions=1)))
    events = make_events(250, n_users=25, n_items=60, seed=95)
    with Publisher(Settings(kafka=kafka, topics=TopicsConfig(events=events_topic))) as pub:
        pub.publish(events)
    t0 = time.monotonic()
    native = _run(kafka_bootstrap, events_topic, "native", tmp_path, len(events))
    faust = _run(kafka_bootstrap, events_topic, "faust", tmp_path, len(events))
    assert time.monotonic() - t0 < 600
    assert "at-least-once" in faust[2] and "Traceback" not in faust[2]
    assert len(native[0]) == len({ev.user_id for ev in events})
    assert faust[0] == native[0]  # the same user states, last published lists included
    assert len(native[1]) == len(events)  # one list per event: one event per batch
    assert faust[1] == native[1]  # the same lists, in the same order


def test_the_faust_runtime_refuses_exactly_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "worker",
            "--runtime",
            "faust",
            "--guarantee",
            "exactly-once",
            "--bootstrap-servers",
            "127.0.0.1:9",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "at-least-once only" in out.stderr
    assert "Traceback" not in out.stderr
