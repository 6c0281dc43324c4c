"""The Grafana dashboard's queries and the alert rules, run by a real Prometheus on a real worker.

Prometheus is started with deploy/prometheus.yml (the scrape target pointed at
the test worker, scrapes and rule evaluations every second) and a copy of
deploy/alerts.yml whose ``for`` durations are cut to one second: the
expressions are the real ones. While events flow, every query of every panel
of deploy/grafana/dashboards/interest-stream.json must return data; injected
bad input must fire the dead-letter alert, and a stopped worker the
worker-down alert. The default worker (the interest model, default settings)
must export every metric family its registry holds (the families the metrics
reference of the documentation is written from), and a training loss driven
to NaN by the model's own training code must fire the loss alert.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from prometheus_client import CollectorRegistry

from core.types import Event, UserState
from engine.metrics import WorkerMetrics
from model.factory import create_serving_model
from model.interest.model import InterestModel
from model.persist import ModelState
from stream.cli.publish import Publisher
from stream.kafka.broker import free_port
from stream.runtime.native import Worker
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    running_worker,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "interest-stream.json"
RULES = ROOT / "deploy" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"

SCRAPE_S = 1
# What Grafana substitutes for $__rate_interval: max($__interval + scrape interval,
# 4 x scrape interval), where the data source's scrape interval is SCRAPE_S here;
# for a short time range $__interval is about one scrape, so 4 x scrape wins.
GRAFANA_VARIABLES = {"$__rate_interval": f"{4 * SCRAPE_S}s"}


class LearningPopularity(TinyPopularity):
    """TinyPopularity that reports its loss per batch and saves itself (so it is snapshotted)."""

    name = "tiny-learning"
    version = "tiny-learning-1"
    config: dict[str, Any] = {}

    def __init__(self) -> None:
        super().__init__()
        self.last_loss: float | None = None

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        # Log loss of the item popularity distribution on the batch, before learning it.
        total, size = sum(self.counts.values()), len(self.counts) + 1
        self.last_loss = -sum(
            math.log((self.counts.get(ev.item_id, 0) + 1) / (total + size)) for ev in events
        ) / len(events)
        super().learn_many(events, before)

    def state_dict(self) -> ModelState:
        return ModelState(meta={"counts": dict(self.counts)})

    def load_state_dict(self, state: ModelState) -> None:
        self.counts = dict(state.meta["counts"])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, Grafana variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    out = []
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


def _fast_rules(path: Path) -> Path:
    """deploy/alerts.yml with every ``for`` cut to 1 s (the expressions unchanged)."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class PrometheusServer:
    """deploy/prometheus.yml run on loopback against ``target``, with ``rule_file``."""

    def __init__(self, binary: str, target: str, rule_file: Path, workdir: Path) -> None:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(
            scrape_interval=f"{SCRAPE_S}s",
            scrape_timeout=f"{SCRAPE_S}s",
            evaluation_interval=f"{SCRAPE_S}s",
        )
        config["rule_files"] = [str(rule_file)]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        self.job = job["job_name"]
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        address = f"127.0.0.1:{free_port()}"
        self.base = f"http://{address}"
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address={address}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 60, "Prometheus to start")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.load(resp)["data"]
        except urllib.error.HTTPError as exc:  # a query Prometheus rejects: say why
            raise AssertionError(f"{params}: {exc.read().decode()}") from None

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def finite(self, expr: str) -> bool:
        """The query returns at least one series with a finite value."""
        return any(math.isfinite(float(r["value"][1])) for r in self.query(expr))

    def rules(self) -> dict[str, dict]:
        """Alerting rules by name: ``state`` (inactive, pending, firing), ``lastEvaluation``."""
        return {r["name"]: r for g in self.api("rules")["groups"] for r in g["rules"]}

    def firing(self, alert: str) -> bool:
        return self.rules()[alert]["state"] == "firing"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _evaluated_after(rule: dict, t: float) -> bool:
    # RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", rule["lastEvaluation"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp() > t


BAD = [
    (b"u1", b"{broken json"),  # not-json
    (b"u2", b'{"user_id": "u2", "event": "click"}'),  # missing-field
    (b"u3", b'{"user_id": "u4", "item_id": "i1", "event": "click"}'),  # key-mismatch
]


def test_every_panel_has_data_and_alerts_fire_in_a_real_prometheus(
    prometheus_bin, kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(partitions=2)
    port = free_port()
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        metrics_port=port,
        snapshot_every_batches=5,
    )
    worker = Worker(settings, LearningPopularity())
    prom = PrometheusServer(
        prometheus_bin, f"127.0.0.1:{port}", _fast_rules(tmp_path / "alerts.yml"), tmp_path
    )
    feeding = threading.Event()
    try:
        with running_worker(worker), Publisher(settings) as pub:
            wait_for(worker.assigned.is_set, 60, "the worker's partitions")
            # Events keep flowing (200/s) so that every rate() has something to show.
            events = make_events(20_000, n_users=50)
            feeder = threading.Thread(
                target=pub.publish, args=(events,), kwargs={"rate": 200, "stop": feeding}
            )
            feeder.start()

            # Healthy: the rules see events applied and stay quiet.
            wait_for(
                lambda: prom.finite("sum(rate(interest_events_applied_total[1m])) > 0"),
                60,
                "Prometheus to see events applied",
            )
            seen = time.time()
            wait_for(
                lambda: _evaluated_after(prom.rules()["InterestDeadLetterRateHigh"], seen),
                30,
                "the rules to be evaluated",
            )
            rules = prom.rules()
            assert rules["InterestDeadLetterRateHigh"]["state"] == "inactive"
            assert rules["InterestWorkerDown"]["state"] == "inactive"

            # Bad input: the dead-letter share goes far above 1% and the alert fires.
            for i in range(300):
                pub.send(*BAD[i % len(BAD)])
            wait_for(
                lambda: prom.firing("InterestDeadLetterRateHigh"),
                60,
                "the dead-letter alert to fire",
            )

            # Every panel of the dashboard has data (the firing alert fills "Firing alerts").
            pending = dict.fromkeys(dashboard_queries())
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                pending = {q: None for q in pending if not prom.finite(q[1])}
                time.sleep(0.5)
            assert not pending, "panels without data: " + "; ".join(
                f"{title}: {expr} -> {prom.query(expr)}" for title, expr in pending
            )

            # Every metric the rules read is one the worker exposes.
            names = set(prom.api("label/__name__/values"))
            used = {
                m
                for rule in prom.rules().values()
                for m in re.findall(r"interest_\w+", rule["query"])
            }
            assert used and used <= names, used - names

            # The model learns, with a finite loss: its alerts stay quiet.
            rules = prom.rules()
            assert rules["InterestModelNotLearning"]["state"] == "inactive"
            assert rules["InterestModelLossNotFinite"]["state"] == "inactive"
            assert rules["InterestWorkerStalled"]["state"] == "inactive"
            assert rules["InterestWorkerDown"]["state"] == "inactive"
            feeding.set()
            feeder.join(30)
        # The worker has stopped: Prometheus cannot scrape it any more.
        wait_for(lambda: prom.firing("InterestWorkerDown"), 60, "the worker-down alert to fire")
        (alert,) = [
            a
            for a in prom.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "InterestWorkerDown"
        ]
        assert alert["labels"]["instance"] == f"127.0.0.1:{port}"
        assert alert["annotations"]["summary"] == f"interest-stream worker 127.0.0.1:{port} is down"
    finally:
        feeding.set()
        prom.stop()


def _registered_metrics() -> set[str]:
    """The metric families a worker registers (what docs/reference/metrics.md lists)."""
    metrics = WorkerMetrics.create(CollectorRegistry())
    return {
        family.name
        for f in dataclasses.fields(WorkerMetrics)
        if f.name != "registry"
        for family in getattr(metrics, f.name).describe()
    }


def test_the_default_worker_exports_every_metric_and_a_nan_loss_fires_its_alert(
    prometheus_bin, kafka_bootstrap, unique_topics, tmp_path
):
    """The model the service runs (interest, default settings) under the shipped dashboard
    and rules; its own training code diverges to NaN and the loss alert fires."""
    topics = unique_topics(partitions=2)
    port = free_port()
    # Default settings, but for snapshots every 20 batches instead of every minute, and on
    # the model topic every 10 s instead of 5 minutes: their gauges are absent until then.
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path / "state",
        metrics_port=port,
        snapshot_every_batches=20,
        model_publish_every_s=10,
    )
    worker = Worker(settings, build_model=create_serving_model)
    prom = PrometheusServer(
        prometheus_bin, f"127.0.0.1:{port}", _fast_rules(tmp_path / "alerts.yml"), tmp_path
    )
    feeding = threading.Event()
    try:
        with running_worker(worker), Publisher(settings) as pub:
            wait_for(worker.assigned.is_set, 120, "the worker's partitions")
            events = make_events(40_000, n_users=60, n_items=300)
            feeder = threading.Thread(
                target=pub.publish, args=(events,), kwargs={"rate": 200, "stop": feeding}
            )
            feeder.start()
            wait_for(
                lambda: prom.finite("interest_training_loss"),
                90,
                "Prometheus to see the interest model's training loss",
            )
            # Every family the worker registers is exported, with a value.
            wanted = _registered_metrics()
            assert "interest_training_loss" in wanted and len(wanted) > 30

            def missing() -> set[str]:
                names = set(prom.api("label/__name__/values"))
                return {
                    m for m in wanted if not {m, f"{m}_total", f"{m}_count", f"{m}_bucket"} & names
                }

            deadline = time.monotonic() + 60
            while missing() and time.monotonic() < deadline:
                time.sleep(1)
            assert not missing(), f"metrics Prometheus does not have: {missing()}"
            # Every panel has data, but the firing alerts (none yet: checked below).
            queries = [(t, q) for t, q in dashboard_queries() if "ALERTS" not in q]
            pending = dict.fromkeys(queries)
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                pending = {q: None for q in pending if not prom.finite(q[1])}
                time.sleep(0.5)
            assert not pending, "panels without data: " + "; ".join(
                f"{title}: {expr} -> {prom.query(expr)}" for title, expr in pending
            )
            rules = prom.rules()
            assert rules["InterestModelLossNotFinite"]["state"] == "inactive"
            assert rules["InterestWorkerStalled"]["state"] == "inactive"
            assert rules["InterestModelNotLearning"]["state"] == "inactive"

            # Training diverges: a blend weight goes NaN, and the model's own training
            # step computes a NaN loss on the next batch.
            model = worker.driver.model
            assert isinstance(model, InterestModel)
            with torch.no_grad():
                model.alpha.fill_(float("nan"))
            wait_for(
                lambda: prom.firing("InterestModelLossNotFinite"),
                90,
                "the not-finite loss alert to fire",
            )
            assert math.isnan(float(prom.query("interest_training_loss")[0]["value"][1]))
            # The firing alert fills the dashboard's alerts panel.
            alerts = [q for _, q in dashboard_queries() if "ALERTS" in q]
            assert all(prom.query(q) for q in alerts)
            feeding.set()
            feeder.join(30)
    finally:
        feeding.set()
        prom.stop()
