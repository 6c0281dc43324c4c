"""The marked blocks of the README and the documentation pages, run as written.

So neither can drift from the code. A block is marked by an HTML comment on the
line before its fence, which neither GitHub nor the site shows:
``<!-- test: NAME -->``. The blocks are looked for in ``README.md`` and every
page under ``docs/``, wherever they live; a name is used once. Every marked
block has a test here, and every test a block:

- ``by-hand``: the pieces run by hand, under ``bash -e`` in a temporary
  directory, with a broker data dir of its own (``INTEREST_CACHE_DIR``, the
  cached broker jars linked in) and a free metrics port. Once the tail shows
  u7's current list, the test presses Ctrl-C (SIGINT to the tail, as a
  terminal would); the block then stops its worker and broker. Whatever
  happens, the test stops what the block started. About a minute: the publish
  alone takes 40 s, as the README says. (The getting-started page shows the
  README's section, included when the site is built.)
- ``secured-config``: parsed as the TOML config file; the password never shows.
- ``privacy-config``: parsed as the TOML config file beside a key file at the
  path it names; the key is read from it and never shows.
- ``evaluate``: run as written, with a small stand-in for MovieLens-100K in
  RecBole's format in ``ml-100k/``.
- ``custom-model``: the example model of "Writing a model", run with the
  Python running the tests; it prints what the page says it prints.
- ``python-producer``: run against the test broker (its ``B`` line and the
  topic name swapped for the test's): the event lands on the partition its key
  belongs to, and decodes to the event it says.
- ``python-consumer``: run against a topic holding a list written by the
  worker's own encoder and a tombstone: it prints the list, then is stopped.

The commands run from this checkout (``PYTHONPATH``) with the venv running the
tests first on ``PATH``, so ``interest-stream`` is the one these pages describe.
The README's links into the documentation are checked too (the site's own
links are checked by ``mkdocs build --strict``).
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import IO

import pytest

from model.eval.metrics import FLURS_TRAIN, FLURS_UPDATE
from stream.config import load_settings
from stream.kafka.broker import KAFKA_VERSION, ensure_jars, free_port, read_running

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
MARK = re.compile(r"<!-- test: ([\w-]+) -->")
FENCE = re.compile(r"```(\w*)")
MODELS = {"interest", "interest-nocontent", "interest-static", "itemknn", "popular", "imf"}
# A list line of tail: time, user, [model], item:score ...
U7_LIST = re.compile(r"\d\d:\d\d:\d\d\.\d{3} u7 \[interest-[^\]]+\] i\d+:\S+")


def pages() -> list[Path]:
    """The README and every documentation page."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def readme_blocks(text: str, where: str = "README") -> dict[str, tuple[str, str]]:
    """``{name: (fence language, block text)}`` of the marked blocks of ``text``."""
    lines = text.splitlines()
    blocks: dict[str, tuple[str, str]] = {}
    for i, line in enumerate(lines):
        mark = MARK.fullmatch(line.strip())
        if mark is None:
            continue
        name = mark.group(1)
        fence = FENCE.fullmatch(lines[i + 1].strip()) if i + 1 < len(lines) else None
        assert fence is not None, f"{where} line {i + 1}: {name} is not followed by a ``` block"
        assert name not in blocks, f"{where}: two blocks named {name}"
        body = []
        for inner in lines[i + 2 :]:
            if inner.strip() == "```":
                break
            body.append(inner)
        else:
            raise AssertionError(f"{where}: the {name} block is not closed")
        blocks[name] = (fence.group(1), "\n".join(body) + "\n")
    return blocks


def marked_blocks(paths: list[Path]) -> dict[str, tuple[str, str]]:
    """The marked blocks of every page in ``paths``; a name may be used once in all."""
    found: dict[str, tuple[str, str]] = {}
    where: dict[str, str] = {}
    for path in paths:
        page = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        for name, block in readme_blocks(path.read_text(encoding="utf-8"), page).items():
            assert name not in found, f"two blocks named {name}: {where[name]} and {page}"
            found[name], where[name] = block, page
    return found


@pytest.fixture(scope="module")
def blocks() -> dict[str, tuple[str, str]]:
    return marked_blocks(pages())


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a block: no INTEREST_ settings of the caller, its own cache dir."""
    assert (BIN / "interest-stream").exists(), f"no interest-stream in {BIN}: install the package"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    cache = tmp_path / "cache"
    cache.mkdir()
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        "INTEREST_CACHE_DIR": str(cache),
    }


def test_every_marked_block_has_a_test(blocks):
    assert {name: lang for name, (lang, _) in blocks.items()} == {
        "by-hand": "sh",
        "evaluate": "sh",
        "secured-config": "toml",
        "privacy-config": "toml",
        "custom-model": "python",
        "python-producer": "python",
        "python-consumer": "python",
    }


def test_a_name_is_used_once_across_the_pages(tmp_path):
    for page in ("a.md", "b.md"):
        (tmp_path / page).write_text("<!-- test: same -->\n```sh\ntrue\n```\n")
    with pytest.raises(AssertionError, match="two blocks named same"):
        marked_blocks([tmp_path / "a.md", tmp_path / "b.md"])


def test_the_readme_links_only_to_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the documentation"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"the README links to files that do not exist: {missing}"


def test_the_readme_stays_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_the_custom_model_runs_and_prints_what_the_page_says(blocks, tmp_path, shell_env):
    _, code = blocks["custom-model"]
    (tmp_path / "custom_model.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "custom_model.py"],
        cwd=tmp_path,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "category-popular category-popular-1: learns",
        "u1 ['i2']",
        "u2 ['i1']",
        "u3 []",
    ]
    page = (DOCS / "extending" / "models.md").read_text(encoding="utf-8")
    assert "`u1 ['i2']`, `u2 ['i1']`" in page and "`u3 []`" in page


def test_secured_cluster_config_parses_and_hides_its_secret(blocks, tmp_path):
    _, text = blocks["secured-config"]
    path = tmp_path / "secured.toml"
    path.write_text(text)
    settings = load_settings(config_file=path, env={})
    client = tomllib.loads(text)["kafka"]["client"]
    assert settings.kafka.bootstrap_servers == "broker1:9093,broker2:9093"
    assert settings.kafka.client == client
    assert client["security.protocol"] == "SASL_SSL"
    shown = repr(settings)
    assert repr(client["sasl.password"]) not in shown
    assert "'sasl.password': '***'" in shown and "'sasl.username': 'interest'" in shown


def test_privacy_config_reads_the_key_from_its_file_and_hides_it(blocks, tmp_path, monkeypatch):
    _, text = blocks["privacy-config"]
    path = tmp_path / "privacy.toml"
    path.write_text(text)
    key = "7f" * 32
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "interest-id.key").write_text(key + "\n")  # as openssl writes it
    monkeypatch.chdir(tmp_path)  # the block's path is relative to where the worker runs
    settings = load_settings(config_file=path, env={})
    assert settings.privacy.id_key == key.encode() and settings.privacy.log_ids is False
    assert key not in repr(settings)


def _write_small_movielens(directory: Path) -> None:
    """A few hundred ratings in RecBole's ml-100k format (same columns, same files)."""
    rng = random.Random(7)
    directory.mkdir()
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for i in range(1500):
        rating = 5 if rng.random() < 0.4 else rng.randint(1, 4)
        rows.append(f"{rng.randint(1, 40)}\t{rng.randint(1, 80)}\t{rating}\t{880000000 + i * 60}")
    (directory / "ml-100k.inter").write_text("\n".join(rows) + "\n")
    genres = ["Action", "Comedy", "Drama", "Thriller"]
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{i}\tFilm {i}\t1995\t{genres[i % 4]} {genres[(i + 1) % 4]}" for i in range(1, 81)]
    (directory / "ml-100k.item").write_text("\n".join(items) + "\n")


def _json_documents(text: str) -> list[dict]:
    docs, decoder, at = [], json.JSONDecoder(), 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
    return docs


def test_evaluate_commands(blocks, tmp_path, shell_env):
    _, script = blocks["evaluate"]
    _write_small_movielens(tmp_path / "ml-100k")
    proc = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    quick, movielens = _json_documents(proc.stdout)
    assert json.loads((tmp_path / "quick.json").read_text()) == quick
    assert (quick["protocol"], quick["k"], quick["events_tested"]) == ("prequential", 10, 2000)
    assert set(quick["models"]) == MODELS
    assert quick["models"]["interest"]["lag_switches"] > 0  # the synthetic stream's drift
    # FluRS: the ratings of 5 are the events; the first 20% pre-train, the next 10% update.
    rows = (tmp_path / "ml-100k" / "ml-100k.inter").read_text().splitlines()[1:]
    fives = sum(row.split("\t")[2] == "5" for row in rows)
    assert movielens["protocol"] == "flurs"
    assert movielens["events_tested"] == fives - int(fives * (FLURS_TRAIN + FLURS_UPDATE))
    assert set(movielens["models"]) == MODELS
    for doc in (quick, movielens):
        assert all(0 <= m["recall"] <= 1 for m in doc["models"].values())


def _child_with(parent: int, word: str) -> int:
    """The pid of ``parent``'s child whose command line holds ``word``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == parent and word.encode() in argv:
            return int(stat.parent.name)
    raise AssertionError(f"no child of {parent} runs {word!r}")


def _lines_of(stream: IO[str]) -> queue.Queue:
    """The lines of ``stream``, read in a thread, then None at its end."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of process group ``pgid`` is left."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the shell and what it left running in its process group (the worker)."""
    for sig, grace_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
            time.sleep(0.2)


@pytest.mark.kafka
def test_running_the_pieces_by_hand(blocks, tmp_path, shell_env):
    _, script = blocks["by-hand"]
    # The broker jars are fetched once into the usual cache; the block's cache links them.
    (Path(shell_env["INTEREST_CACHE_DIR"]) / f"kafka-{KAFKA_VERSION}").symlink_to(
        ensure_jars().parent
    )
    env = shell_env | {"INTEREST_METRICS_PORT": str(free_port())}
    (tmp_path / "block.sh").write_text(script)
    stderr_path = tmp_path / "stderr.txt"
    out: list[str] = []
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            ["bash", "-e", "block.sh"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        lines = _lines_of(proc.stdout)
        deadline = time.monotonic() + 180
        while not out:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                # The worker keeps stdout open: the shell's exit says that the block ended.
                ended = proc.poll() is not None
                assert not ended, f"the block ended early:\n{stderr_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the tail showed nothing within 180 s"
                continue
            assert line is not None, f"the block ended early:\n{stderr_path.read_text()[-3000:]}"
            out.append(line)
        assert U7_LIST.match(out[0]), f"the tail's first line is not u7's list: {out[0]!r}"
        # Ctrl-C to the tail, the shell's foreground command.
        os.kill(_child_with(proc.pid, "tail"), signal.SIGINT)
        proc.wait(90)
        while (line := lines.get(timeout=10)) is not None:
            out.append(line)
        broker_left = read_running(Path(env["INTEREST_CACHE_DIR"]) / "broker")
    finally:
        _stop_group(proc)
        subprocess.run(
            ["interest-stream", "broker", "stop"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
        )
    err = stderr_path.read_text()
    limit = re.search(r"--limit (\d+)", script)
    assert limit is not None, "the by-hand block publishes a bounded stream"
    assert proc.returncode == 0, err[-3000:]
    assert all(U7_LIST.match(line) for line in out), out  # the current list, maybe new ones
    assert broker_left is None
    for said in (
        "Kafka broker running",
        "worker starting",
        f"published {limit.group(1)} event(s) to interest.events",
        "SIGTERM received, finishing the batch",
        "worker stopped",
        "stopped broker pid",
    ):
        assert said in err, err[-3000:]
    assert "Traceback" not in err and "error:" not in err, err[-3000:]


def _for_the_test_broker(code: str, bootstrap: str, topics: dict[str, str]) -> str:
    """A client block pointed at the test broker and this test's topics."""
    line = re.search(r'^B = "[^"]*".*$', code, re.MULTILINE)
    assert line is not None, "the block names its bootstrap address on a line of its own"
    code = code.replace(line.group(0), f"B = {bootstrap!r}")
    for name, unique in topics.items():
        assert f'"{name}"' in code, f"the block uses the {name} topic"
        code = code.replace(f'"{name}"', repr(unique))
    return code


@pytest.mark.kafka
def test_the_python_producer_sends_an_event_where_the_worker_reads_it(
    blocks, tmp_path, shell_env, kafka_bootstrap, kafka_config, unique_topics
):
    from confluent_kafka import Consumer, TopicPartition

    from core.partition import partition_for
    from core.types import Event
    from engine.events import EventValidator, decode_event
    from stream.kafka.topics import ensure_topics, topic_specs

    topics = unique_topics()
    ensure_topics(kafka_config, topic_specs(topics))
    _, code = blocks["python-producer"]
    code = _for_the_test_broker(code, kafka_bootstrap, {"interest.events": topics.events})
    (tmp_path / "producer.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "producer.py"],
        cwd=tmp_path,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    consumer = Consumer(
        kafka_config.client_config(
            **{"group.id": f"readme-{topics.events}", "enable.auto.commit": False}
        )
    )
    try:
        home = partition_for(b"u7", topics.partitions)
        consumer.assign([TopicPartition(topics.events, home, 0)])
        deadline, msg = time.monotonic() + 30, None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            msg = None if msg is not None and msg.error() else msg
        assert msg is not None, "the event is not on the partition its key belongs to"
        event = decode_event(msg.key(), msg.value(), msg.timestamp()[1], EventValidator())
        assert isinstance(event, Event), event
        assert (event.user_id, event.item_id, event.event) == ("u7", "i161", "click")
    finally:
        consumer.close()


@pytest.mark.kafka
def test_the_python_consumer_prints_the_lists(
    blocks, tmp_path, shell_env, kafka_bootstrap, kafka_config, unique_topics
):
    from confluent_kafka import Producer

    from core.types import Recommendation
    from engine.events import encode_recommendation
    from stream.kafka.topics import ensure_topics, topic_specs

    topics = unique_topics()
    ensure_topics(kafka_config, topic_specs(topics))
    rec = Recommendation("u7", (("i160", 3.2), ("i12", 1.5)), "interest-3", 1767225600000)
    producer = Producer(kafka_config.client_config())
    producer.produce(topics.recommendations, key=b"u8", value=None)  # an erased user
    key, value = encode_recommendation(rec, 1767225600042)
    producer.produce(topics.recommendations, key=key, value=value)
    assert producer.flush(30) == 0
    _, code = blocks["python-consumer"]
    code = _for_the_test_broker(
        code, kafka_bootstrap, {"interest.recommendations": topics.recommendations}
    )
    (tmp_path / "consumer.py").write_text(code)
    proc = subprocess.Popen(
        [sys.executable, "consumer.py"],
        cwd=tmp_path,
        env=shell_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines_of(proc.stdout)
        line = lines.get(timeout=60)
        assert line == "u7 ['i160', 'i12'] events\n", line
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]
