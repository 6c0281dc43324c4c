"""``interest-stream top``: a running worker at a glance, read from its metrics endpoint.

For a terminal without Grafana: every ``--interval`` seconds it reads the
worker's ``/metrics`` (the Prometheus text format, parsed with
prometheus-client's parser) and shows rates over the last interval (messages in, events
applied, lists out, dead letters), lag, event-to-list latency quantiles (from
the histogram's buckets, as ``histogram_quantile`` does), the online hit rate,
users in state, transactions, time per stage, the model's health and freshness
(lists refreshed while their user was idle, the age of the list a user held at
their next event, how far behind model sharing is). On a terminal the view is
redrawn in place; otherwise each refresh is printed as plain lines followed by
a blank line (``-n`` stops after that many).

An endpoint that cannot be read at the first attempt is one line on stderr
and exit 1. Once it has been read, a worker that goes away (restarting,
stopped) is shown as a status line and ``top`` keeps trying every interval
until it answers again or Ctrl-C (exit 0).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from core.errors import ConfigError, DataError, InterestStreamError

__all__ = ["Scrape", "parse_metrics", "histogram_quantile", "render", "run_top", "register"]

DEFAULT_URL = "http://localhost:9464/metrics"
_STAGES = ("poll", "decode", "step", "commit", "learn")

Labels = dict[str, str]


@dataclass(frozen=True)
class Scrape:
    """One reading of a metrics endpoint: every sample by name, and when it was taken."""

    at: float  # time.monotonic() of the reading
    wall: float  # time.time() of the reading
    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.samples

    def total(self, name: str, **match: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``match`` (0 when none)."""
        return sum(
            v
            for labels, v in self.samples.get(name, [])
            if all(labels.get(k) == want for k, want in match.items())
        )

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """Samples of ``name`` summed per value of ``labels``."""
        out: dict[tuple[str, ...], float] = {}
        for sample_labels, v in self.samples.get(name, []):
            key = tuple(sample_labels.get(label, "") for label in labels)
            out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of histogram ``name``, summed over other labels."""
        counts: dict[float, float] = {}
        for labels, v in self.samples.get(f"{name}_bucket", []):
            if all(labels.get(k) == want for k, want in match.items()):
                le = float(labels["le"])
                counts[le] = counts.get(le, 0.0) + v
        return sorted(counts.items())


def parse_metrics(text: str, at: float | None = None, wall: float | None = None) -> Scrape:
    """A :class:`Scrape` of Prometheus text ``text`` (DataError when it is not that format).

    >>> text = 'x_total{reason="a"} 2\\nx_total{reason="b"} 3\\n'
    >>> s = parse_metrics("# TYPE x_total counter\\n" + text)
    >>> s.total("x_total"), s.total("x_total", reason="b")
    (5.0, 3.0)
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[Labels, float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(
                    (dict(sample.labels), float(sample.value))
                )
    except (ValueError, TypeError, IndexError) as exc:
        raise DataError(f"not Prometheus metrics: {exc}") from None
    return Scrape(
        time.monotonic() if at is None else at, time.time() if wall is None else wall, samples
    )


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, interpolated in its bucket like Prometheus.

    ``buckets`` are (upper bound, cumulative count), the last one ``+Inf``; None
    when the histogram is empty. A quantile in the ``+Inf`` bucket is the
    highest finite bound.

    >>> histogram_quantile(0.75, [(0.01, 0), (0.1, 10), (1.0, 20), (math.inf, 20)])
    0.55
    >>> histogram_quantile(0.5, [(0.1, 0), (math.inf, 0)]) is None
    True
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _increase(cur: float, prev: float) -> float:
    # A counter that went down was reset (the worker restarted): count from zero.
    return cur - prev if cur >= prev else cur


class _Window:
    """Differences between two scrapes (``prev`` None: the first reading, no window yet)."""

    def __init__(self, prev: Scrape | None, cur: Scrape) -> None:
        self.prev, self.cur = prev, cur
        self.seconds = cur.at - prev.at if prev is not None else 0.0

    def rate(self, name: str, **match: str) -> float | None:
        if self.prev is None or self.seconds <= 0:
            return None
        return _increase(self.cur.total(name, **match), self.prev.total(name, **match)) / (
            self.seconds
        )

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        now = self.cur.buckets(name, **match)
        if self.prev is None:
            return []
        before = dict(self.prev.buckets(name, **match))
        if any(count < before.get(le, 0.0) for le, count in now):
            return now  # reset
        return [(le, count - before.get(le, 0.0)) for le, count in now]


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _pct(num: float | None, den: float | None) -> str:
    if num is None or not den:
        return "-"
    return f"{100.0 * num / den:.1f}%"


def render(prev: Scrape | None, cur: Scrape, url: str) -> list[str]:
    """The lines of one view of ``cur``; rates over the time since ``prev``."""
    w = _Window(prev, cur)
    per = f"last {w.seconds:.1f} s" if prev is not None else "first reading"
    lines = [f"interest-stream top   {url}   {datetime.now():%H:%M:%S}   ({per})"]

    batches = w.rate("interest_batches_total")
    msgs = w.rate("interest_messages_consumed_total")
    per_batch = msgs / batches if msgs is not None and batches else None
    lines.append(
        f"  throughput   in {_num(msgs, '/s')}   applied "
        f"{_num(w.rate('interest_events_applied_total'), '/s')}   lists out "
        f"{_num(w.rate('interest_lists_published_total'), '/s')}   batches "
        f"{_num(batches, '/s')} ({_num(per_batch)} msg/batch)   total in "
        f"{cur.total('interest_messages_consumed_total'):,.0f}"
    )

    lag = cur.by("interest_consumer_lag_messages", "topic", "partition")
    worst = sorted((kv for kv in lag.items() if kv[1] > 0), key=lambda kv: -kv[1])[:4]
    detail = ", ".join(f"{t}[{p}] {v:,.0f}" for (t, p), v in worst)
    lines.append(
        f"  lag          {sum(lag.values()):,.0f} messages"
        + (f"   (most: {detail})" if detail else "")
    )

    name = "interest_event_to_list_latency_seconds"
    window, total = w.buckets(name), cur.buckets(name)
    qs = "   ".join(
        f"p{int(q * 100)} {_ms(histogram_quantile(q, window))}" for q in (0.5, 0.9, 0.99)
    )
    lines.append(
        f"  latency      {qs}   (since start: p50 {_ms(histogram_quantile(0.5, total))}, "
        f"p99 {_ms(histogram_quantile(0.99, total))})"
    )

    hits, scored = "interest_list_hits_total", "interest_events_scored_total"
    lines.append(
        f"  hit rate     {_pct(w.rate(hits), w.rate(scored))}   "
        f"(since start: {_pct(cur.total(hits), cur.total(scored))})"
    )

    reasons = {r: v for (r,), v in cur.by("interest_dead_letters_total", "reason").items() if v}
    top_reasons = ", ".join(
        f"{r} {v:,.0f}" for r, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
    )
    lines.append(
        f"  dead letters {_num(w.rate('interest_dead_letters_total'), '/s')}   total "
        f"{sum(reasons.values()):,.0f}" + (f": {top_reasons}" if top_reasons else "")
    )

    users = cur.by("interest_users_in_state", "partition")
    left = cur.by("interest_restore_remaining_records", "partition")
    restoring = ", ".join(f"[{p}] {v:,.0f} left" for (p,), v in sorted(left.items()) if v)
    lines.append(
        f"  state        {sum(users.values()):,.0f} users in {len(users)} partition(s)   "
        + (f"restoring: {restoring}" if restoring else "no restore running")
    )

    if cur.has("interest_transactions_total"):
        lines.append(
            f"  transactions committed "
            f"{_num(w.rate('interest_transactions_total', outcome='committed'), '/s')}   aborted "
            f"{_num(w.rate('interest_transactions_total', outcome='aborted'), '/s')} "
            f"({cur.total('interest_transactions_total', outcome='aborted'):,.0f} in all)"
        )

    lines.append("  model        " + _model_line(w, cur))
    lines.append("  freshness    " + _freshness_line(w, cur))

    stage_parts = []
    for stage in _STAGES:
        count = w.rate("interest_stage_seconds_count", stage=stage)
        spent = w.rate("interest_stage_seconds_sum", stage=stage)
        stage_parts.append(f"{stage} {_ms(spent / count) if spent is not None and count else '-'}")
    lines.append("  per batch    " + "   ".join(stage_parts))
    return lines


def _age(seconds: float | None) -> str:
    return _ms(seconds) if seconds is None or seconds < 1 else f"{seconds:,.1f} s"


def _freshness_line(w: _Window, cur: Scrape) -> str:
    """Refresh of idle users' lists, the age of the list held at the next event, sharing."""
    ages = w.buckets("interest_list_age_seconds")
    parts = [
        f"refreshed {_num(w.rate('interest_lists_refreshed_total'), '/s')}",
        f"list held p50 {_age(histogram_quantile(0.5, ages))} "
        f"p90 {_age(histogram_quantile(0.9, ages))} old",
    ]
    if cur.total("interest_model_update_bytes_total") or cur.total("interest_model_merges_total"):
        behind = cur.total("interest_model_sync_lag_events")
        parts.append(
            f"sharing {behind:,.0f} events behind, "
            f"{_num(w.rate('interest_model_merges_total'), '/s')} merges"
        )
    else:
        parts.append("no model deltas shared")
    return "   ".join(parts)


def _model_line(w: _Window, cur: Scrape) -> str:
    info = [labels for labels, v in cur.samples.get("interest_model_info", []) if v]
    parts = [f"{info[0].get('model', '?')} {info[0].get('version', '?')}" if info else "?"]
    loss = cur.samples.get("interest_training_loss")
    parts.append(f"loss {loss[0][1]:.4g}" if loss else "loss -")
    parts.append(f"steps {_num(w.rate('interest_model_steps_total'), '/s')}")
    snap = cur.samples.get("interest_model_last_snapshot_timestamp_seconds")
    parts.append(
        f"snapshot {max(0.0, cur.wall - snap[0][1]):.0f} s ago" if snap else "no snapshot yet"
    )
    return "   ".join(parts)


def fetch(url: str, timeout: float = 5.0) -> Scrape:
    """Read and parse ``url``; InterestStreamError with the reason when that fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise InterestStreamError(f"cannot read metrics from {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = ""
        if isinstance(reason, ConnectionRefusedError):
            hint = " (is a worker running with that --metrics-port?)"
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        raise InterestStreamError(f"cannot read metrics from {url}: {reason}{hint}") from None
    scrape = parse_metrics(text)
    if not scrape.has("interest_messages_consumed_total"):
        raise DataError(f"{url} serves no interest-stream worker metrics")
    return scrape


class _Screen:
    """Redraws in place on a terminal (lines cut to its width); prints plain blocks otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0

    def show(self, lines: list[str]) -> None:
        if self.tty:
            # A wrapped line would take two rows and spoil the redraw: cut at the width.
            width = shutil.get_terminal_size().columns - 1
            lines = [line[:width] for line in lines]
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = len(lines)
        else:
            lines = [*lines, ""]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()


def run_top(url: str, interval: float, iterations: int | None, out: TextIO = sys.stdout) -> int:
    """Show ``url`` every ``interval`` seconds, ``iterations`` times (None: until Ctrl-C)."""
    screen = _Screen(out)
    prev = fetch(url)  # unreachable at first: one line and exit 1 (see the module doc)
    shown = 0
    frame = render(None, prev, url)
    screen.show(frame)
    shown += 1
    down_since: float | None = None
    try:
        while iterations is None or shown < iterations:
            time.sleep(interval)
            try:
                cur = fetch(url)
            except InterestStreamError as exc:
                if down_since is None:
                    down_since = time.time()
                    if not screen.tty:
                        out.write(f"{exc}; retrying every {interval:g} s\n")
                        out.flush()
                if screen.tty:
                    status = (
                        f"  UNREACHABLE since {datetime.fromtimestamp(down_since):%H:%M:%S}: "
                        f"{exc}; retrying every {interval:g} s (Ctrl-C to quit)"
                    )
                    screen.show([*frame, status])
                continue
            if down_since is not None:
                down_since = None
                if not screen.tty:
                    out.write(f"{url} answers again\n")
                    out.flush()
            frame = render(prev, cur, url)
            screen.show(frame)
            shown += 1
            prev = cur
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves a live view
    return 0


def _top(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise ConfigError("--interval must be a positive number of seconds")
    if args.iterations is not None and args.iterations < 1:
        raise ConfigError("-n must be at least 1")
    if not args.url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must be an http:// or https:// address, not {args.url!r}")
    return run_top(args.url, args.interval, args.iterations)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``top`` to the ``interest-stream`` parser."""
    p = sub.add_parser("top", help="a running worker live in the terminal, from its metrics")
    p.add_argument(
        "--url", default=DEFAULT_URL, help=f"the worker's metrics endpoint (default {DEFAULT_URL})"
    )
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    p.add_argument(
        "-n",
        dest="iterations",
        type=int,
        metavar="N",
        help="stop after N refreshes (default: until Ctrl-C)",
    )
    p.set_defaults(func=_top)
