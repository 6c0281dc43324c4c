"""docker-compose.yml cannot run here (no Docker engine): check it is consistent."""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from stream.config import WorkerConfig
from stream.kafka.broker import KAFKA_VERSION

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


def test_worker_healthcheck_asks_healthz_on_the_metrics_port():
    worker = _compose()["services"]["worker"]
    port = _env(worker).get("INTEREST_METRICS_PORT", str(WorkerConfig().metrics_port))
    check = worker["healthcheck"]
    # The image has python and no curl: urlopen raises on a 503, so the check fails.
    assert check["test"][:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{port}/healthz" in check["test"][3]
    # Restores and model loading come first: the stall timeout counts from the first batch.
    assert int(check["start_period"].rstrip("s")) >= 60


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


def _mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (``./host:/container[:ro]``)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = ROOT / host
    return out


def _host_path(service: dict, container_path: str) -> Path:
    """Where ``container_path`` comes from on the host: the bind mount that covers it."""
    for container, host in _mounts(service).items():
        if container_path == container:
            return host
        if container_path.startswith(container.rstrip("/") + "/"):
            return host / posixpath.relpath(container_path, container)
    raise AssertionError(f"{container_path} is not mounted")


def test_every_file_a_mount_names_exists():
    for name, service in _compose()["services"].items():
        for container, host in _mounts(service).items():
            assert host.exists(), f"{name}: {host} (mounted at {container}) does not exist"


# The prom/prometheus image reads this file (docker-compose.yml passes no --config.file).
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"


def test_prometheus_loads_the_mounted_alert_rules():
    prometheus = _compose()["services"]["prometheus"]
    config = yaml.safe_load(_host_path(prometheus, PROMETHEUS_CONFIG).read_text())
    rule_files = [
        _host_path(prometheus, posixpath.join(posixpath.dirname(PROMETHEUS_CONFIG), f))
        for f in config["rule_files"]
    ]
    assert rule_files == [ROOT / "deploy" / "alerts.yml"]
    rules = [r for g in yaml.safe_load(rule_files[0].read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {
        "InterestWorkerDown",
        "InterestConsumerLagGrowing",
        "InterestLatencyHigh",
        "InterestDeadLetterRateHigh",
        "InterestModelLossNotFinite",
        "InterestModelNotLearning",
        "InterestWorkerStalled",
    }
    for rule in rules:  # what a person on call reads, and how urgent it is
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80
        assert rule["labels"]["severity"] in {"page", "ticket"}
        # A rule about a job watches the job this configuration scrapes.
        jobs = {job["job_name"] for job in config["scrape_configs"]}
        assert set(re.findall(r'job="([^"]+)"', rule["expr"])) <= jobs


def _provisioned_datasources(grafana: dict) -> list[dict]:
    ds_dir = _host_path(grafana, "/etc/grafana/provisioning/datasources")
    return [s for f in ds_dir.glob("*.yml") for s in yaml.safe_load(f.read_text())["datasources"]]


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def test_grafana_loads_the_dashboard_with_the_provisioned_prometheus():
    grafana = _compose()["services"]["grafana"]
    providers_dir = _host_path(grafana, "/etc/grafana/provisioning/dashboards")
    providers = [
        p for f in providers_dir.glob("*.yml") for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers and all(p["type"] == "file" for p in providers)
    files = [f for p in providers for f in _host_path(grafana, p["options"]["path"]).glob("*.json")]
    assert files == [ROOT / "deploy" / "grafana" / "dashboards" / "interest-stream.json"]
    dashboard = json.loads(files[0].read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 39
    uid = next(s["uid"] for s in _provisioned_datasources(grafana) if s["type"] == "prometheus")
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"], panel["title"]


def test_promtool_accepts_the_config_and_the_rules(promtool_bin):
    for args in (
        ["check", "config", "deploy/prometheus.yml"],  # also checks the rule files it names
        ["check", "rules", "deploy/alerts.yml"],
    ):
        out = subprocess.run(
            [promtool_bin, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_on_what_they_are_about(promtool_bin):
    # tests/alerts_test.yml: each alert on synthetic series, firing and quiet.
    out = subprocess.run(
        [promtool_bin, "test", "rules", "tests/alerts_test.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
