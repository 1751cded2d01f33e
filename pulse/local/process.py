"""A local Kafka node as a process, shared by ``pulse.local.broker`` and ``pulse.local.cluster``.

A node's files (``BrokerPaths``), its log4j2 configuration (``LOG4J2``), its JVM
command line (``java_cmd``), and the process helpers that watch and stop it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.jvm import kafka_classpath, require_tool
from runtime.settings import Settings

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


@dataclass(frozen=True)
class BrokerPaths:
    """Files of one local broker."""

    root: Path

    @property
    def config(self) -> Path:  # noqa: D102
        return self.root / "server.properties"

    @property
    def log4j(self) -> Path:  # noqa: D102
        return self.root / "log4j2.properties"

    @property
    def storage(self) -> Path:  # noqa: D102
        return self.root / "kraft-data"

    @property
    def log(self) -> Path:  # noqa: D102
        return self.root / "logs" / "server.log"

    @property
    def stdout(self) -> Path:  # noqa: D102
        return self.root / "logs" / "stdout.log"

    @property
    def pid(self) -> Path:  # noqa: D102
        return self.root / "broker.pid"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def log_tail(path: Path, n: int = 15) -> str:
    """The last ``n`` lines of the log at ``path`` ("(no log)" if unreadable)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def java_cmd(settings: Settings, paths: BrokerPaths, main: str, *args: str) -> list[str]:
    """The command line running Kafka's ``main`` class for the node at ``paths``."""
    java = require_tool("java", "a JDK 17+ (Debian: apt-get install openjdk-17-jdk-headless)")
    return [
        java,
        f"-Xmx{settings.broker_heap}",
        f"-Xms{settings.broker_heap}",
        "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={paths.log4j.resolve()}",
        f"-Dkafka.logs.dir={paths.log.parent.resolve()}",
        "-cp",
        kafka_classpath(settings),
        main,
        *args,
    ]


def terminate(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM process group ``pid``, then SIGKILL it after ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
