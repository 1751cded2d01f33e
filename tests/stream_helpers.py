"""Helpers for the streaming tests: hand-made events and a topic made of files.

The streaming tier runs the real job (``streaming.job.run``) on a Spark *file*
stream whose rows have the Kafka source's columns, so it needs no broker; the
integration tier runs the same job on a real Kafka topic.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.transaction import encode, make_event_id, now_utc

# The Kafka source's columns (what ``streaming.parse.classify_arrow`` reads).
KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, "
    "timestamp timestamp, timestampType int"
)


def event(customer: str, day: str, price: float, n: int = 0, **extra: Any) -> dict[str, Any]:
    """One valid contract event on ``day`` (YYYY-MM-DD[Thh:mm]) with a deterministic id."""
    when = datetime.fromisoformat(day).replace(tzinfo=UTC)
    base = {
        "event_id": make_event_id("synthetic", customer, day, price, n),
        "event_time": when,
        "customer_id": customer,
        "article_id": f"a{n}",
        "quantity": 1,
        "unit_price": price,
        "sales_channel_id": 2 if n % 2 else 1,
        "source": "synthetic",
        "produced_at": now_utc(),
    }
    return {**base, **extra}


class FileTopic:
    """A one-partition "topic" of Parquet files with the Kafka source's columns.

    ``send`` appends records (dicts are encoded as the producer does, bytes sent as
    they are) as a new file; ``stream`` is the streaming DataFrame the job reads.
    """

    def __init__(self, path: Path, name: str = "transactions") -> None:
        self.path = path
        self.name = name
        self.offset = 0
        self._mtime_ns = 0
        path.mkdir(parents=True, exist_ok=True)

    def send(self, values: list[bytes | dict[str, Any]], per_file: int = 7) -> None:
        """Append ``values`` in order, at the next offsets, ``per_file`` to a file.

        The job reads one file per micro-batch, so ``per_file`` is the batch size.
        """
        for start in range(0, len(values), per_file):
            self._write(values[start : start + per_file])

    def _write(self, values: list[bytes | dict[str, Any]]) -> None:
        n = len(values)
        table = pa.table(
            {
                "key": pa.array(
                    [v["customer_id"].encode() if isinstance(v, dict) else None for v in values],
                    pa.binary(),
                ),
                "value": pa.array(
                    [encode(v) if isinstance(v, dict) else v for v in values], pa.binary()
                ),
                "topic": pa.array([self.name] * n, pa.string()),
                "partition": pa.array([0] * n, pa.int32()),
                "offset": pa.array(range(self.offset, self.offset + n), pa.int64()),
                "timestamp": pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
                "timestampType": pa.array([0] * n, pa.int32()),
            }
        )
        self.offset += n
        tmp = self.path / f".{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        # Spark's file source takes files in modification-time order (milliseconds): two
        # files written in the same millisecond could be read out of order.
        self._mtime_ns = max(time.time_ns(), self._mtime_ns + 5_000_000)
        os.utime(tmp, ns=(self._mtime_ns, self._mtime_ns))
        tmp.rename(self.path / f"{self.offset:012d}.parquet")  # appear whole, in order

    def stream(self, spark):  # type: ignore[no-untyped-def]
        """The files as a streaming DataFrame with the Kafka source's columns."""
        return (
            spark.readStream.schema(KAFKA_SCHEMA)
            .option("maxFilesPerTrigger", 1)
            .parquet(str(self.path))
        )
