"""A local Kafka cluster: N combined broker+controller KRaft nodes on loopback.

``interest-stream broker start --nodes 3`` runs one. Its data directory holds
``cluster.json`` (the cluster id and each node's ports, chosen once so a node
restarts where the others expect it: the controller quorum is fixed) and one
directory per node, ``node<N>/``, laid out like a single broker's (its KRaft
log, ``server.properties``, ``broker.log``, ``broker.json`` while it runs).
Any process can stop or restart a node: the pids are in the files.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import BrokerError
from stream.kafka.broker import (
    EmbeddedBroker,
    NodeRole,
    answers,
    free_ports,
    new_cluster_id,
    read_running,
    stop_pids,
)

__all__ = ["LocalCluster", "NodeStatus", "is_cluster", "MAX_NODES"]

MAX_NODES = 9
_LAYOUT = "cluster.json"


@dataclass(frozen=True)
class _Node:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``broker status`` reports it (``pid`` None: not running)."""

    node_id: int
    port: int
    pid: int | None

    @property
    def line(self) -> str:
        state = f"pid={self.pid} running" if self.pid is not None else "pid=- stopped"
        return f"node={self.node_id} port={self.port} {state}"


def is_cluster(data_dir: Path) -> bool:
    """Does ``data_dir`` hold a local cluster (rather than a single broker, or nothing)?"""
    return (data_dir / _LAYOUT).is_file()


class LocalCluster:
    """The nodes of one local cluster, found in (or created under) ``data_dir``."""

    def __init__(self, data_dir: Path, cluster_id: str, nodes: list[_Node]) -> None:
        self.data_dir = data_dir
        self.cluster_id = cluster_id
        self._nodes = nodes
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
        self._brokers = {
            n.node_id: EmbeddedBroker(
                data_dir / f"node{n.node_id}",
                n.port,
                n.controller_port,
                NodeRole(n.node_id, voters, len(nodes), cluster_id),
            )
            for n in nodes
        }

    @classmethod
    def create(cls, data_dir: Path, nodes: int) -> LocalCluster:
        """A new cluster of ``nodes`` nodes in ``data_dir`` (its ports chosen now)."""
        data_dir = data_dir.resolve()
        if not 1 <= nodes <= MAX_NODES:
            raise BrokerError(f"a local cluster has 1 to {MAX_NODES} nodes, not {nodes}")
        if (data_dir / "kraft").exists() or (data_dir / "broker.json").exists():
            raise BrokerError(
                f"{data_dir} holds a single broker's data; choose another --data-dir for a cluster"
            )
        ports = free_ports(2 * nodes)
        layout = [_Node(i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(nodes)]
        cluster = cls(data_dir, new_cluster_id(), layout)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            doc = {"cluster_id": cluster.cluster_id, "nodes": [asdict(n) for n in layout]}
            (data_dir / _LAYOUT).write_text(json.dumps(doc, indent=1))
        except OSError as exc:
            raise BrokerError(f"cannot write to {data_dir}: {exc.strerror}") from None
        return cluster

    @classmethod
    def open(cls, data_dir: Path) -> LocalCluster:
        """The cluster recorded in ``data_dir``."""
        data_dir = data_dir.resolve()
        try:
            doc = json.loads((data_dir / _LAYOUT).read_text())
            nodes = [_Node(**n) for n in doc["nodes"]]
            return cls(data_dir, str(doc["cluster_id"]), nodes)
        except FileNotFoundError:
            raise BrokerError(
                f"no cluster in {data_dir} (start one with: interest-stream broker start "
                f"--nodes 3 --data-dir {data_dir})"
            ) from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise BrokerError(f"{data_dir / _LAYOUT} is unreadable: {exc}") from None

    @property
    def size(self) -> int:
        return len(self._nodes)

    @property
    def node_ids(self) -> list[int]:
        return [n.node_id for n in self._nodes]

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated (a client needs only one that runs)."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self._nodes)

    def node(self, node_id: int) -> EmbeddedBroker:
        try:
            return self._brokers[node_id]
        except KeyError:
            raise BrokerError(
                f"no node {node_id} in the {self.size}-node cluster in {self.data_dir} "
                f"(nodes 1 to {self.size})"
            ) from None

    def status(self) -> list[NodeStatus]:
        out = []
        for n in self._nodes:
            info = read_running(self.data_dir / f"node{n.node_id}")
            out.append(NodeStatus(n.node_id, n.port, info.pid if info is not None else None))
        return out

    def running(self) -> list[int]:
        return [s.node_id for s in self.status() if s.pid is not None]

    def start(self, timeout: float = 120.0) -> list[int]:
        """Start every node that is not running; wait until all nodes are registered.

        Returns the nodes started. All running already is a :class:`BrokerError`.
        """
        stopped = [i for i in self.node_ids if i not in self.running()]
        if not stopped:
            raise BrokerError(
                f"a cluster is already running from {self.data_dir} at {self.bootstrap}; "
                "stop it first"
            )
        # Side by side: formatting a log dir is a JVM start of a few seconds each.
        with ThreadPoolExecutor(len(stopped)) as pool:
            futures = {i: pool.submit(self._brokers[i].launch) for i in stopped}
        failed = [exc for f in futures.values() if (exc := f.exception()) is not None]
        try:
            if failed:
                raise failed[0]
            self._wait(stopped, timeout)
        except BaseException:
            for i in stopped:
                self._brokers[i].stop(5.0)
            raise
        return stopped

    def start_node(self, node_id: int, timeout: float = 120.0) -> EmbeddedBroker:
        """Restart one stopped node with its data; wait until it is registered again."""
        broker = self.node(node_id)
        broker.launch()  # one clear error if it runs already
        try:
            self._wait([node_id], timeout)
        except BaseException:
            broker.stop(5.0)
            raise
        return broker

    def _wait(self, node_ids: list[int], timeout: float) -> None:
        """Until each node answers with itself registered, and the cluster with all of
        its nodes (a node that came back alone, with the others down, only itself)."""
        deadline = time.monotonic() + timeout
        for i in node_ids:
            self._brokers[i].wait_ready(max(1.0, deadline - time.monotonic()))
        want = len(self.running())
        while time.monotonic() < deadline:
            if answers(self.bootstrap, 1.0, nodes=want):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"the cluster did not register its {want} running node(s) within {timeout:.0f}s; "
            f"see {self.data_dir}/node*/broker.log"
        )

    def active_controller(self) -> int | None:
        """The node leading the controller quorum now (None: no leader known).

        Read from the quorum's own record on the running nodes (``quorum-state`` in
        the metadata log dir; the newest epoch wins): in KRaft the ``controller`` a
        client's metadata names is a random broker, not the active controller.
        """
        best: tuple[int, int] | None = None  # (epoch, leader)
        for i in self.running():
            path = self.node(i).data_dir / "kraft" / "__cluster_metadata-0" / "quorum-state"
            try:
                doc = json.loads(path.read_text())
                epoch, leader = int(doc["leaderEpoch"]), int(doc["leaderId"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being rewritten: the other nodes say it too
            if leader >= 0 and (best is None or epoch > best[0]):
                best = (epoch, leader)
        return None if best is None else best[1]

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (fault injection)."""
        self.node(node_id).kill()

    def stop(self, timeout: float = 20.0) -> list[int]:
        """Stop every running node (SIGTERM to all, SIGKILL after ``timeout``); returns
        the pids stopped."""
        pids = [s.pid for s in self.status() if s.pid is not None]
        stopped = stop_pids(pids, timeout)
        for broker in self._brokers.values():
            broker.reap()
        return stopped

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
