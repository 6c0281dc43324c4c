"""The installed command: broker lifecycle and one-line errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "stream.cli"]


def _run(
    args: list[str], env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI + args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_console_script_is_installed():
    exe = shutil.which("interest-stream", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "broker" in out.stdout


@pytest.mark.kafka  # starts a broker of its own
def test_broker_start_status_stop(tmp_path: Path):
    data = tmp_path / "broker"
    start = _run(["broker", "start", "--data-dir", str(data)])
    assert start.returncode == 0, start.stderr
    bootstrap = start.stdout.strip()
    assert bootstrap.startswith("127.0.0.1:")
    try:
        status = _run(["broker", "status", "--data-dir", str(data)])
        assert status.returncode == 0 and f"bootstrap={bootstrap}" in status.stdout
        again = _run(["broker", "start", "--data-dir", str(data)])
        assert again.returncode != 0 and "already running" in again.stderr
        assert "Traceback" not in again.stderr
        topics = _run(["topics", "--bootstrap-servers", bootstrap])
        assert topics.returncode == 0 and "interest.events: created" in topics.stdout
    finally:
        stop = _run(["broker", "stop", "--data-dir", str(data)])
    assert stop.returncode == 0
    status = _run(["broker", "status", "--data-dir", str(data)])
    assert status.returncode == 1 and "no broker running" in status.stderr
    assert (data / "broker.log").stat().st_size > 0


def test_missing_java_is_one_clear_line(tmp_path: Path):
    # Only the Python interpreter's directory on PATH: no java, no mvn.
    env = {"PATH": str(Path(sys.executable).parent), "INTEREST_CACHE_DIR": str(tmp_path)}
    out = _run(["broker", "start", "--data-dir", str(tmp_path / "b")], env=env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found on PATH" in lines[0] and "install" in lines[0]


@pytest.mark.parametrize(
    "command", [["topics"], ["demo", "--seconds", "5"], ["worker", "--metrics-port", "0"]]
)
def test_unreachable_broker_is_one_clear_line(command, tmp_path):
    env = {"INTEREST_STATE_DIR": str(tmp_path / "state")}
    out = _run([*command, "--bootstrap-servers", "127.0.0.1:9"], env=env, timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "interest-stream: error: cannot reach Kafka at 127.0.0.1:9 (_TRANSPORT)"
    ]


@pytest.mark.parametrize("args", [["topics"], ["topics", "--config", "/nonexistent.toml"]])
def test_config_mistakes_exit_non_zero_without_traceback(args, monkeypatch):
    env = {"INTEREST_KAFKA_BOOTSTRAP": ""}
    out = _run(args, env=env)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.startswith("interest-stream: error:")


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["broker", "start", "--port", "70000"], {}, "a port is from 1 to 65535, got 70000"),
        (["broker", "start", "--port", "x"], {}, "not a port number: 'x'"),
        (["topics"], {"INTEREST_LOG_LEVEL": "LOUD"}, "INTEREST_LOG_LEVEL must be one of"),
        (["worker", "--group", ""], {}, "the consumer group"),
        (["demo", "--seconds", "0"], {}, "--seconds must be a positive number"),
        (["tail", "--user", ""], {}, "--user '': not a user id the workers accept (empty-key)"),
        (["tail", "--user", "a\tb"], {}, "not a user id the workers accept (user_id: control"),
        (["forget", "--user", ""], {}, "--user '': not a user id the workers accept (empty-key)"),
        (["demo", "--rate", "0"], {}, "--rate must be a positive number"),
        (["topics"], {"INTEREST_ENCODER_DIR": "/nonexistent"}, "/nonexistent lacks model."),
    ],
)
def test_bad_values_are_one_line_before_anything_starts(args, env, message):
    out = _run(args, env={"INTEREST_KAFKA_BOOTSTRAP": "127.0.0.1:9", **env}, timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize("command", [["worker", "--metrics-port", "0"], ["tail"], ["topics"]])
def test_ctrl_c_while_the_broker_does_not_answer_ends_the_wait(command, tmp_path):
    proc = subprocess.Popen(
        [*CLI, *command, "--bootstrap-servers", "127.0.0.1:9"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "INTEREST_STATE_DIR": str(tmp_path / "state")},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(3)  # past start-up, inside the 10 s the client is given to reach the broker
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # Not "cannot reach Kafka" once the wait ran out: the signal ended it.
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interest-stream: interrupted"


def test_cluster_ids_are_valid_for_the_storage_tool():
    from stream.kafka.broker import new_cluster_id

    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(c) == 22 and not c.startswith("-") for c in ids)


@pytest.mark.kafka  # starts a broker of its own
def test_broker_port_in_use_is_one_clear_line(tmp_path: Path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run(["broker", "start", "--port", str(port), "--data-dir", str(tmp_path)])
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        f"interest-stream: error: port {port} on 127.0.0.1 is in use; choose another with --port"
    ]


def test_building_the_parser_imports_neither_torch_nor_the_kafka_client():
    probe = (
        "import sys, stream.cli.main; stream.cli.main.build_parser(); "
        "print(sorted(m for m in ('torch', 'confluent_kafka') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _replication(bootstrap: str, topic: str) -> tuple[set[int], str]:
    """(replica counts of ``topic``'s partitions, its min.insync.replicas)."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = admin.list_topics(topic, timeout=30).topics[topic].partitions.values()
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    isr = admin.describe_configs([res])[res].result(30)["min.insync.replicas"].value
    return {len(p.replicas) for p in parts}, isr


@pytest.mark.kafka  # starts a cluster of its own
def test_a_three_node_cluster_its_topics_and_its_nodes(tmp_path: Path):
    data = tmp_path / "cluster"
    start = _run(["broker", "start", "--nodes", "3", "--data-dir", str(data)], timeout=300)
    assert start.returncode == 0, start.stderr
    bootstrap = start.stdout.strip()
    assert len(bootstrap.split(",")) == 3
    assert all(a.startswith("127.0.0.1:") for a in bootstrap.split(","))
    try:
        status = _run(["broker", "status", "--data-dir", str(data)])
        assert status.returncode == 0
        assert [line.split()[0] for line in status.stdout.splitlines()] == [
            "node=1",
            "node=2",
            "node=3",
        ]
        assert all(line.endswith(" running") for line in status.stdout.splitlines())

        # The service's topics get 3 copies and min.insync.replicas=2 on 3 brokers ...
        topics = _run(["topics", "--bootstrap-servers", bootstrap])
        assert topics.returncode == 0, topics.stderr
        assert _replication(bootstrap, "interest.events") == ({3}, "2")
        # ... unless the replication factor is set.
        env = {"INTEREST_TOPIC_REPLICATION": "1", "INTEREST_TOPIC_EVENTS": "single.events"}
        topics = _run(["topics", "--bootstrap-servers", bootstrap], env=env)
        assert topics.returncode == 0, topics.stderr
        assert _replication(bootstrap, "single.events")[0] == {1}

        # A user's mistakes: one line each, a non-zero exit.
        for args, message in [
            (["--node", "5"], "no node 5 in the 3-node cluster"),
            (["--node", "2"], "node 2 is already running from"),
            (["--nodes", "0"], "--nodes must be from 1 to 9, got 0"),
            (["--nodes", "5"], "holds a 3-node cluster, not 5"),
            ([], "a cluster is already running from"),
        ]:
            out = _run(["broker", "start", *args, "--data-dir", str(data)])
            lines = out.stderr.strip().splitlines()
            assert out.returncode != 0 and len(lines) == 1, (args, out.stderr)
            assert lines[0].startswith("interest-stream: error: ") and message in lines[0], args

        # One node goes and comes back with its data.
        stop = _run(["broker", "stop", "--node", "2", "--data-dir", str(data)])
        assert stop.returncode == 0, stop.stderr
        status = _run(["broker", "status", "--data-dir", str(data)])
        assert status.returncode == 0 and "node=2 " in status.stdout
        assert [line.endswith(" stopped") for line in status.stdout.splitlines()] == [
            False,
            True,
            False,
        ]
        again = _run(["broker", "start", "--node", "2", "--data-dir", str(data)], timeout=300)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == bootstrap
    finally:
        stop = _run(["broker", "stop", "--data-dir", str(data)])
    assert stop.returncode == 0
    status = _run(["broker", "status", "--data-dir", str(data)])
    assert status.returncode == 1 and "no broker running" in status.stderr
    assert all(line.endswith(" stopped") for line in status.stdout.splitlines())
