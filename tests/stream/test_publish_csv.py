"""``publish --format csv`` with the column and behaviour maps of a foreign log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from stream.kafka.topics import ensure_topics, topic_specs
from tests.stream.helpers import read_topic

CSV = (
    "uid,iid,behavior,time\n1,10,pv,1700000000\n2,11,buy,1700000001\nbad,row\n3,12,zzz,1700000002\n"
)


def _publish(kafka_config, topics, data, *extra: str) -> subprocess.CompletedProcess:
    """``interest-stream publish --format csv`` of ``data`` into ``topics.events``."""
    env = {**os.environ, "INTEREST_TOPIC_EVENTS": topics.events, "INTEREST_TOPIC_PARTITIONS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "publish", "--bootstrap-servers"]
        + [kafka_config.bootstrap_servers, "--data", str(data), "--format", "csv", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_publish_maps_columns_and_behaviours(kafka_config, unique_topics, tmp_path):
    topics = unique_topics(partitions=2)
    ensure_topics(kafka_config, topic_specs(topics))
    data = tmp_path / "log.csv"
    data.write_text(CSV)
    out = _publish(
        kafka_config,
        topics,
        data,
        "--columns",
        "user=uid,item=iid,type=behavior,ts=time",
        "--event-map",
        "zzz=cart",
    )
    assert out.returncode == 0, out.stderr
    assert "skipped 1 unreadable row(s)" in out.stderr and "'bad,row'" in out.stderr
    values = sorted(
        (json.loads(m.value()) for m in read_topic(kafka_config, topics.events)),
        key=lambda v: v["ts"],
    )
    assert [(v["user_id"], v["item_id"], v["event"]) for v in values] == [
        ("1", "10", "click"),
        ("2", "11", "purchase"),
        ("3", "12", "cart"),
    ]
    assert values[0]["ts"] == 1_700_000_000_000  # seconds in the file, ms on the topic


def test_a_file_without_one_usable_event_publishes_nothing_and_fails(
    kafka_config, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    data = tmp_path / "bad.csv"
    data.write_text("user,item,type,ts\nu1,a,click,not-a-time\n")
    out = _publish(kafka_config, topics, data)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"interest-stream: error: no usable events in {data}: nothing was published"
    )


def test_relative_times_are_skipped_with_a_hint_or_moved_to_now_with_retime(
    kafka_config, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    data = tmp_path / "relative.csv"
    data.write_text("user,item,type,ts\nu1,a,click,1\nu2,b,click,3\nu1,c,cart,4\n")
    out = _publish(kafka_config, topics, data)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "skipped 3 of 3 event(s) whose time the workers reject" in out.stderr
    assert "--retime" in out.stderr
    before = int(time.time() * 1000)
    out = _publish(kafka_config, topics, data, "--retime")
    assert out.returncode == 0, out.stderr
    values = [json.loads(m.value()) for m in read_topic(kafka_config, topics.events)]
    ts = sorted(v["ts"] for v in values)
    assert len(ts) == 3 and before - 60_000 < ts[-1] <= int(time.time() * 1000)
    assert [t - ts[0] for t in ts] == [0, 2000, 3000]  # the file's gaps, in ms
