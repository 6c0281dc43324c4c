"""Item metadata through Kafka: publish-items, and a new item listed before anyone touched it."""

from __future__ import annotations

import json
import time

from core.types import Event
from model.factory import create_model
from model.items import ItemMeta
from stream.cli.main import main
from stream.cli.publish import Publisher
from stream.kafka.topics import ensure_topics, topic_specs
from stream.runtime.items import ItemsFeed, ItemsPublisher
from stream.runtime.native import Worker
from tests.helpers import needs_encoder
from tests.stream.helpers import make_settings, read_topic, running_worker, wait_for

SPACE = [
    "Starship crew fights an alien armada in deep space",
    "Space marines defend a colony planet from alien invaders",
    "A rebel pilot destroys the galactic empire's battle station",
    "Astronauts stranded on Mars build a rocket to fly home",
]
ROMANCE = [
    "Two strangers fall in love in Paris during a rainy spring",
    "A bride leaves her fiance at the altar for her childhood sweetheart",
    "A widower finds love again with his daughter's piano teacher",
    "Pen pals fall in love through letters without ever meeting",
]


def test_publish_items_writes_one_keyed_record_per_item(
    kafka_bootstrap, unique_topics, tmp_path, monkeypatch, capsys
):
    topics = unique_topics(partitions=1)
    path = tmp_path / "items.csv"
    path.write_text(
        "item,title,text,category\n"
        "a1,Alien Armada,Starship crew fights aliens,scifi\n"
        ",no id,,\n"
        "a2,Paris in Spring,Two strangers fall in love,\n"
    )
    env = ["--bootstrap-servers", kafka_bootstrap]
    monkeypatch.setenv("INTEREST_TOPIC_ITEMS", topics.items)
    assert main(["publish-items", *env, "--data", str(path), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable item row" in err and "published 2 item record(s)" in err
    missing = str(tmp_path / "x.csv")
    assert main(["publish-items", *env, "--data", missing, "--format", "csv"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err and "Traceback" not in err
    msgs = read_topic(make_settings(kafka_bootstrap, topics, tmp_path).kafka, topics.items)
    records = {m.key().decode(): json.loads(m.value()) for m in msgs}
    assert records == {
        "a1": {
            "item_id": "a1",
            "title": "Alien Armada",
            "category": "scifi",
            "text": "Starship crew fights aliens",
        },
        "a2": {"item_id": "a2", "title": "Paris in Spring", "text": "Two strangers fall in love"},
    }


def test_the_feed_reads_the_topic_from_its_beginning_and_skips_bad_records(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    settings = make_settings(kafka_bootstrap, topics, tmp_path)
    with ItemsPublisher(settings) as pub:
        pub.publish([ItemMeta(f"i{n}", f"title {n}") for n in range(20)])
    with Publisher(settings) as raw:  # a record that is not item metadata
        raw._producer.produce(topics.items, b"{not json", b"bad")
        raw.flush()
    feed = ItemsFeed(settings).start()
    try:
        got: list[ItemMeta] = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            got.extend(feed.drain())
            time.sleep(0.1)
        wait_for(lambda: feed.rejected == 1, 10, "the bad record")
    finally:
        feed.close()
    assert sorted(m.item_id for m in got) == sorted(f"i{n}" for n in range(20))


@needs_encoder
def test_a_new_item_reaches_users_of_similar_items_before_anyone_touched_it(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=1)
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "state", batch_max_events=50)
    ensure_topics(settings.kafka, topic_specs(topics))
    catalogue = [ItemMeta(f"s{i}", t) for i, t in enumerate(SPACE[:3])]
    catalogue += [ItemMeta(f"r{i}", t) for i, t in enumerate(ROMANCE[:3])]
    with ItemsPublisher(settings) as pub:
        pub.publish(catalogue)
    # Half the users watch space films, the others romances; nobody touches s3 or r3.
    t0 = int(time.time() * 1000) - 600_000
    events = []
    for n in range(240):
        user = n % 12
        kind = "s" if user < 6 else "r"
        events.append(Event(f"u{user}", f"{kind}{(n // 12) % 3}", "click", t0 + n))
    model = create_model("interest", seed=3)
    worker = Worker(settings, model)
    with running_worker(worker):
        with Publisher(settings) as pub:
            pub.publish(events)
        wait_for(lambda: worker.stats.applied >= len(events), 90, "the first events")
        with ItemsPublisher(settings) as pub:  # two new items, with no event at all
            pub.publish([ItemMeta("s3", SPACE[3]), ItemMeta("r3", ROMANCE[3])])
        # The vectors are encoded off the events' path: the next batch picks them up.
        content = model.content
        assert content is not None
        deadline = time.monotonic() + 90
        n = 0
        while not ("s3" in content.slot and "r3" in content.slot):
            assert time.monotonic() < deadline, "the new items' vectors were never installed"
            n += 1
            nudge = [Event(f"u{u}", f"s{u % 3}", "click", t0 + 1000 * n + u) for u in range(6)]
            with Publisher(settings) as pub:
                pub.publish(nudge)
            time.sleep(1.0)
        applied = worker.stats.applied
        with Publisher(settings) as pub:  # the vectors are in: one batch after that
            pub.publish([Event("u0", "s0", "click", t0 + 10**6)])
        wait_for(lambda: worker.stats.applied > applied, 60, "the last event")
    assert "s3" in model.vocab.index and "r3" in model.vocab.index
    from state.store import RocksDBStore
    from stream.runtime.native import state_root

    store = RocksDBStore(state_root(settings))
    try:
        states = {u: st for t, p in store.on_disk() for u, st in store.open_partition(t, p).items()}
    finally:
        store.close()
    assert len(states) == 12
    for user, state in states.items():
        listed = [item for item, _ in model.rank(user, state, 8)]
        mine, other = ("s3", "r3") if int(user[1:]) < 6 else ("r3", "s3")
        # Neither was ever touched: the one like the user's own films ranks higher.
        assert listed.index(mine) < listed.index(other), (user, listed)
