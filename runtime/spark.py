"""The one Spark session factory: local[2] by default, any master by setting.

Spark's own Kafka connector (resolved by `pulse setup`) goes on the classpath via
``spark.jars``, which also ships it to executors on a cluster.

The driver JVM starts quiet: ``log4j2.properties`` next to this file keeps Spark's
WARN/ERROR lines and drops its start-up notices, ``SPARK_LOCAL_IP`` (local masters
only, unless set) avoids the loopback-hostname warning, and the JDK's "Using incubator
modules" line, which no JVM switch turns off, is filtered from the JVM's stderr.
``pulse -v`` sets ``PULSE_JVM_VERBOSE=1``, which brings Spark's default logging back.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pyspark import SparkConf, SparkContext
from pyspark.java_gateway import launch_gateway
from pyspark.sql import SparkSession

from runtime.jvm import spark_kafka_jars, spark_s3a_jars, spark_s3a_jars_dir
from runtime.settings import Settings

VERBOSE_ENV = "PULSE_JVM_VERBOSE"
LOG4J2 = Path(__file__).resolve().with_name("log4j2.properties")
# Printed by the JDK itself for Spark's unconditional --add-modules=jdk.incubator.vector.
JVM_NOISE = (b"WARNING: Using incubator modules:",)


def jvm_verbose() -> bool:
    """True when the JVM should log as Spark does by default (``pulse -v``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _user_log4j() -> bool:
    """True when the user's SPARK_CONF_DIR has its own log4j2 configuration."""
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    return bool(conf_dir) and (Path(str(conf_dir)) / "log4j2.properties").is_file()


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """Set ``name`` for the duration, unless it is already set or ``value`` is None."""
    if value is None or name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _forward_stderr(pipe: IO[bytes], out: IO[bytes]) -> None:
    """Copy the JVM's stderr lines to ours, without the known noise; drain to the end."""
    with pipe, out:
        for line in pipe:
            if line.startswith(JVM_NOISE):
                continue
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):
                pass  # our stderr is gone; keep draining so the JVM never blocks


def _launch_quiet_jvm(options: dict[str, str], local: bool) -> None:
    """Start the driver JVM as pyspark would, but with its stderr filtered."""
    if SparkContext._gateway is not None:  # a JVM is already up; reuse it as pyspark does
        return
    conf = SparkConf().setAll(list(options.items()))
    with _env("SPARK_LOCAL_IP", "127.0.0.1" if local else None):
        gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE})
    out = os.fdopen(os.dup(2), "wb")  # where the JVM would have written
    threading.Thread(
        target=_forward_stderr, args=(gateway.proc.stderr, out), name="jvm-stderr", daemon=True
    ).start()
    SparkContext._ensure_initialized(gateway=gateway)


def s3a_options(settings: Settings) -> dict[str, str]:
    """Hadoop's s3a settings for the data root's store: endpoint, region, credentials.

    Path-style requests (``endpoint/bucket/key``), which S3-compatible servers expect;
    TLS as the endpoint's scheme says. Without keys, s3a's default credential chain.
    Eight retries of an unreachable store instead of s3a's seven: its waits double from
    about 1 s (each 0.5-1.5 times that), so at least 2 minutes in all instead of 1, more
    than a 60 s outage and the store's restart (docs/faults.md, case 9).
    """
    options = {
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.endpoint.region": settings.s3_region,
        "spark.hadoop.fs.s3a.retry.limit": "8",
    }
    if settings.s3_endpoint:
        options["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint
        secure = settings.s3_endpoint.startswith("https://")
        options["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(secure).lower()
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        options["spark.hadoop.fs.s3a.access.key"] = settings.s3_access_key_id.get_secret_value()
        options["spark.hadoop.fs.s3a.secret.key"] = settings.s3_secret_access_key.get_secret_value()
    return options


def use_object_store(spark: SparkSession, settings: Settings) -> None:
    """Point a running session's s3a file system at ``settings``' store (the session
    must have been built with the s3a jars, as ``build_spark`` does once they are set up)."""
    for key, value in s3a_options(settings).items():
        spark.conf.set(key.removeprefix("spark.hadoop."), value)


def build_spark(
    settings: Settings, app_name: str = "pulse", with_kafka: bool = True
) -> SparkSession:
    """Create (or reuse) the session. UTC, few shuffle partitions, UI off locally, quiet JVM."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Under spark-submit (which starts the JVM and passes its gateway port) the master
    # and jars come from spark-submit's command line; keep them.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    local = not submitted and settings.spark_master.startswith("local")
    quiet = not submitted and not jvm_verbose()
    driver_java = "-Duser.timezone=UTC"
    if quiet and not _user_log4j():
        driver_java += f" -Dlog4j2.configurationFile={LOG4J2.as_uri()}"
    options = {"spark.app.name": app_name}
    if not submitted:
        options["spark.master"] = settings.spark_master
    options |= {
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": driver_java,
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.executor.memory": settings.spark_executor_memory,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
    }
    if local:
        options["spark.ui.enabled"] = "false"
        warehouse = settings.local_root / "spark-warehouse"
        options["spark.sql.warehouse.dir"] = str(warehouse.resolve())
    jars = spark_kafka_jars(settings) if with_kafka and not submitted else []
    if not submitted and (settings.on_object_store or spark_s3a_jars_dir(settings).exists()):
        jars += spark_s3a_jars(settings)  # loaded only if s3a:// is used: no cost otherwise
    if settings.on_object_store:
        options |= s3a_options(settings)
    if jars:
        options["spark.jars"] = ",".join(str(p) for p in jars)
    if quiet:
        _launch_quiet_jvm(options, local)
    builder = SparkSession.builder
    for key, value in options.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
