"""Events from any Kafka client end up in one state per user (kcat as the independent client).

The same events go in three ways, each into topics and a consumer group of
their own: kcat with librdkafka's default partitioner (CRC32: most users land
on the wrong partition), kcat with ``partitioner=murmur2_random`` (right), and
``interest-stream publish``. The final states and every user's latest list
must be the same, and the lists read back with kcat must parse.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

from core.types import Event, UserState
from engine.events import decode_recommendation, encode_event
from stream.cli.publish import Publisher
from stream.cli.state import read_states
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker
from tests.conftest import require_tool
from tests.stream.helpers import make_events, make_settings, running_worker, wait_for


class RecentFirst:
    """Lists the user's own recent items, newest first: a list depends on that user only."""

    name = "recent-first"
    version = "recent-first-1"

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        pass

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        items = list(dict.fromkeys(reversed(state.recent_items)))
        return [(item, float(len(items) - i)) for i, item in enumerate(items[:k])]


def _kcat_publish(
    kcat: str, bootstrap: str, topic: str, events: list[Event], extra: list[str]
) -> None:
    lines = []
    for ev in events:
        key, value = encode_event(ev)
        lines.append(key + b"\t" + value)
    # Idempotence keeps each partition in the order sent even when a request is retried
    # under load; it does not change which partition a key goes to.
    out = subprocess.run(
        [
            kcat,
            "-P",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-K",
            "\t",
            "-X",
            "enable.idempotence=true",
            *extra,
        ],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()


def _kcat_lists(kcat: str, bootstrap: str, topic: str) -> dict[str, dict]:
    """Each user's latest list, read back with kcat (read_committed, librdkafka's default)."""
    out = subprocess.run(
        [kcat, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%s\n"],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    latest = {}
    for line in out.stdout.splitlines():
        doc = decode_recommendation(line)
        latest[doc["user_id"]] = {"items": doc["items"], "event_ts": doc["event_ts"]}
    return latest


def _run(kafka_bootstrap, unique_topics, tmp_path, events, publish) -> tuple[dict, dict, int]:
    topics = unique_topics(partitions=4)
    settings = make_settings(kafka_bootstrap, topics, tmp_path / topics.events)
    ensure_topics(settings.kafka, topic_specs(topics))
    publish(settings)
    worker = Worker(settings, RecentFirst())
    with running_worker(worker):
        wait_for(lambda: worker.stats.applied >= len(events), 90, "every event applied")
    stats = worker.stats
    assert stats.consumed == stats.applied + stats.dead_lettered + stats.forwarded
    states = {u: (st.counts, st.recent_items, st.last_ts) for u, st in read_states(settings)}
    kcat = require_tool("kcat")
    return states, _kcat_lists(kcat, kafka_bootstrap, topics.recommendations), stats.forwarded


def test_any_client_any_partitioner_gives_one_state_per_user(
    kafka_bootstrap, unique_topics, tmp_path, caplog
):
    kcat = require_tool("kcat")
    events = make_events(1200, n_users=60, seed=91)

    def by_kcat(*extra: str):
        return lambda s: _kcat_publish(kcat, kafka_bootstrap, s.topics.events, events, [*extra])

    def by_us(settings) -> None:
        with Publisher(settings) as pub:
            pub.publish(events)

    with caplog.at_level("WARNING", logger="interest_stream.worker"):
        crc = _run(kafka_bootstrap, unique_topics, tmp_path, events, by_kcat())
    murmur = _run(
        kafka_bootstrap,
        unique_topics,
        tmp_path,
        events,
        by_kcat("-X", "partitioner=murmur2_random"),
    )
    ours = _run(kafka_bootstrap, unique_topics, tmp_path, events, by_us)

    assert crc[2] > len(events) // 2  # CRC32 put most users on another partition
    assert murmur[2] == ours[2] == 0
    assert "partitioner=murmur2_random" in caplog.text
    for states, lists, _ in (crc, murmur):
        assert states == ours[0]
        assert lists == ours[1]
    assert len(ours[0]) == len({ev.user_id for ev in events})
    assert json.dumps(ours[1])  # every list read back by kcat parsed
