"""Shared fixtures: settings on a temp data root, one Spark session, one Kafka broker.

The broker fixture picks, in order: an external cluster from PULSE_KAFKA_BOOTSTRAP;
a Kafka testcontainer when a Docker engine answers; else the local KRaft broker
from the Maven jars (what CI does here). Each path is a real broker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tiers import TierError, tier_of

from runtime.settings import Settings, load_settings

if TYPE_CHECKING:
    from pulse.local.s3 import S3Endpoint

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) responds within 5 s."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the name of its directory (tests/tiers.py)."""
    for item in items:
        try:
            tier = tier_of(item.path, (m.name for m in item.iter_markers()))
        except TierError as exc:
            raise pytest.UsageError(str(exc)) from None
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real datasets folder (PULSE_REAL_DATA, default ../shared/data); skip if absent."""
    path = Path(os.environ.get("PULSE_REAL_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set PULSE_REAL_DATA to run this test)")
    return path


@pytest.fixture(scope="session")
def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root shared by the session-scoped services."""
    return tmp_path_factory.mktemp("pulse")


@pytest.fixture(scope="session")
def base_settings(session_root: Path) -> Settings:
    """Settings for tests: temp data root, small Spark. Starts nothing (the unit tier uses it)."""
    return load_settings(
        data_root=session_root,
        spark_shuffle_partitions=2,
        spark_driver_memory="3g",
        trigger_interval="1 second",
    )


@pytest.fixture(scope="session")
def jvm_settings(base_settings: Settings) -> Settings:
    """``base_settings`` once the JVM jars are resolved (Maven; idempotent, cached)."""
    from runtime.jvm import setup

    setup(base_settings, log=lambda *_: None)
    return base_settings


@pytest.fixture(scope="session")
def kafka_bootstrap(jvm_settings: Settings, session_root: Path) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for the whole test session."""
    external = os.environ.get("PULSE_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from pulse.local import broker

    local = jvm_settings.model_copy(
        update={
            "data_root": session_root / "broker",
            "broker_port": free_port(),
            "controller_port": free_port(),
        }
    )
    # Generous: a loaded 2-core machine can take a minute to start a JVM broker.
    broker.start(local, timeout_s=240, log=lambda *_: None)
    try:
        yield f"127.0.0.1:{local.broker_port}"
    finally:
        broker.stop(local, log=lambda *_: None)


@pytest.fixture(scope="session")
def redis_url(session_root: Path) -> Iterator[str]:
    """A real redis-server (Debian's package, installed by `make setup`) on a free port.

    PULSE_TEST_REDIS_URL points the tests at an existing server instead.
    """
    external = os.environ.get("PULSE_TEST_REDIS_URL")
    if external:
        yield external
        return
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make setup` installs Debian's package)")
    from pulse.local.redis import redis_server

    with redis_server(session_root / "redis") as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint(base_settings: Settings, session_root: Path) -> Iterator[S3Endpoint]:
    """A real S3-compatible server (SeaweedFS, built by `make setup`) on free ports, with a
    bucket ``pulse``; skipped where the binary was not built (no Go)."""
    from pulse.local.s3 import s3_server, weed_binary

    if not weed_binary(base_settings).exists():
        pytest.skip(f"SeaweedFS not built at {weed_binary(base_settings)} (`make setup`, needs Go)")
    with s3_server(base_settings, session_root / "s3") as endpoint:
        yield endpoint


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: S3Endpoint, tmp_path: Path) -> Settings:
    """Settings whose data root is a fresh prefix of the S3 bucket; this machine's own
    files (``local_dir``) in the test's temp directory."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    return load_settings(
        **s3_endpoint.settings(prefix),
        local_dir=tmp_path / "local",
        jvm_cache=settings.jvm_cache,
        spark_master=settings.spark_master,
        spark_shuffle_partitions=settings.spark_shuffle_partitions,
    )


@pytest.fixture(scope="session")
def kafka_settings(base_settings: Settings, kafka_bootstrap: str) -> Settings:
    """Settings pointing at the session broker."""
    return base_settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})


@pytest.fixture
def topic(kafka_settings: Settings) -> str:
    """A fresh, empty topic per test (3 partitions)."""
    from runtime.kafka_admin import create_topics

    name = f"t-{uuid.uuid4().hex[:10]}"
    create_topics(
        kafka_settings.model_copy(update={"topic_transactions": name}), log=lambda *_: None
    )
    return name


@pytest.fixture(scope="session")
def spark(jvm_settings: Settings):  # type: ignore[no-untyped-def]
    """One shared local Spark session (local[2], UTC, UI off, 2 shuffle partitions)."""
    from runtime.spark import build_spark

    session = build_spark(jvm_settings, app_name="pulse-tests")
    session.sparkContext.setCheckpointDir(str(jvm_settings.data_root / "spark-checkpoints"))
    yield session
    session.stop()


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A fresh data root per test."""
    return tmp_path


@pytest.fixture
def settings(base_settings: Settings, data_root: Path) -> Settings:
    """Per-test settings on a fresh data root (no broker)."""
    return base_settings.model_copy(update={"data_root": data_root})
