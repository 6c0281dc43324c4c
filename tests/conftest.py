"""Shared fixtures: the real Kafka broker for the whole session.

``INTEREST_KAFKA_BOOTSTRAP`` points the tests at an existing cluster;
otherwise the embedded broker is started once (in a temporary data dir) and
stopped at the end. A broker that fails to start fails the tests that need it
(an error, never a skip). Every test that uses the broker is marked ``kafka``
automatically (``pytest -m "not kafka"`` runs the rest).

Property tests (Hypothesis) run the ``repeatable`` profile: the same cases on
every run and every machine, no example database, no per-case deadline (the
machines are shared, so timing says nothing about a case).
``--hypothesis-profile thorough`` runs ten times as many, freshly drawn.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from stream.config import BOOTSTRAP_ENV, KafkaConfig, TopicsConfig

# Cases per property test; the whole property suite takes seconds at this count.
PROPERTY_CASES = 1000

settings.register_profile(
    "repeatable", derandomize=True, database=None, deadline=None, max_examples=PROPERTY_CASES
)
settings.register_profile(
    "thorough",
    settings.get_profile("repeatable"),
    derandomize=False,
    max_examples=10 * PROPERTY_CASES,
)
settings.load_profile("repeatable")


@pytest.hookimpl(tryfirst=True)  # before "-m" deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


def require_tool(name: str) -> str:
    """Path of an independent tool the tests check us with (``make test`` installs it).

    Missing: skipped on a developer's machine, a failure under CI (``CI`` set).
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (make test installs it with apt-get)")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real, running Kafka broker."""
    existing = os.environ.get(BOOTSTRAP_ENV)
    if existing:
        yield existing
        return
    from stream.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker(data_dir=tmp_path_factory.mktemp("kafka"))
    broker.start(timeout=120)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def unique_topics() -> Callable[..., TopicsConfig]:
    """Factory of topic names no other test uses (tests share one broker)."""

    def make(partitions: int = 4) -> TopicsConfig:
        tag = uuid.uuid4().hex[:8]
        return TopicsConfig(
            events=f"t{tag}.events",
            recommendations=f"t{tag}.recommendations",
            dead_letter=f"t{tag}.dead-letter",
            items=f"t{tag}.items",
            partitions=partitions,
        )

    return make


@pytest.fixture
def prometheus_bin() -> str:
    """The Prometheus server."""
    return require_tool("prometheus")


@pytest.fixture
def promtool_bin() -> str:
    """promtool, which checks and unit-tests configurations and rules."""
    return require_tool("promtool")
