"""The stream's contract check of a micro-batch (``classify_arrow``), on the driver as
Arrow: Kafka rows (value, topic, partition, offset, timestamp) -> the same rows plus the
typed contract columns and ``reason`` (null for a valid event).

Records in the producer's canonical form (nearly all) are typed and checked with
pyarrow (``streaming.contract_canonical.split_canonical``) on the driver's cores; the
rest go to the VARIANT reading (``streaming.contract_variant.classify_exact``) in one
small Spark job. Both give ``schemas.transaction.validate``'s reasons word for word.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from pyspark.sql import SparkSession

from streaming.contract_canonical import split_canonical
from streaming.contract_variant import classify_exact
from streaming.kafka_rows import CLASSIFIED_SCHEMA

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, pa.cpu_count()), thread_name_prefix="pulse-parse")
    return _POOL


def classify_arrow(spark: SparkSession, kafka: pa.Table) -> pa.Table:
    """The job's transform of a batch on the driver: Kafka rows (Arrow) -> ``CLASSIFIED_SCHEMA``.

    Canonical records are typed and checked by ``split_canonical``, in slices on the
    driver's cores (pyarrow's kernels release the GIL); the others, if any, by
    ``classify_exact`` in one small Spark job. Canonical rows come first, each group
    in its input order.
    """
    slices = max(1, min(pa.cpu_count(), len(kafka) // 20_000))
    bounds = [len(kafka) * k // slices for k in range(slices + 1)]
    parts = list(
        _pool().map(
            split_canonical,
            [kafka.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        )
    )
    fast = pa.concat_tables([f for f, _ in parts])
    others = pa.concat_tables([o for _, o in parts])
    if not len(others):
        return fast
    exact = classify_exact(spark.createDataFrame(others)).toArrow()
    return pa.concat_tables([fast, exact.cast(CLASSIFIED_SCHEMA)])
