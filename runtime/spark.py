"""The one Spark session factory: local[2] by default, any master by setting.

Spark's own Kafka connector (resolved by `pulse setup`) goes on the classpath via
``spark.jars``, which also ships it to executors on a cluster.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from runtime.jvm import spark_kafka_jars
from runtime.settings import Settings


def build_spark(
    settings: Settings, app_name: str = "pulse", with_kafka: bool = True
) -> SparkSession:
    """Create (or reuse) the session. UTC, few shuffle partitions, UI off locally."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Under spark-submit (which starts the JVM and passes its gateway port) the master
    # and jars come from spark-submit's command line; keep them.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    local = not submitted and settings.spark_master.startswith("local")
    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        builder = builder.master(settings.spark_master)
    builder = (
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.executor.memory", settings.spark_executor_memory)
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if local:
        builder = builder.config("spark.ui.enabled", "false").config(
            "spark.sql.warehouse.dir", str((settings.data_root / "spark-warehouse").resolve())
        )
    if with_kafka and not submitted:
        builder = builder.config("spark.jars", ",".join(str(p) for p in spark_kafka_jars(settings)))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
