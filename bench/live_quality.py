"""Quality as subscribers meet it: lists held live through Kafka beside the evaluator's figure.

    python -m bench.live_quality --data DIR --format recbole --protocol flurs [--workers N]
    python -m bench.live_quality [--format synthetic --events 10000] [--pace X]

The replay, by this process (never the worker's), through a real broker and
real worker processes (``interest-stream worker``, default settings):

- **events**: the data set's events in time order (any data and format
  ``evaluate`` reads). Under ``--protocol flurs`` the positive events, sent as
  ``purchase`` so that the workers never list what the user already has, as
  the protocol excludes it; a user's events within the same millisecond are
  moved 1 ms apart, so that every event of a user has a ``ts`` of its own;
- **warm-up**: FluRS' first 30% (train and update; none for ``prequential``)
  are published as a backlog and drained;
- **then, for each scored event** (at most ``--limit``): wait up to
  ``--timeout`` seconds until the user's newest list on the recommendations
  topic (``read_committed``) covers their previous event (``event_ts`` at
  least its ``ts``); count a hit if the item is in that list (a user with no
  list holds the newcomer list, as an app shows it); publish the event.
  ``--pace X`` also sends no event before its event time divided by X (``X``
  times real time) has come.

In the same run, the evaluator's subscriber replay
(:func:`engine.replay.subscriber.subscriber_replay`, what ``evaluate --subscriber``
prints) on the same events and split, with the workers' refresh policy and
without refresh. Printed: live Recall@K of the held lists, the evaluator's
figures, lists refreshed per scored event, freshness (from sending an event
to the first list that covers it, p50/p99) and the share of events whose
previous list never came. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.chaos import WorkerPool, _broker
from core.cliargs import add_csv_flags, add_items_flag
from core.types import Event
from engine.events import NEWCOMERS_ID, decode_recommendation, encode_event
from engine.replay.subscriber import subscriber_replay
from model.eval.metrics import split_flurs
from model.factory import create_model
from model.pacing import BATCH_CATCH_UP_EVENTS, BATCH_MAX_EVENTS
from model.refresh import RefreshPolicy
from stream.cli.evaluate import _load
from stream.cli.publish import PRODUCER_DEFAULTS, Publisher
from stream.config import KafkaConfig, Settings, TopicsConfig, WorkerConfig
from stream.kafka.topics import ensure_topics, topic_specs

__all__ = ["LiveConfig", "Replay", "live_events", "run_live", "run_offline", "main"]

WARMUP_SHARE = 0.3  # prequential: nothing is warm-up; flurs: its train + update parts


@dataclass(frozen=True)
class LiveConfig:
    workers: int = 1
    model: str = "interest"
    k: int = 10
    timeout_s: float = 2.0
    pace: float | None = None  # times real time; None: as fast as lists come back
    partitions: int = 4
    policy: RefreshPolicy = field(default_factory=RefreshPolicy)
    budget_percent: int = WorkerConfig.refresh_budget_percent
    batch_max_events: int = BATCH_MAX_EVENTS
    batch_catch_up_events: int = BATCH_CATCH_UP_EVENTS
    seed: int = 0
    sequential: bool = False  # one event in flight: the next is sent once its list came
    worker_env: tuple[tuple[str, str], ...] = ()


def live_events(
    events: Sequence[Event], ratings: Sequence[float] | None, protocol: str
) -> tuple[list[Event], list[Event]]:
    """(warm-up, scored) as the live replay sends them (see the module docstring)."""
    if protocol == "flurs":
        train, update, test = split_flurs(events, ratings)
        warm = [replace(ev, event="purchase") for ev in [*train, *update]]
        scored = [replace(ev, event="purchase") for ev in test]
    else:
        warm, scored = [], list(events)
    spread = _distinct_ts([*warm, *scored])
    return spread[: len(warm)], spread[len(warm) :]


def _distinct_ts(events: Sequence[Event]) -> list[Event]:
    """A user's events at the same or an earlier ts move to 1 ms after their previous one."""
    last: dict[str, int] = {}
    out = []
    for ev in events:
        prev = last.get(ev.user_id)
        if prev is not None and ev.ts <= prev:
            ev = replace(ev, ts=prev + 1)
        last[ev.user_id] = ev.ts
        out.append(ev)
    return out


@dataclass
class _Held:
    event_ts: int
    items: list[str]
    trigger: str
    sent: int  # scored events this process had sent when it read the list


class Replay:
    """The newest list per user on the recommendations topic, read as a subscriber reads it."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": f"live-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                }
            )
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.lists: dict[str, _Held] = {}
        self.cond = threading.Condition()
        self.by_trigger: dict[str, int] = {"events": 0, "refresh": 0}
        # (user, ts) -> monotonic send time, for the events still waiting for a list
        self.waiting: dict[tuple[str, int], float] = {}
        self.freshness: list[float] = []
        self.sent_count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self.consumer.poll(0.05)  # consume(n, t) would wait for n or all of t
            if first is None:
                continue
            msgs = [first, *self.consumer.consume(1000, timeout=0)]
            now = time.monotonic()
            with self.cond:
                for msg in msgs:
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    doc = decode_recommendation(value)
                    user, trigger = doc["user_id"], doc.get("trigger", "events")
                    items = [entry["item_id"] for entry in doc["items"]]
                    self.lists[user] = _Held(int(doc["event_ts"]), items, trigger, self.sent_count)
                    self.by_trigger[trigger] = self.by_trigger.get(trigger, 0) + 1
                    sent = self.waiting.pop((user, int(doc["event_ts"])), None)
                    if sent is not None:
                        self.freshness.append(now - sent)
                self.cond.notify_all()

    def sent(self, ev: Event) -> None:
        with self.cond:
            self.waiting[(ev.user_id, ev.ts)] = time.monotonic()
            self.sent_count += 1

    def wait_covering(self, user: str, ts: int, timeout: float) -> _Held | None:
        """The user's newest list once it covers ``ts`` (None: not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                held = self.lists.get(user)
                if held is not None and held.event_ts >= ts:
                    return held
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def held(self, user: str) -> _Held | None:
        with self.cond:
            return self.lists.get(user) or self.lists.get(NEWCOMERS_ID)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.consumer.close()


def _settings(bootstrap: str, cfg: LiveConfig) -> Settings:
    tag = uuid.uuid4().hex[:8]
    topics = TopicsConfig(
        events=f"live{tag}.events",
        recommendations=f"live{tag}.recommendations",
        dead_letter=f"live{tag}.dead-letter",
        partitions=cfg.partitions,
    )
    return Settings(
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        topics=topics,
        worker=WorkerConfig(group=f"live-{tag}", metrics_port=0),
    )


def _worker_env(cfg: LiveConfig) -> dict[str, str]:
    p = cfg.policy
    env = {
        "INTEREST_REFRESH_BUDGET_PERCENT": str(cfg.budget_percent),
        "INTEREST_REFRESH_STALE_EVENTS": str(p.stale_events),
        "INTEREST_REFRESH_MAX_USERS": str(p.max_users),
        "INTEREST_REFRESH_INTERVAL_MS": str(p.interval_ms),
        "INTEREST_REFRESH_TRACK_USERS": str(p.track_users),
        "INTEREST_BATCH_MAX_EVENTS": str(cfg.batch_max_events),
        "INTEREST_BATCH_CATCH_UP_EVENTS": str(cfg.batch_catch_up_events),
    }
    env.update(dict(cfg.worker_env))
    return env


def run_live(
    cfg: LiveConfig,
    bootstrap: str,
    workdir: Path,
    warm: list[Event],
    scored: list[Event],
    trace: list[tuple[str, int, str, tuple[str, ...]]] | None = None,
) -> dict[str, Any]:
    """The live replay (module docstring) against the broker at ``bootstrap``.

    ``trace``: gets (user, ts, what was held, the list) per scored event, as
    :attr:`engine.replay.subscriber.SubscriberView.trace` does offline.
    """
    settings = _settings(bootstrap, cfg)
    ensure_topics(settings.kafka, topic_specs(settings.topics))
    replay = Replay(settings.kafka, settings.topics.recommendations)
    pool = WorkerPool(settings, workdir, cfg.model, extra_env=_worker_env(cfg))
    last: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        with Publisher(settings) as pub:
            pub.publish(warm)
        for ev in warm:
            last[ev.user_id] = ev.ts
        for slot in range(cfg.workers):
            pool.start(slot)
        # Drained: every warm-up user's newest list covers their last warm-up event.
        drain_deadline = time.monotonic() + 600
        for user, ts in last.items():
            while replay.wait_covering(user, ts, 1.0) is None:
                _check_workers(pool)
                if time.monotonic() > drain_deadline:
                    raise RuntimeError("the warm-up was not drained in 600 s")
        warm_s = time.monotonic() - t0
        refreshed_before = replay.by_trigger.get("refresh", 0)
        producer = Producer(settings.kafka.client_config(**(PRODUCER_DEFAULTS | {"linger.ms": 0})))
        hits, missing = 0, 0
        staleness: list[int] = []  # events sent between the held list and the event
        kinds: Counter[str] = Counter()  # what the user held: events / refresh / newcomers / none
        start = time.monotonic()
        first_ts = scored[0].ts if scored else 0
        for ev in scored:
            if cfg.pace:
                due = start + (ev.ts - first_ts) / 1000.0 / cfg.pace
                ahead = due - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            prev = last.get(ev.user_id)
            held = None
            if prev is not None:
                held = replay.wait_covering(ev.user_id, prev, cfg.timeout_s)
                if held is None:
                    missing += 1
            if held is None:
                held = replay.held(ev.user_id)
            kind = "none" if held is None else held.trigger if held.event_ts else "newcomers"
            hit = held is not None and ev.item_id in held.items[: cfg.k]
            hits += hit
            kinds[kind] += 1
            kinds[f"{kind}_hits"] += hit
            if trace is not None:
                listed = tuple(held.items[: cfg.k]) if held is not None else ()
                trace.append((ev.user_id, ev.ts, kind, listed))
            if held is not None and held.event_ts:  # the user's own list
                staleness.append(replay.sent_count - held.sent)
            key, value = encode_event(ev)
            replay.sent(ev)
            producer.produce(settings.topics.events, value, key)
            producer.poll(0)
            last[ev.user_id] = ev.ts
            if cfg.sequential:
                producer.flush(10)
                replay.wait_covering(ev.user_id, ev.ts, cfg.timeout_s)
        producer.flush(30)
        scored_s = time.monotonic() - start
        # The last events' lists, for freshness.
        for ev in scored[-50:]:
            replay.wait_covering(ev.user_id, ev.ts, cfg.timeout_s)
        refreshed = replay.by_trigger.get("refresh", 0) - refreshed_before
    finally:
        replay.close()
        pool.close()
    n = max(len(scored), 1)
    fresh = np.asarray(replay.freshness) * 1000.0
    return {
        "workers": cfg.workers,
        "events_scored": len(scored),
        "recall": round(hits / n, 5),
        # As a subscriber that reads only the user's own key sees it (no newcomer list).
        "recall_own_lists": round((hits - kinds["newcomers_hits"]) / n, 5),
        "lists_refreshed_per_event": round(refreshed / n, 3),
        "freshness_p50_ms": round(float(np.percentile(fresh, 50)), 1) if fresh.size else None,
        "freshness_p99_ms": round(float(np.percentile(fresh, 99)), 1) if fresh.size else None,
        "previous_list_missing_share": round(missing / n, 5),
        **_staleness(staleness, cfg.policy.stale_events),
        "held": dict(kinds),
        "warmup_s": round(warm_s, 1),
        "scored_s": round(scored_s, 1),
    }


def _check_workers(pool: WorkerPool) -> None:
    """Raise with the last line of its log when a worker exited by itself."""
    for slot in pool.crashed():
        lines = (pool.workdir / f"worker{slot}.log").read_text(errors="replace").splitlines()
        raise RuntimeError(f"worker {slot} exited: {lines[-1] if lines else '(no output)'}")


def _staleness(events_since: list[int], stale_events: int) -> dict[str, Any]:
    s = np.asarray(events_since, dtype=np.float64)
    if not s.size:
        return {}
    return {
        "held_staleness_median_events": float(np.median(s)),
        "held_staleness_p90_events": float(np.percentile(s, 90)),
        "held_stale_share": round(float((s >= stale_events).mean()), 4),
    }


def run_offline(cfg: LiveConfig, warm: list[Event], scored: list[Event]) -> dict[str, Any]:
    """The evaluator's subscriber figures on the same events (``evaluate --subscriber``)."""
    import torch

    torch.set_num_threads(1)
    model = create_model(cfg.model, seed=cfg.seed)
    policies = {"refresh": cfg.policy, "off": RefreshPolicy(enabled=False)}
    if cfg.budget_percent <= 0:
        policies["refresh"] = RefreshPolicy(enabled=False)
    reports = subscriber_replay(
        {cfg.model: model},
        warm,
        scored,
        policies,
        k=cfg.k,
        backlog=(cfg.batch_max_events, cfg.batch_catch_up_events),
    )
    rep = reports[cfg.model]
    n = max(len(scored), 1)
    catalogue = len({ev.item_id for ev in [*warm, *scored]})
    on = rep.views["refresh"].summary(catalogue)
    off = rep.views["off"].summary(catalogue)
    return {
        "recall": on["recall"],
        "recall_without_refresh": off["recall"],
        "recall_own_lists": on["recall_own_lists"],
        "recall_pull": rep.pull.summary(catalogue, with_lag=False)["recall"],
        "lists_refreshed_per_event": round(int(on["lists_refreshed"] or 0) / n, 3),
        "list_age_median_s": on["list_age_median_s"],
        "held_staleness_median_events": on["list_staleness_median_events"],
        "held_staleness_p90_events": on["list_staleness_p90_events"],
        "held_stale_share": on["stale_share"],
        "held": on["held"],
        "without_refresh_held": off["held"],
    }


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("INTEREST_"):
        raise SystemExit(f"--worker-env takes INTEREST_NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.live_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path)
    p.add_argument("--format", default="synthetic")
    p.add_argument("--protocol", choices=("flurs", "prequential"), default="prequential")
    p.add_argument("--events", type=int, default=10000, help="synthetic stream length")
    add_items_flag(p)
    add_csv_flags(p)
    p.add_argument("--strict", action="store_true")
    p.add_argument("--limit", type=int, help="score at most this many events")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--model", default="interest")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pace", type=float, help="send at X times real time (event-time gaps / X)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for a list")
    p.add_argument("--partitions", type=int, default=4)
    d, w = RefreshPolicy(), WorkerConfig()
    p.add_argument("--refresh-budget-percent", type=int, default=w.refresh_budget_percent)
    p.add_argument("--refresh-stale-events", type=int, default=d.stale_events)
    p.add_argument("--refresh-max-users", type=int, default=d.max_users)
    p.add_argument("--refresh-interval-ms", type=int, default=d.interval_ms)
    p.add_argument("--batch-max-events", type=int, default=BATCH_MAX_EVENTS)
    p.add_argument("--batch-catch-up-events", type=int, default=BATCH_CATCH_UP_EVENTS)
    p.add_argument(
        "--sequential",
        action="store_true",
        help="one event in flight: send the next only once the list covering it came",
    )
    p.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE", help="more settings"
    )
    p.add_argument("--no-offline", action="store_true", help="leave the evaluator's run out")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    events, ratings, _ = _load(args)
    warm, scored = live_events(events, ratings, args.protocol)
    if args.limit is not None:
        scored = scored[: args.limit]
    policy = RefreshPolicy(
        stale_events=args.refresh_stale_events,
        max_users=args.refresh_max_users,
        interval_ms=args.refresh_interval_ms,
        enabled=args.refresh_budget_percent > 0,
    )
    cfg = LiveConfig(
        workers=args.workers,
        model=args.model,
        k=args.k,
        timeout_s=args.timeout,
        pace=args.pace,
        partitions=args.partitions,
        policy=policy,
        budget_percent=args.refresh_budget_percent,
        batch_max_events=args.batch_max_events,
        batch_catch_up_events=args.batch_catch_up_events,
        seed=args.seed,
        sequential=args.sequential,
        worker_env=tuple(_pair(kv) for kv in args.worker_env),
    )
    print(f"{len(warm)} warm-up + {len(scored)} scored events", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="interest-live-") as tmp, _broker(Path(tmp)) as b:
        live = run_live(cfg, b, Path(tmp), warm, scored)
    out: dict[str, Any] = {"live": live}
    if not args.no_offline:
        out["evaluator"] = run_offline(cfg, warm, scored)
    print(json.dumps(out, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
