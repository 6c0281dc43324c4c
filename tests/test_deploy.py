"""docker-compose.yml cannot run here (no Docker engine): check it is consistent."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from stream.broker import KAFKA_VERSION
from stream.config import WorkerConfig

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_kafka_service_runs_the_same_kafka_version_as_the_embedded_broker():
    image = _compose()["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{KAFKA_VERSION}"


def test_worker_bootstrap_is_a_listener_the_kafka_service_advertises():
    services = _compose()["services"]
    bootstrap = _env(services["worker"])["INTEREST_KAFKA_BOOTSTRAP"]
    advertised = _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split(",")
    addresses = {re.sub(r"^[A-Z_]+://", "", a) for a in advertised}
    assert bootstrap in addresses
    host = bootstrap.split(":")[0]
    assert host == "kafka" or host == services["kafka"].get("hostname")
    assert "kafka" in services["worker"]["depends_on"]


def test_prometheus_scrapes_the_worker_metrics_port():
    services = _compose()["services"]
    worker_port = _env(services["worker"]).get(
        "INTEREST_METRICS_PORT", str(WorkerConfig().metrics_port)
    )
    mount = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == [f"worker:{worker_port}"]
    assert f"{worker_port}:{worker_port}" in services["worker"]["ports"]


def test_grafana_has_prometheus_provisioned():
    services = _compose()["services"]
    mount = next(v for v in services["grafana"]["volumes"] if "provisioning" in v)
    ds_dir = ROOT / mount.split(":")[0] / "datasources"
    sources = [
        s for f in ds_dir.glob("*.yml") for s in yaml.safe_load(f.read_text())["datasources"]
    ]
    prom = [s for s in sources if s["type"] == "prometheus"]
    assert prom and prom[0]["url"] == "http://prometheus:9090"


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_worker_image_installs_every_package_and_runs_the_worker():
    steps = _dockerfile()
    copied = {args.split()[0] for word, args in steps if word == "COPY"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    # Every package the wheel is built from (and the build's own inputs) is in the image.
    assert packages | {"pyproject.toml"} <= copied
    runs = [args for word, args in steps if word == "RUN"]
    assert any(re.search(r"pip install (--no-cache-dir )?\.( |$)", run) for run in runs)
    assert ("ENTRYPOINT", '["interest-stream"]') in steps
    assert ("CMD", '["worker"]') in steps
    worker = _compose()["services"]["worker"]
    assert worker["build"] == "."
    # The state directory the worker is told to use is the volume that outlives it.
    state_dir = _env(worker)["INTEREST_STATE_DIR"]
    assert any(v.endswith(":" + state_dir) for v in worker["volumes"])
