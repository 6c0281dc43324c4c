"""The embedded Apache Kafka broker: a single KRaft node on 127.0.0.1.

The broker jars come from Maven Central through ``stream/kafka/pom.xml`` and are
cached outside the repository (``~/.cache/interest-stream/kafka-<version>``, or
``$INTEREST_CACHE_DIR``). A data directory holds the formatted KRaft log, the
broker's ``server.properties``, ``broker.log`` and ``broker.json`` (pid and
address), which is how ``broker status`` and ``broker stop`` find a running
broker started by another process.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.errors import BrokerError

__all__ = [
    "KAFKA_VERSION",
    "BrokerInfo",
    "EmbeddedBroker",
    "NodeRole",
    "answers",
    "cache_dir",
    "default_data_dir",
    "ensure_jars",
    "free_port",
    "free_ports",
    "new_cluster_id",
    "read_running",
    "stop_pid",
    "stop_pids",
]

KAFKA_VERSION = "4.4.0"
_POM = Path(__file__).with_name("pom.xml")
_LOG4J = Path(__file__).with_name("log4j2.yaml")
_HEAP = os.environ.get("INTEREST_BROKER_HEAP", "512m")

# Nodes of a local cluster: how fast a killed node is noticed (Kafka's defaults:
# heartbeats every 2 s, fenced after 9 s; a new controller after 2-3 s). Its
# partitions' leadership, the group and transaction coordinators among them, moves
# only once it is fenced: that must fit in the workers' 6 s consumer session, or
# every member loses its partitions. Measured (bench.chaos --broker-kills, 2 cores):
# with a 4 s session lists stopped 6-17 s after a kill, with these 2-6 s.
_CLUSTER_PROPERTIES = {
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "2500",
    "controller.quorum.fetch.timeout.ms": "1500",
    "controller.quorum.election.timeout.ms": "750",
}


def cache_dir() -> Path:
    """Where downloaded jars and the default broker data live."""
    root = os.environ.get("INTEREST_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "interest-stream"


def default_data_dir() -> Path:
    return cache_dir() / "broker"


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (all held open while picking,
    so the kernel cannot hand the same port out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"{tool} not found on PATH: {hint}")
    return path


def ensure_jars(quiet: bool = True) -> Path:
    """Fetch the Kafka broker jars with Maven once; return the directory holding them."""
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = _require("mvn", "install Maven 3.8+ (e.g. apt-get install maven) to fetch the Kafka jars")
    _require("java", "install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(_POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
    ]
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        raise BrokerError(
            f"fetching Kafka {KAFKA_VERSION} jars with Maven failed "
            f"(check access to Maven Central): {tail[0]}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.touch()
    return libs


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64, unpadded.

    Like Kafka's own generator, never one starting with "-": the storage tool
    would read it as an option.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass(frozen=True)
class BrokerInfo:
    """What ``broker.json`` records about a running broker."""

    pid: int
    port: int
    controller_port: int
    data_dir: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def read_running(data_dir: Path) -> BrokerInfo | None:
    """The broker recorded in ``data_dir`` if its process is still alive."""
    try:
        info = BrokerInfo(**json.loads((data_dir / "broker.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if _alive(info.pid) else None


def answers(bootstrap: str, timeout: float, node_id: int | None = None, nodes: int = 1) -> bool:
    """The cluster at ``bootstrap`` answers metadata with ``nodes`` brokers registered
    (and ``node_id`` among them, when given)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return len(md.brokers) >= nodes and (node_id is None or node_id in md.brokers)


@dataclass(frozen=True)
class NodeRole:
    """One node's place in a KRaft cluster of combined broker+controller nodes.

    ``voters`` is the static controller quorum (``controller.quorum.voters``, which
    Kafka 4.x still accepts beside the dynamic ``controller.quorum.bootstrap.servers``:
    a fixed local cluster needs no quorum changes, and every node can be formatted
    the same way). ``size`` is the number of nodes; internal topics are replicated
    on up to 3 of them.
    """

    node_id: int = 1
    voters: str = ""
    size: int = 1
    cluster_id: str = ""

    @property
    def replication(self) -> int:
        return min(3, self.size)

    @property
    def min_isr(self) -> int:
        # Two copies of every committed transaction marker and offset survive one
        # broker's loss; with fewer than 3 nodes one copy is all there can be.
        return 2 if self.size >= 3 else 1


class EmbeddedBroker:
    """A KRaft node (broker + controller) on loopback: on its own by default, or one
    node of a local cluster (``role``, see :mod:`stream.kafka.cluster`).

    Usable as a context manager; ``start`` formats the log dir on first use.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        role: NodeRole | None = None,
    ) -> None:
        self.data_dir = Path(data_dir or default_data_dir()).resolve()
        if port is None:
            self.port, self.controller_port = free_ports(2)
        else:
            self.port = port
            self.controller_port = next(p for p in free_ports(2) if p != port)
        if controller_port is not None:
            self.controller_port = controller_port
        self.role = role
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def node_id(self) -> int:
        return 1 if self.role is None else self.role.node_id

    def _properties(self) -> str:
        p, c = self.port, self.controller_port
        role = self.role or NodeRole(voters=f"1@127.0.0.1:{c}")
        rf, isr = str(role.replication), str(role.min_isr)
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(role.node_id),
            "controller.quorum.voters": role.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft"),
            "num.partitions": "4",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "4",
            # A killed worker's open transaction is aborted within transaction.timeout.ms
            # plus this (default 10 s): part of the 15 s takeover budget.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if role.size > 1:
            lines.update(_CLUSTER_PROPERTIES)
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _java(self, libs: Path, *args: str, heap: str | None = None) -> list[str]:
        java = _require(
            "java", "install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
        )
        cmd = [java]
        if heap:
            cmd += [f"-Xmx{heap}", f"-Xms{heap}"]
        cmd += [
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J}",
            "-cp",
            f"{libs}/*",
            *args,
        ]
        return cmd

    def start(self, timeout: float = 60.0) -> EmbeddedBroker:
        """Format (first time), launch and wait until the broker answers metadata."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Format the log dir (first time) and start the process; do not wait for it.

        A cluster launches all its nodes first: none answers before a quorum of
        controllers runs.
        """
        running = read_running(self.data_dir)
        if running is not None:
            what = "a broker is" if self.role is None else f"node {self.node_id} is"
            raise BrokerError(
                f"{what} already running from {self.data_dir} at {running.bootstrap} "
                f"(pid {running.pid}); stop it first"
            )
        with socket.socket() as probe:
            # As the broker binds: connections of a previous broker lingering in
            # TIME_WAIT must not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                hint = (
                    "choose another with --port"
                    if self.role is None
                    else f"node {self.node_id} needs it back (it is in {self.data_dir.parent})"
                )
                raise BrokerError(f"port {self.port} on 127.0.0.1 is in use; {hint}") from None
        libs = ensure_jars()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrokerError(f"cannot create {self.data_dir}: {exc.strerror}") from None
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        if not (self.data_dir / "kraft" / "meta.properties").exists():
            cluster_id = (self.role.cluster_id if self.role else "") or new_cluster_id()
            fmt = subprocess.run(
                self._java(
                    libs, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)
                ),
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise BrokerError(
                    f"formatting the KRaft log dir failed: {fmt.stderr.strip()[-300:]}"
                )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(props), heap=_HEAP),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        info = BrokerInfo(self._proc.pid, self.port, self.controller_port, str(self.data_dir))
        (self.data_dir / "broker.json").write_text(json.dumps(info.__dict__))

    def wait_ready(self, timeout: float = 60.0, nodes: int = 1) -> None:
        """Wait until this node answers metadata, itself and ``nodes`` brokers registered;
        stop it if it does not within ``timeout``."""
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited with code {self._proc.returncode} while starting; "
                    f"see {self.log_path}"
                )
            if answers(self.bootstrap, 1.0, self.node_id, nodes):
                return
            time.sleep(0.2)
        self.stop()
        raise BrokerError(
            f"the Kafka broker did not answer within {timeout:.0f}s; see {self.log_path}"
        )

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (fault injection); started here or elsewhere."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None
        elif (info := read_running(self.data_dir)) is not None:
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        (self.data_dir / "broker.json").unlink(missing_ok=True)

    def reap(self) -> None:
        """Forget the process once it was stopped by pid (:func:`stop_pids`)."""
        if self._proc is not None:
            self._proc.wait(10)
            self._proc = None
        (self.data_dir / "broker.json").unlink(missing_ok=True)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait for a clean shutdown, then SIGKILL."""
        if self._proc is not None:
            stop_pid(self._proc.pid, timeout, self._proc)
            self._proc = None
        (self.data_dir / "broker.json").unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_pid(pid: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> bool:
    """Stop a broker process; True if it was running. Clean first, forced after ``timeout``."""
    if not _alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if proc is None and not _alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait(timeout=5)
    return True


def stop_pids(pids: list[int], timeout: float = 20.0) -> list[int]:
    """Stop several broker processes at once (the nodes of a cluster): SIGTERM to all,
    then SIGKILL to those still running after ``timeout``. Returns those that ran.

    All at once, not one by one: a node's clean shutdown needs the controller
    quorum, which the last nodes of a cluster stopped in turn no longer have.
    """
    running = [pid for pid in pids if _alive(pid)]
    for pid in running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in running):
        time.sleep(0.1)
    for pid in running:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return running
