"""``tail``: a user's current list first (read_committed, the key's partition), then new ones."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from confluent_kafka import Producer

from core.partition import partition_for
from core.types import Recommendation
from engine.events import encode_recommendation
from stream.cli.tail import tail
from stream.config import KafkaConfig, Settings, TopicsConfig
from stream.kafka.topics import ensure_topics, topic_specs
from tests.stream.helpers import wait_for


def _lists_producer(kafka: KafkaConfig) -> Producer:
    """Like the worker's exactly-once producer: transactional, keys placed with murmur2."""
    p = Producer(
        kafka.client_config(
            **{
                "transactional.id": f"tail-test-{uuid.uuid4().hex[:8]}",
                "partitioner": "murmur2_random",
            }
        )
    )
    p.init_transactions(10)
    return p


def _send(p: Producer, topic: str, *lists: tuple[str, int], commit: bool | None = True) -> None:
    """One transaction of (user, event_ts) lists; ``commit`` None leaves it open."""
    p.begin_transaction()
    for user, ts in lists:
        key, value = encode_recommendation(Recommendation(user, (("a", 1.0),), "m", ts), 1000)
        p.produce(topic, value, key)
    if commit is None:
        p.flush(10)
    elif commit:
        p.commit_transaction(10)
    else:
        p.abort_transaction(10)


class _Output(io.StringIO):
    """The tail's text output; reading it re-raises what ended the tail early."""

    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__()
        self.failures = errors

    def getvalue(self) -> str:
        if self.failures:
            raise AssertionError(f"the tail stopped: {self.failures[0]!r}")
        return super().getvalue()


@contextmanager
def _tailing(settings: Settings, **kwargs: object) -> Iterator[tuple[list[dict], io.StringIO]]:
    """Run ``tail`` in a thread; yield the lists it hands over and its text output."""
    got: list[dict] = []
    errors: list[BaseException] = []
    out, stop = _Output(errors), threading.Event()

    def run() -> None:
        try:
            tail(settings, out=out, stop=stop, on_list=got.append, **kwargs)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        yield got, out
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive()
    assert not errors, errors


def _setup(kafka_bootstrap: str, unique_topics: Callable[..., TopicsConfig]) -> Settings:
    topics = unique_topics(partitions=4)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    ensure_topics(kafka, topic_specs(topics))
    return Settings(kafka=kafka, topics=topics)


def test_user_sees_the_current_list_first_then_new_ones(kafka_bootstrap, unique_topics):
    settings = _setup(kafka_bootstrap, unique_topics)
    topic = settings.topics.recommendations
    # A user on u7's partition, so the catch-up has other keys to skip.
    near = next(f"n{i}" for i in range(1000) if partition_for(f"n{i}".encode(), 4) == 2)
    assert partition_for(b"u7", 4) == 2
    p = _lists_producer(settings.kafka)
    _send(p, topic, ("u7", 1), ("u1", 1), (near, 1))
    _send(p, topic, ("u7", 2), (near, 2))
    _send(p, topic, ("u7", 3), commit=False)  # aborted: never a current list
    _send(p, topic, (near, 3), ("u7", 4), commit=None)  # open while the tail starts
    with _tailing(settings, user="u7") as (got, out):
        wait_for(lambda: len(got) >= 1, 30, "u7's current list")
        p.commit_transaction(10)  # the open transaction's list is the first new one
        _send(p, topic, ("u7", 5), ("u2", 5))
        wait_for(lambda: len(got) >= 3, 30, "u7's new lists")
    assert [(d["user_id"], d["event_ts"]) for d in got] == [("u7", 2), ("u7", 4), ("u7", 5)]
    assert out.getvalue() == ""


def test_user_without_a_list_is_told_and_the_tail_keeps_following(kafka_bootstrap, unique_topics):
    settings = _setup(kafka_bootstrap, unique_topics)
    topic = settings.topics.recommendations
    p = _lists_producer(settings.kafka)
    _send(p, topic, ("u1", 1), ("u2", 1), ("u3", 1))
    with _tailing(settings, user="u5") as (got, out):
        wait_for(lambda: "no list" in out.getvalue(), 30, "the no-list line")
        assert got == []
        _send(p, topic, ("u5", 9))
        wait_for(lambda: len(got) >= 1, 30, "u5's first list")
    assert out.getvalue() == "(no list for user u5 yet; waiting for one)\n"
    assert [(d["user_id"], d["event_ts"]) for d in got] == [("u5", 9)]


def test_empty_topic_and_every_list_of_a_user_from_the_beginning(kafka_bootstrap, unique_topics):
    settings = _setup(kafka_bootstrap, unique_topics)
    topic = settings.topics.recommendations
    with _tailing(settings, user="u7") as (_, out):
        wait_for(lambda: "no list" in out.getvalue(), 30, "the no-list line on an empty topic")
    p = _lists_producer(settings.kafka)
    _send(p, topic, ("u7", 1), ("u1", 1))
    _send(p, topic, ("u7", 2))
    with _tailing(settings, user="u7", from_beginning=True) as (got, out):
        wait_for(lambda: len(got) >= 2, 30, "every list of u7")
    assert [d["event_ts"] for d in got] == [1, 2]
    assert out.getvalue() == ""


def test_without_a_user_the_tail_starts_from_now(kafka_bootstrap, unique_topics):
    settings = _setup(kafka_bootstrap, unique_topics)
    topic = settings.topics.recommendations
    p = _lists_producer(settings.kafka)
    _send(p, topic, ("old", 1))
    with _tailing(settings) as (got, _):
        # The tail's start is not observable from here: send until a new list shows.
        for ts in range(2, 200):
            _send(p, topic, (f"new{ts % 5}", ts))
            if got:
                break
            time.sleep(0.2)
        wait_for(lambda: len(got) >= 1, 30, "a new list")
    assert got and all(d["user_id"] != "old" for d in got)


def test_cli_prints_the_current_list_and_stops_on_ctrl_c(kafka_bootstrap, unique_topics):
    settings = _setup(kafka_bootstrap, unique_topics)
    p = _lists_producer(settings.kafka)
    _send(p, settings.topics.recommendations, ("u7", 1), ("u7", 2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env["INTEREST_TOPIC_RECOMMENDATIONS"] = settings.topics.recommendations
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "tail", "--bootstrap-servers", kafka_bootstrap]
        + ["--user", "u7"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert " u7 [m] a:1" in first and rest == ""
    assert "Traceback" not in err


def test_cli_names_a_missing_topic(kafka_bootstrap):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env["INTEREST_TOPIC_RECOMMENDATIONS"] = f"absent-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "tail", "--bootstrap-servers", kafka_bootstrap],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and env["INTEREST_TOPIC_RECOMMENDATIONS"] in proc.stderr


def test_a_removed_list_is_said_and_an_erased_user_has_no_current_list(
    kafka_bootstrap, unique_topics
):
    settings = _setup(kafka_bootstrap, unique_topics)
    topic = settings.topics.recommendations
    p = _lists_producer(settings.kafka)
    _send(p, topic, ("u7", 1), ("u1", 1))
    p.begin_transaction()
    p.produce(topic, None, b"u7")  # the worker's tombstone for an erased user
    p.commit_transaction(10)
    with _tailing(settings, user="u7") as (got, out):
        wait_for(lambda: "no list" in out.getvalue(), 30, "the no-list line")
    assert got == []
    assert (
        out.getvalue() == "(no list for user u7 (it was removed: user erased); waiting for one)\n"
    )
    # Every list from the beginning: the tombstone is one line, after u7's list.
    out, stop = io.StringIO(), threading.Event()
    th = threading.Thread(target=tail, args=(settings, None, out, stop, True), daemon=True)
    th.start()
    wait_for(lambda: "removed" in out.getvalue(), 30, "the removed line")
    stop.set()
    th.join(30)
    u7 = [line for line in out.getvalue().splitlines() if " u7 " in line]
    assert len(u7) == 2 and " u7 [m] a:1" in u7[0], u7
    assert u7[1].endswith(" u7 (list removed: user erased)")
