"""A local three-node KRaft cluster from the same Maven jars as ``pulse.local.broker``.

Each node is one JVM acting as broker and controller (a static quorum of three
voters), under ``<root>/node-<id>`` with its own ports. Topics are replicated three
times with ``min.insync.replicas=2`` by default, so with ``acks=all`` a write is on
two nodes before it is acknowledged and the cluster keeps serving with one node
down. Used by the fault campaign (``pulse chaos``, case 3); a user can start one the
same way from Python::

    from pulse.local import cluster
    c = cluster.Cluster.create(settings, Path("data/cluster"))
    c.start()              # bootstrap: c.bootstrap
    ...
    c.stop()
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulse.local.process import (
    LOG4J2,
    BrokerPaths,
    java_cmd,
    log_tail,
    pid_alive,
    port_open,
    terminate,
)
from runtime.errors import PulseError
from runtime.jvm import kafka_classpath
from runtime.settings import LIBRDKAFKA_LOG, Settings

HOST = "127.0.0.1"
NODES = 3


def node_properties(node: int, ports: list[tuple[int, int]], storage: Path) -> str:
    """KRaft combined-mode config of node ``node`` (1-based) of a three-voter quorum."""
    broker_port, controller_port = ports[node - 1]
    voters = ",".join(f"{i + 1}@{HOST}:{c}" for i, (_, c) in enumerate(ports))
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{HOST}:{broker_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={storage.resolve()}",
            "num.partitions=3",
            "default.replication.factor=3",
            "min.insync.replicas=2",
            "unclean.leader.election.enable=false",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=3",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=3",
            "transaction.state.log.min.isr=2",
            "share.coordinator.state.topic.replication.factor=3",
            "share.coordinator.state.topic.min.isr=2",
            "group.initial.rebalance.delay.ms=0",
            "message.max.bytes=2097152",
            "",
        ]
    )


@dataclass
class Cluster:
    """Three local KRaft nodes: ``start``, ``kill(node)``, ``start_node(node)``, ``stop``."""

    settings: Settings  # jars, heap; data_root is ignored
    root: Path
    ports: list[tuple[int, int]]  # (broker, controller) per node
    pids: dict[int, int] = field(default_factory=dict)
    killed: set[int] = field(default_factory=set)  # nodes killed on purpose

    @classmethod
    def create(cls, settings: Settings, root: Path, ports: list[tuple[int, int]]) -> Cluster:
        """A cluster under ``root`` on the given (broker, controller) ports, not started."""
        if len(ports) != NODES:
            raise PulseError(f"a local cluster has {NODES} nodes, got {len(ports)} port pairs")
        return cls(settings, root, ports)

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers: every node's broker port."""
        return ",".join(f"{HOST}:{b}" for b, _ in self.ports)

    def paths(self, node: int) -> BrokerPaths:
        """The files of node ``node``."""
        return BrokerPaths(self.root / f"node-{node}")

    def _format(self) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        for node in range(1, NODES + 1):
            paths = self.paths(node)
            if (paths.storage / "meta.properties").exists():
                continue
            cmd = java_cmd(
                self.settings,
                paths,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(paths.config.resolve()),
            )
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise PulseError(
                    f"formatting node {node} failed: {(proc.stderr or proc.stdout).strip()[-400:]}"
                )

    def start(self, timeout_s: float = 240.0) -> None:
        """Format (first start), start the three nodes and wait until all serve."""
        kafka_classpath(self.settings)
        for b, c in self.ports:
            for port in (b, c):
                if port_open(port):
                    raise PulseError(f"port {port} on {HOST} is already in use")
        for node in range(1, NODES + 1):
            paths = self.paths(node)
            paths.log.parent.mkdir(parents=True, exist_ok=True)
            paths.config.write_text(node_properties(node, self.ports, paths.storage))
            paths.log4j.write_text(LOG4J2.format(log=paths.log.resolve()))
        self._format()
        try:
            for node in range(1, NODES + 1):
                self._launch(node)
            self.wait_serving(NODES, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _launch(self, node: int) -> None:
        paths = self.paths(node)
        cmd = java_cmd(self.settings, paths, "kafka.Kafka", str(paths.config.resolve()))
        with open(paths.stdout, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.pids[node] = proc.pid
        paths.pid.write_text(str(proc.pid))

    def start_node(self, node: int, timeout_s: float = 240.0) -> None:
        """Start one (killed or stopped) node again on its storage."""
        self.killed.discard(node)
        self._launch(node)
        self.wait_serving(len(self.alive()), timeout_s)

    def alive(self) -> list[int]:
        """The nodes whose process runs."""
        return [n for n, pid in self.pids.items() if pid_alive(pid)]

    def wait_serving(self, brokers: int, timeout_s: float) -> None:
        """Wait until the metadata lists ``brokers`` brokers; PulseError with logs if not."""
        from confluent_kafka.admin import AdminClient

        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": LIBRDKAFKA_LOG}
        admin = AdminClient(conf)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node, pid in self.pids.items():
                if not pid_alive(pid) and node not in self.killed:
                    raise PulseError(
                        f"cluster node {node} exited; last log lines:\n"
                        f"{log_tail(self.paths(node).log)}"
                    )
            try:
                if len(admin.list_topics(timeout=2).brokers) >= brokers:
                    return
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            time.sleep(0.5)
        raise PulseError(f"the cluster did not serve {brokers} brokers within {timeout_s:.0f} s")

    def kill(self, node: int) -> None:
        """SIGKILL node ``node`` (its process group), as a crash would."""
        pid = self.pids[node]
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        self.killed.add(node)

    def stop(self) -> None:
        """Stop every node that runs (SIGTERM, then SIGKILL after 30 s)."""
        for node, pid in self.pids.items():
            if pid_alive(pid):
                terminate(pid)
            self.paths(node).pid.unlink(missing_ok=True)
