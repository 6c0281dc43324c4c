"""Live fuzz: hundreds of hostile messages in valid traffic, through a real worker and broker.

The worker stays up, accounts for every message (consumed = applied +
dead-lettered, each one where :func:`decode_event` puts it), and no published
list carries an id that breaks the id rules of docs/concepts/events.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from core.types import Event, UserState
from engine.events import (
    NEWCOMERS_ID,
    EventValidator,
    Rejected,
    decode_event,
    decode_recommendation,
    encode_event,
)
from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.native import Worker
from tests.stream.helpers import make_events, make_settings, read_topic, running_worker, wait_for
from tests.stream.hostile import hostile_messages, id_rule_broken

pytestmark = pytest.mark.kafka

N_VALID = 2000
N_HOSTILE = 400
BATCH = 50


class LatestBatchItems:
    """Ranks the items of the batch it learned last: every applied item reaches a list."""

    name = "latest-batch"
    version = "latest-batch-1"

    def __init__(self) -> None:
        self.latest: list[str] = []

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        self.latest = list(dict.fromkeys(ev.item_id for ev in events))

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        return [(item, 1.0) for item in self.latest[:k]]


def test_hostile_messages_never_reach_the_lists(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=3)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        batch_max_events=BATCH,
        batch_catch_up_events=BATCH,  # k covers every item of a batch: batches never grow
        k=BATCH + 10,
        max_payload_bytes=4096,
    )
    ensure_topics(settings.kafka, topic_specs(topics))
    now = int(time.time() * 1000)
    valid = make_events(N_VALID, n_users=50, seed=16)
    hostile = hostile_messages(N_HOSTILE, now)
    # Where each hostile message must end up (none of them is near a time limit).
    validator = EventValidator(max_payload_bytes=4096)
    verdicts = [decode_event(k, v, now, validator, now) for k, v in hostile]
    rejected = [(m, r) for m, r in zip(hostile, verdicts, strict=True) if isinstance(r, Rejected)]
    accepted = [r for r in verdicts if not isinstance(r, Rejected)]
    reasons = Counter(r.reason for _, r in rejected)
    assert reasons["bad-id"] >= 60 and len(accepted) >= 20  # the generator still bites

    registry = CollectorRegistry()
    worker = Worker(settings, LatestBatchItems(), registry=registry)
    total = N_VALID + N_HOSTILE
    with running_worker(worker), Publisher(settings) as pub:
        step = N_VALID // N_HOSTILE
        for i, ev in enumerate(valid):
            pub.send(*encode_event(ev))
            if i % step == 0 and i // step < N_HOSTILE:
                pub.send(*hostile[i // step])
        pub.flush()
        wait_for(lambda: worker.stats.consumed >= total, 120, "every message consumed")
        late = Event("late-user", "late-item", "click", int(time.time() * 1000))
        pub.send(*encode_event(late))
        pub.flush()
        wait_for(lambda: worker.stats.applied >= N_VALID + len(accepted) + 1, 60, "late event")

    stats = worker.stats
    assert stats.consumed == total + 1
    assert stats.consumed == stats.applied + stats.dead_lettered
    assert stats.applied == N_VALID + len(accepted) + 1
    assert dict(stats.dead_letters_by_reason) == dict(reasons)
    bad_ids = registry.get_sample_value("interest_dead_letters_total", {"reason": "bad-id"})
    assert bad_ids == reasons["bad-id"]

    dead = read_topic(settings.kafka, topics.dead_letter)
    assert Counter((m.key() or None, m.value()) for m in dead) == Counter(
        (k or None, v) for (k, v), _ in rejected
    )

    lists = read_topic(settings.kafka, topics.recommendations)
    assert lists
    seen_items: set[str] = set()
    for msg in lists:
        doc = decode_recommendation(msg.value())
        # The list for unknown users has a reserved key that no valid user id can be.
        user = [] if doc["user_id"] == NEWCOMERS_ID else [doc["user_id"]]
        ids = [*user, *(e["item_id"] for e in doc["items"]), *doc.get("explanation", [])]
        broken = [(text, why) for text in ids if (why := id_rule_broken(text)) is not None]
        assert not broken, broken
        assert msg.key() == doc["user_id"].encode("utf-8")
        seen_items.update(e["item_id"] for e in doc["items"])
    # The lists carry what was applied, hostile-but-valid events included.
    assert {ev.item_id for ev in accepted} <= seen_items
    assert "late-item" in seen_items
