"""One model across workers, on the real broker: shared counts, merged parameters, snapshots.

The catalogue is small (40 items), so no co-occurrence row ever fills up and
replaces a neighbour (the one order-dependent step): the undecayed counts of
every worker must then equal one worker's exactly (up to float32 rounding of
sums), and the decayed ones up to the order in which batches were counted.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from contextlib import ExitStack

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from core.types import Event
from engine.events import decode_recommendation
from model.factory import create_model
from stream.cli.publish import Publisher
from stream.cli.state import read_states
from stream.kafka.topics import ensure_model_topics, ensure_topics, topic_specs
from stream.runtime.native import Worker
from tests.helpers import exposed
from tests.stream.helpers import make_settings, read_topic, running_worker, wait_for

N_ITEMS = 40


def _events(n: int, seed: int, n_users: int = 150) -> list[Event]:
    rng = random.Random(seed)
    t = int(time.time() * 1000) - 3_600_000
    kinds = ["click"] * 80 + ["favourite"] * 6 + ["cart"] * 8 + ["purchase"] * 6
    out = []
    for i in range(n):
        item = rng.randrange(N_ITEMS)
        out.append(
            Event(
                f"u{rng.randrange(n_users)}", f"i{item}", rng.choice(kinds), t + i, f"c{item % 6}"
            )
        )
    return out


def _worker(settings) -> Worker:  # noqa: ANN001
    return Worker(settings, create_model("interest"), registry=CollectorRegistry())


def _counted(worker: Worker) -> int:
    return worker.sync.book.events if worker.sync is not None else -1


def _by_id(model, counts) -> dict[str, float]:  # noqa: ANN001
    ids = sorted(model.vocab.index)
    rows = np.array([model.vocab.index[i] for i in ids])
    return dict(zip(ids, counts.at(rows).tolist(), strict=True))


def _cooc(model) -> dict[tuple[str, str], float]:  # noqa: ANN001
    out = {}
    for item, row in model.vocab.index.items():
        nbrs, vals = model.cooc.neighbours(row)
        out.update({(item, model.vocab.ids[n]): float(v) for n, v in zip(nbrs, vals, strict=True)})
    return out


def _categories(model) -> dict[str, str | None]:  # noqa: ANN001
    vocab = model.vocab
    return {
        item: vocab.categories[int(vocab.categories_of(np.array(row)))]
        for item, row in vocab.index.items()
    }


def _assert_same_counts(model, ref) -> None:  # noqa: ANN001
    assert sorted(model.vocab.index) == sorted(ref.vocab.index)
    assert _categories(model) == _categories(ref)
    mem, rmem = model.memories, ref.memories
    assert _by_id(model, mem.pop_l) == _by_id(ref, rmem.pop_l)  # event counts: exact
    pairs, ref_pairs = _cooc(model), _cooc(ref)
    assert pairs.keys() == ref_pairs.keys()
    assert np.allclose([pairs[k] for k in ref_pairs], list(ref_pairs.values()), rtol=1e-5)
    # Decayed counts (half-lives of 300 and 2,000 events) depend on the order batches
    # were counted in: the same total weight, spread a little differently over items.
    for counts, ref_counts in [(mem.pop_s, rmem.pop_s), *zip(mem.pop_b, rmem.pop_b, strict=True)]:
        a, b = _by_id(model, counts), _by_id(ref, ref_counts)
        total = sum(b.values())
        assert sum(a.values()) == pytest.approx(total, rel=0.3)
        assert sum(abs(a[i] - b[i]) for i in b) <= 0.3 * total + 1e-9


def test_two_and_three_workers_count_what_one_worker_counts(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=6)
    ensure_topics(make_settings(kafka_bootstrap, topics, tmp_path).kafka, topic_specs(topics))
    ref = _worker(make_settings(kafka_bootstrap, topics, tmp_path / "ref", batch_max_events=100))
    groups = []
    for size in (2, 3):
        group = f"g{size}-{time.monotonic_ns()}"
        groups.append(
            [
                _worker(
                    make_settings(
                        kafka_bootstrap,
                        topics,
                        tmp_path / f"{size}-{i}",
                        group=group,
                        batch_max_events=100,
                    )
                )
                for i in range(size)
            ]
        )
    everyone = [ref, *groups[0], *groups[1]]
    events = _events(2400, seed=17)
    with ExitStack() as stack:
        for w in everyone:
            stack.enter_context(running_worker(w))
        wait_for(lambda: all(w.assigned.is_set() for w in everyone), 90, "assignments")
        with Publisher(ref.settings) as pub:
            pub.publish(events)
        for group in [[ref], *groups]:
            wait_for(lambda g=group: sum(w.stats.applied for w in g) >= len(events), 120, "applied")
        wait_for(lambda: all(_counted(w) >= len(events) for w in everyone), 60, "all counted")
        assert [_counted(w) for w in everyone] == [len(events)] * len(everyone)
        for group in groups:
            # every worker learnt only its share of the events, yet counts them all
            assert all(0 < w.stats.applied < len(events) for w in group)
            for w in group:
                _assert_same_counts(w.model, ref.model)


def _lists(model, users, states):  # noqa: ANN001, ANN202
    return model.rank_many(users, [states[u] for u in users], 10)


def test_a_fresh_worker_starts_from_the_group_model(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=4)
    group = f"fresh-{time.monotonic_ns()}"

    def settings(name: str):  # noqa: ANN202
        return make_settings(
            kafka_bootstrap,
            topics,
            tmp_path / name,
            group=group,
            batch_max_events=100,
            sync_every_s=1,
            model_publish_every_s=1,
        )

    ensure_topics(settings("x").kafka, topic_specs(topics))
    events = _events(2000, seed=23, n_users=120)
    first, second = _worker(settings("a")), _worker(settings("b"))
    with running_worker(first), running_worker(second):
        wait_for(lambda: first.assigned.is_set() and second.assigned.is_set(), 60, "assigned")
        with Publisher(first.settings) as pub:
            pub.publish(events)
        wait_for(lambda: first.stats.applied + second.stats.applied >= len(events), 90, "applied")
        wait_for(lambda: min(_counted(first), _counted(second)) >= len(events), 60, "counted")
        states = dict(read_states(first.settings))
        users = sorted(states)[:40]
        # Quiet: both have shared what they learnt and added each other's changes.
        wait_for(
            lambda: (
                [[i for i, _ in r] for r in _lists(first.model, users, states)]
                == [[i for i, _ in r] for r in _lists(second.model, users, states)]
            ),
            30,
            "the two workers to rank alike",
        )
        published = first.sync.published + second.sync.published
        wait_for(
            lambda: first.sync.published + second.sync.published > published + 1,
            30,
            "a snapshot of the merged model on the model topic",
        )
        fresh = _worker(settings("empty"))  # a new machine: nothing on disk
        with running_worker(fresh):
            wait_for(fresh.assigned.is_set, 60, "the fresh worker's assignment")
            assert fresh.snapshots is not None and not fresh.snapshots.loaded
            assert fresh.sync is not None and fresh.sync.book.snapshot > 0  # from the topic
            assert _counted(fresh) < len(events)  # most counts came with the snapshot
            _assert_same_counts(fresh.model, first.model)
            mine, theirs = _lists(fresh.model, users, states), _lists(first.model, users, states)
            assert [[i for i, _ in r] for r in mine] == [[i for i, _ in r] for r in theirs]
            assert np.allclose(
                [s for r in mine for _, s in r], [s for r in theirs for _, s in r], atol=1e-3
            )
            version = fresh.driver.served_version()
            assert version.startswith(f"interest-3@{fresh.sync.book.snapshot}+")
            shown = exposed(fresh.metrics.registry)
            served = f"interest-3@{fresh.sync.book.snapshot}"
            assert shown["interest_model_served_info"] == [({"version": served}, 1.0)]
            assert shown["interest_model_sync_lag_messages"][0][1] >= 0
            assert shown["interest_model_sync_lag_events"][0][1] >= 0
        # The lists say which merge of the group's model ranked them.
        versions = {
            decode_recommendation(m.value())["model_version"]
            for m in read_topic(first.settings.kafka, topics.recommendations)
        }
        assert versions and all(re.fullmatch(r"interest-3@\d+\+\d+", v) for v in versions)
        merged = exposed(first.metrics.registry)
        assert merged["interest_model_merges_total"][0][1] > 0
        assert 0 <= merged["interest_model_seconds_since_merge"][0][1] < 60
    # Stopped workers leave no thread taking gradient steps behind.
    assert not [t for t in threading.enumerate() if t.name == "interest-learn"]


def test_broken_model_topics_are_a_warning_and_the_worker_keeps_serving(
    kafka_bootstrap, unique_topics, tmp_path, caplog
):
    topics = unique_topics(partitions=2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "w",
        batch_max_events=100,
        sync_every_s=1,
        model_publish_every_s=1,
    )
    kafka = settings.kafka
    ensure_topics(kafka, topic_specs(topics))
    ensure_model_topics(kafka, settings.model_updates_topic, settings.model_topic, 1, 3_600_000)
    garbage = Producer(kafka.client_config())
    garbage.produce(settings.model_updates_topic, b"not an update", b"k", partition=0)
    garbage.produce(settings.model_topic, b"{not json", b"manifest")
    garbage.flush(10)
    events = _events(900, seed=29, n_users=60)
    worker = _worker(settings)
    admin = AdminClient(kafka.client_config())
    with caplog.at_level(logging.WARNING, logger="interest_stream.worker"):
        with running_worker(worker):
            wait_for(worker.assigned.is_set, 60, "assigned")
            with Publisher(settings) as pub:
                pub.publish(events[:300])
            wait_for(lambda: worker.stats.applied >= 300, 60, "the first events applied")
            for future in admin.delete_topics([settings.model_updates_topic]).values():
                future.result()
            with Publisher(settings) as pub:
                pub.publish(events[300:600])
            wait_for(lambda: worker.stats.applied >= 600, 90, "events applied, updates gone")
            for future in admin.delete_topics([settings.model_topic]).values():
                future.result()
            with Publisher(settings) as pub:
                pub.publish(events[600:])
            wait_for(lambda: worker.stats.applied >= 900, 90, "events applied, model gone")
            gone = f"model topic {settings.model_topic} is missing"
            wait_for(lambda: gone in caplog.text, 30, "the warning about the model topic")
    text = caplog.text
    assert "holds no usable snapshot" in text  # the corrupt manifest
    assert "skipped: not a model update" in text  # the garbage update
    assert f"model updates topic {settings.model_updates_topic} is missing" in text
    assert f"model topic {settings.model_topic} is missing" in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lists = {m.key() for m in read_topic(kafka, topics.recommendations)}
    assert {ev.user_id.encode() for ev in events[600:]} <= lists  # it kept serving
