"""A local single-node Kafka (KRaft: broker + controller in one JVM) from the Maven jars.

Everything lives under ``<data_root>/kafka``: ``server.properties``, the KRaft
storage (formatted on first start), ``logs/server.log`` and ``broker.pid``.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
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
from runtime.settings import Settings


def server_properties(settings: Settings, storage: Path) -> str:
    """KRaft combined-mode config on 127.0.0.1 with single-node replication factors."""
    host = "127.0.0.1"
    b, c = settings.broker_port, settings.controller_port
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={host}:{c}",
            f"listeners=PLAINTEXT://{host}:{b},CONTROLLER://{host}:{c}",
            f"advertised.listeners=PLAINTEXT://{host}:{b}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={storage.resolve()}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "message.max.bytes=2097152",
            "",
        ]
    )


def scram(settings: Settings) -> bool:
    """True when the settings ask for SASL/SCRAM: the local broker then requires it."""
    mechanism = (settings.kafka_sasl_mechanism or "").upper()
    return settings.kafka_security_protocol == "SASL_PLAINTEXT" and mechanism.startswith("SCRAM-")


def scram_properties(settings: Settings) -> str:
    """The SASL/SCRAM listener: clients (and the broker itself) log in as the settings' user."""
    b, c = settings.broker_port, settings.controller_port
    mechanism = str(settings.kafka_sasl_mechanism).upper()
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise PulseError(
            "a SASL/SCRAM broker needs PULSE_KAFKA_SASL_USERNAME and PULSE_KAFKA_SASL_PASSWORD"
        )
    return "\n".join(
        [
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{b},CONTROLLER://127.0.0.1:{c}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{b}",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            f"sasl.enabled.mechanisms={mechanism}",
            f"sasl.mechanism.inter.broker.protocol={mechanism}",
            f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config="
            + _scram_jaas(settings),
            "",
        ]
    )


def _scram_jaas(settings: Settings) -> str:
    assert settings.kafka_sasl_password is not None
    pwd = settings.kafka_sasl_password.get_secret_value()
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{settings.kafka_sasl_username}" password="{pwd}";'
    )


def _read_pid(paths: BrokerPaths) -> int | None:
    try:
        pid = int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def status(settings: Settings) -> int | None:
    """The pid of the running local broker, or None."""
    return _read_pid(BrokerPaths(settings.broker_dir))


def start(settings: Settings, timeout_s: float = 90.0, log=print) -> int:  # type: ignore[no-untyped-def]
    """Start the broker (formatting storage on first start) and wait until it serves.

    Returns the pid. Harmless if already running. Fails with a clear error if the
    port is taken by something else, or with the log's last lines if the JVM exits.
    """
    paths = BrokerPaths(settings.broker_dir)
    pid = _read_pid(paths)
    if pid is not None:
        log(f"broker already running (pid {pid}) on 127.0.0.1:{settings.broker_port}")
        return pid
    kafka_classpath(settings)  # no jars: say so first (nothing else can help then)
    for port in (settings.broker_port, settings.controller_port):
        if port_open(port):
            raise PulseError(
                f"port {port} on 127.0.0.1 is already in use by another process: stop it, "
                "or set PULSE_BROKER_PORT / PULSE_CONTROLLER_PORT"
            )
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    config = server_properties(settings, paths.storage)
    if scram(settings):  # the later keys win: the listener becomes SASL/SCRAM
        config += scram_properties(settings)
    paths.config.write_text(config)
    paths.config.chmod(0o600)  # it may hold the SCRAM password
    paths.log4j.write_text(LOG4J2.format(log=paths.log.resolve()))

    if not (paths.storage / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = java_cmd(
            settings,
            paths,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            f"--cluster-id={cluster_id}",  # one '=' arg: an id may start with '-'
            "-c",
            str(paths.config.resolve()),
        )
        if scram(settings):  # KRaft: SCRAM users are bootstrapped into the metadata log
            assert settings.kafka_sasl_password is not None
            user = settings.kafka_sasl_username
            pwd = settings.kafka_sasl_password.get_secret_value()
            mechanism = str(settings.kafka_sasl_mechanism).upper()
            fmt += ["--add-scram", f"{mechanism}=[name={user},password={pwd}]"]
        proc = subprocess.run(fmt, capture_output=True, text=True)
        if proc.returncode != 0:
            error = proc.stderr.strip()[-400:]
            if settings.kafka_sasl_password is not None:
                error = error.replace(settings.kafka_sasl_password.get_secret_value(), "***")
            raise PulseError(f"formatting KRaft storage failed: {error}")

    cmd = java_cmd(settings, paths, "kafka.Kafka", str(paths.config.resolve()))
    with open(paths.stdout, "ab") as out:
        proc_b = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI; Ctrl-C in a shell does not reach it
        )
    paths.pid.write_text(str(proc_b.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc_b.poll() is not None:
            paths.pid.unlink(missing_ok=True)
            raise PulseError(
                f"broker exited with code {proc_b.returncode}; last log lines:\n"
                f"{log_tail(paths.log)}\n{log_tail(paths.stdout)}"
            )
        if port_open(settings.broker_port) and _serves_metadata(settings):
            log(f"broker started (pid {proc_b.pid}) on 127.0.0.1:{settings.broker_port}")
            return proc_b.pid
        time.sleep(0.3)
    terminate(proc_b.pid)
    paths.pid.unlink(missing_ok=True)
    raise PulseError(
        f"broker did not start within {timeout_s:.0f}s; last log lines:\n{log_tail(paths.log)}"
    )


def _serves_metadata(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {"bootstrap.servers": f"127.0.0.1:{settings.broker_port}"}
    if scram(settings):
        conf = {**settings.kafka_client_config(), **conf}
    admin = AdminClient(conf)
    try:
        md = admin.list_topics(timeout=2)
    except Exception:  # noqa: BLE001 - not ready yet
        return False
    return bool(md.brokers)


def stop(settings: Settings, log=print) -> bool:  # type: ignore[no-untyped-def]
    """Stop the local broker (SIGTERM, then SIGKILL after 30 s). True if one was running."""
    paths = BrokerPaths(settings.broker_dir)
    pid = _read_pid(paths)
    if pid is None:
        paths.pid.unlink(missing_ok=True)
        log("broker not running")
        return False
    terminate(pid)
    paths.pid.unlink(missing_ok=True)
    log(f"broker stopped (pid {pid})")
    return True


def kill(settings: Settings, timeout_s: float = 30.0) -> int | None:
    """SIGKILL the local broker's process group, as a crash would (no clean shutdown).

    Returns the pid it killed, or None if none was running. ``start`` restarts it on
    the same storage. Used by the fault campaign (``pulse chaos``).
    """
    paths = BrokerPaths(settings.broker_dir)
    pid = _read_pid(paths)
    if pid is None:
        return None
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
        time.sleep(0.1)
    paths.pid.unlink(missing_ok=True)
    return pid
