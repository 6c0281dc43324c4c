"""``interest-stream top`` against a real worker's metrics endpoint."""

from __future__ import annotations

import os
import pty
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stream.cli.publish import Publisher
from stream.cli.top import Scrape, parse_metrics, render
from stream.kafka.broker import free_port
from stream.runtime.native import Worker
from tests.stream.helpers import (
    TinyPopularity,
    make_events,
    make_settings,
    running_worker,
    wait_for,
)

CLI = [sys.executable, "-m", "stream.cli", "top"]


class _Lines:
    """A subprocess's stdout, line by line, with a timeout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def until(self, pattern: str, timeout: float = 30.0) -> list[str]:
        """Lines read up to and including the first that matches ``pattern``."""
        seen: list[str] = []
        while True:
            try:
                line = self._q.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in: {seen}") from None
            if line is None:
                raise AssertionError(f"top ended before {pattern!r}: {seen}")
            seen.append(line)
            if re.search(pattern, line):
                return seen


def test_top_follows_a_worker_and_says_when_it_goes_away(kafka_bootstrap, unique_topics, tmp_path):
    topics = unique_topics(partitions=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    settings = make_settings(kafka_bootstrap, topics, tmp_path / "state", metrics_port=port)
    worker = Worker(settings, TinyPopularity())
    feeding = threading.Event()
    top: subprocess.Popen | None = None
    try:
        with running_worker(worker), Publisher(settings) as pub:
            wait_for(worker.assigned.is_set, 60, "the worker's partitions")
            for _ in range(3):
                pub.send(b"u1", b"{broken json")
            wait_for(lambda: worker.stats.dead_lettered == 3, 30, "the dead letters")
            feeder = threading.Thread(
                target=pub.publish,
                args=(make_events(20_000, n_users=30),),
                kwargs={"rate": 300, "stop": feeding},
            )
            feeder.start()
            wait_for(lambda: worker.stats.applied > 0, 30, "events applied")
            # stdout is a pipe, not a terminal: plain blocks of lines.
            top = subprocess.Popen(
                [*CLI, "--url", url, "--interval", "0.5"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            lines = _Lines(top)
            first = lines.until(r"^  per batch")
            assert (
                first[0].startswith(f"interest-stream top   {url}") and "first reading" in first[0]
            )
            # Later views have rates over the last interval, from two readings.
            frame = [line for line in lines.until(r"^  per batch") if line]
            text = "\n".join(frame)
            assert re.search(r"^interest-stream top .* \(last [\d.]+ s\)$", frame[0]), text
            rate_in = float(
                re.search(r"throughput   in ([\d.,]+)/s", text).group(1).replace(",", "")
            )
            assert rate_in > 0, text
            assert re.search(r"total 3: not-json 3", text), text
            assert re.search(r"latency      p50 [\d.]+ ms", text), text
            assert re.search(r"model        tiny-pop tiny-pop-1   loss -   steps [\d.]+/s", text), (
                text
            )
            assert re.search(r"state        \d+ users in 2 partition\(s\)", text), text
            assert re.search(r"transactions committed [\d.]+/s   aborted 0\.0/s", text), text
            assert re.search(
                r"per batch    poll [\d.]+ ms   decode [\d.]+ ms   step [\d.]+ ms", text
            ), text
            assert re.search(
                r"freshness    refreshed [\d.]+/s   list held p50 \S+ \S* ?p90 .* old   "
                r"no model deltas shared",
                text,
            ), text
            # On a terminal the view is redrawn in place.
            screen = _on_a_terminal([*CLI, "--url", url, "--interval", "0.3", "-n", "3"])
            assert screen.count("interest-stream top") == 3
            assert screen.count("\x1b[11F\x1b[J") == 2  # up over the 11 lines drawn, clear
            feeding.set()
            feeder.join(30)
        # The worker stopped: top says so on one line and keeps trying.
        gone = lines.until(r"cannot read metrics", timeout=30)
        assert re.search(
            rf"cannot read metrics from {re.escape(url)}: .*retrying every 0.5 s", gone[-1]
        )
        assert top.poll() is None
    finally:
        feeding.set()
        if top is not None:
            top.terminate()
            top.wait(timeout=10)
    assert top.stderr is not None and "Traceback" not in top.stderr.read()


def _on_a_terminal(args: list[str]) -> str:
    """What ``args`` writes to a pseudo-terminal (its stdout is a TTY), once it exits."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    return out.decode()


def test_an_unreachable_endpoint_is_one_line_and_exit_1():
    url = f"http://127.0.0.1:{free_port()}/metrics"
    out = subprocess.run(
        [*CLI, "--url", url, "-n", "1"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"interest-stream: error: cannot read metrics from {url}: Connection refused "
        "(is a worker running with that --metrics-port?)"
    ]


@contextmanager
def _serving(body: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_is_not_a_worker_is_one_line_and_exit_1():
    for body, says in (
        (b"<html>a web page</html>", "not Prometheus metrics"),
        (b"# TYPE up gauge\nup 1\n", "serves no interest-stream worker metrics"),
    ):
        with _serving(body) as url:
            out = subprocess.run(
                [*CLI, "--url", url, "-n", "1"], capture_output=True, text=True, timeout=60
            )
        assert out.returncode == 1
        (line,) = out.stderr.splitlines()
        assert line.startswith("interest-stream: error: ") and says in line


def test_bad_flags_are_one_line_and_exit_2():
    for args in (["--interval", "0"], ["-n", "0"], ["--url", "localhost:9464"]):
        out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr


def _scrape(at: float, consumed: float, fast: float, slow: float) -> Scrape:
    """A worker's metrics reduced to a counter and a two-bucket latency histogram."""
    text = (
        "# TYPE interest_messages_consumed_total counter\n"
        f"interest_messages_consumed_total {consumed}\n"
        "# TYPE interest_event_to_list_latency_seconds histogram\n"
        f'interest_event_to_list_latency_seconds_bucket{{le="0.01"}} {fast}\n'
        f'interest_event_to_list_latency_seconds_bucket{{le="1.0"}} {fast + slow}\n'
        f'interest_event_to_list_latency_seconds_bucket{{le="+Inf"}} {fast + slow}\n'
        f"interest_event_to_list_latency_seconds_count {fast + slow}\n"
        "interest_event_to_list_latency_seconds_sum 1.0\n"
    )
    return parse_metrics(text, at=at, wall=at)


def test_rates_and_quantiles_are_over_the_window_and_survive_a_restart():
    before, after = _scrape(10.0, 1000, 900, 0), _scrape(12.0, 1400, 900, 400)
    text = "\n".join(render(before, after, "u"))
    assert "throughput   in 200.0/s" in text  # 400 messages in 2 s
    # In the window every event was slow (0.01-1 s); since start most were fast.
    assert "latency      p50 505 ms" in text and "since start: p50 7.2 ms" in text
    # The worker restarted: its counters began again from zero, no negative rates.
    restarted = _scrape(14.0, 100, 100, 0)
    text = "\n".join(render(after, restarted, "u"))
    assert "throughput   in 50.0/s" in text and "p50 5.0 ms" in text


def test_freshness_shows_refresh_list_age_and_how_far_behind_sharing_is():
    def scrape(at: float, refreshed: float, young: float, old: float, merges: float) -> Scrape:
        text = (
            "# TYPE interest_lists_refreshed_total counter\n"
            f"interest_lists_refreshed_total {refreshed}\n"
            "# TYPE interest_list_age_seconds histogram\n"
            f'interest_list_age_seconds_bucket{{le="0.5"}} {young}\n'
            f'interest_list_age_seconds_bucket{{le="60.0"}} {young + old}\n'
            f'interest_list_age_seconds_bucket{{le="+Inf"}} {young + old}\n'
            f"interest_list_age_seconds_count {young + old}\n"
            "interest_list_age_seconds_sum 1.0\n"
            "# TYPE interest_model_merges_total counter\n"
            f"interest_model_merges_total {merges}\n"
            "# TYPE interest_model_update_bytes_total counter\n"
            f'interest_model_update_bytes_total{{kind="counts"}} {100 * merges}\n'
            "# TYPE interest_model_sync_lag_events gauge\n"
            "interest_model_sync_lag_events 1234\n"
        )
        return parse_metrics(text, at=at, wall=at)

    # 10 lists refreshed in 2 s; in the window every list held was 0.5-60 s old.
    line = next(
        x
        for x in render(scrape(10.0, 0, 100, 0, 4), scrape(12.0, 10, 100, 10, 6), "u")
        if x.startswith("  freshness")
    )
    assert line.startswith("  freshness    refreshed 5.0/s   list held p50 30.2 s p90 54.0 s old")
    assert line.endswith("sharing 1,234 events behind, 1.0/s merges")
    # Without sharing (nothing published, nothing merged) it says so.
    line = render(None, scrape(1.0, 0, 0, 0, 0), "u")[-2]
    assert line == "  freshness    refreshed -   list held p50 - p90 - old   no model deltas shared"
