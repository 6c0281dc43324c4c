"""``interest-stream state show|dump`` read user states from the changelog, no worker running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

from core.partition import partition_for
from core.types import EVENT_TYPES
from state.store import MemoryStore
from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    running_worker,
    wait_for,
)


def _cli(args: list[str], topics, bootstrap: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env["INTEREST_TOPIC_EVENTS"] = topics.events
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "state", *args, "--bootstrap-servers", bootstrap],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_state_show_and_dump_match_what_was_published(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=3)
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "state")
    ensure_topics(settings.kafka, topic_specs(topics))
    events = make_events(900, n_users=40, seed=81)
    with Publisher(settings) as pub:
        pub.publish(events)
    worker = Worker(settings, TinyPopularity(), store=MemoryStore())
    with running_worker(worker):
        wait_for(lambda: worker.stats.applied >= len(events), 60, "events applied")
    expected: dict[str, dict] = defaultdict(
        lambda: {"counts": dict.fromkeys(EVENT_TYPES, 0), "last_ts": 0, "recent_items": []}
    )
    for ev in events:
        doc = expected[ev.user_id]
        doc["counts"][ev.event] += 1
        doc["last_ts"] = ev.ts
        doc["recent_items"].append(ev.item_id)

    group = settings.worker.group
    shown = _cli(["show", "--user", "u7", "--group", group], topics, kafka_bootstrap)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc == {"user_id": "u7", **expected["u7"]}

    dumped = _cli(["dump", "--group", group], topics, kafka_bootstrap)
    assert dumped.returncode == 0, dumped.stderr
    docs = [json.loads(line) for line in dumped.stdout.splitlines()]
    assert {d["user_id"]: d["counts"] for d in docs} == {
        u: e["counts"] for u, e in expected.items()
    }
    # State lives where the user's events go (murmur2, as producers place them).
    assert len({partition_for(u.encode(), 3) for u in expected}) == 3

    missing = _cli(["show", "--user", "nobody", "--group", group], topics, kafka_bootstrap)
    assert missing.returncode == 1 and "no state" in missing.stderr and not missing.stdout
    other = _cli(["dump", "--group", "no-such-group"], topics, kafka_bootstrap)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "no changelog topic" in other.stderr and "Traceback" not in other.stderr
