"""docker-compose.yml describes the same real parts as the settings and the Maven jars.

Compose gets versions and ports by hand; these checks keep them equal to the source of
truth: the Kafka broker version Maven resolves (runtime/poms/kafka-broker.xml,
runtime/jvm.py), pyspark's version, and the defaults in runtime/settings.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyspark
import pytest
import yaml

from runtime.jvm import KAFKA_VERSION
from runtime.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]


def default(name: str) -> Any:
    """A setting's default, as runtime/settings.py declares it."""
    return Settings.model_fields[name].default


def with_defaults(text: object) -> str:
    """Compose's ``${VAR:-default}`` replaced by its default: what runs when nothing is set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(text))


def maven_kafka_version() -> str:
    pom = ET.parse(REPO / "runtime" / "poms" / "kafka-broker.xml")
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = pom.find("m:properties/m:kafka.version", ns)
    assert version is not None and version.text
    return version.text


def _compose_cli() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_cli(), reason="docker compose CLI not installed")
def test_docker_compose_validates_the_file():
    proc = subprocess.run(
        ["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_kafka_image_is_the_broker_version_maven_resolves_in_kraft_mode():
    assert maven_kafka_version() == KAFKA_VERSION  # the pom's default and what setup passes
    for name in ("kafka", "kafka-init"):
        assert SERVICES[name]["image"] == f"apache/kafka:{KAFKA_VERSION}", name
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_spark_images_are_pyspark_version():
    for name in ("spark-master", "spark-worker"):
        assert SERVICES[name]["image"] == f"apache/spark:{pyspark.__version__}", name


def test_kafka_advertises_the_default_bootstrap_on_the_default_port():
    kafka = SERVICES["kafka"]
    advertised = with_defaults(kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]).split(",")
    plaintext = [a.removeprefix("PLAINTEXT://") for a in advertised if a.startswith("PLAINTEXT://")]
    assert plaintext == [default("kafka_bootstrap")]
    host, port = default("kafka_bootstrap").rsplit(":", 1)
    assert int(port) == default("broker_port")
    assert [with_defaults(p) for p in kafka["ports"]] == [f"{host}:{port}:9092"]


def test_topic_is_created_with_the_default_name_partitions_and_retention():
    command = [with_defaults(part) for part in SERVICES["kafka-init"]["command"]]
    assert command[command.index("--topic") + 1] == default("topic_transactions")
    assert command[command.index("--partitions") + 1] == str(default("topic_partitions"))
    assert f"retention.ms={default('topic_retention_ms')}" in command


def test_redis_serves_on_the_online_store_port():
    redis = SERVICES["redis"]
    assert redis["image"] == "redis:7"
    # PULSE_REDIS_URL's default (the online store is landing alongside this file)
    url = (
        default("redis_url") if "redis_url" in Settings.model_fields else "redis://localhost:6379/0"
    )
    port = urlsplit(url).port
    assert port == 6379 and redis["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert "PULSE_ONLINE_STORE=redis" in COMPOSE_TEXT and "PULSE_REDIS_URL=redis://" in COMPOSE_TEXT


def test_the_documented_spark_master_is_the_one_compose_starts():
    master = SERVICES["spark-master"]["command"]
    documented = re.search(r"PULSE_SPARK_MASTER=(\S+)", COMPOSE_TEXT)
    assert documented is not None, "the compose file names PULSE_SPARK_MASTER in a comment"
    url = documented.group(1)
    assert load_settings(spark_master=url).spark_master == url  # a valid setting
    host, port = urlsplit(url).hostname, urlsplit(url).port
    assert master[master.index("--host") + 1] == host
    assert master[master.index("--port") + 1] == str(port)
    assert SERVICES["spark-worker"]["command"][-1] == url


def test_the_s3_service_is_the_seaweedfs_pulse_builds_with_the_documented_keys():
    from pulse.local.s3 import RELEASE

    s3 = SERVICES["s3"]
    assert s3["image"] == f"chrislusf/seaweedfs:{RELEASE}"
    port = int(s3["command"][s3["command"].index("-s3") + 1].split("=")[1])
    assert s3["ports"] == [f"127.0.0.1:{port}:{port}"]
    documented = dict(re.findall(r"(PULSE_S3_\w+)=(\S+)", COMPOSE_TEXT))
    documented |= dict(re.findall(r"(PULSE_DATA_ROOT)=(s3://\S+)", COMPOSE_TEXT))
    assert documented["PULSE_S3_ENDPOINT"] == f"http://127.0.0.1:{port}"
    settings = load_settings(**{k.removeprefix("PULSE_").lower(): v for k, v in documented.items()})
    assert settings.on_object_store and str(settings.data_root).startswith("s3://pulse/")
    keys = json.loads((REPO / "docker" / "seaweedfs-s3.json").read_text())["identities"][0]
    assert keys["credentials"] == [{
        "accessKey": documented["PULSE_S3_ACCESS_KEY_ID"],
        "secretKey": documented["PULSE_S3_SECRET_ACCESS_KEY"],
    }]  # fmt: skip
