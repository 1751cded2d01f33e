"""The rows the stream's contract check takes and gives: the Kafka source's columns
(``KAFKA_COLUMNS``), the classified rows' Arrow schema (``CLASSIFIED_SCHEMA``: those
columns, every contract field typed, and ``reason``), and the quarantine's columns.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.transaction import FIELDS
from storage.lake import ARROW_TYPES

#: The columns of Spark's Kafka source that the stream collects and classifies.
KAFKA_COLUMNS = ("value", "topic", "partition", "offset", "timestamp")
#: The Arrow schema of ``streaming.contract_variant.classify_exact``'s output (what Spark's
#: ``toArrow`` gives for it), and of ``streaming.contract_canonical.split_canonical``'s.
CLASSIFIED_SCHEMA = pa.schema(
    [
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        *[(f.name, ARROW_TYPES[f.kind]) for f in FIELDS],
        ("reason", pa.string()),
    ]
)

#: The quarantine's columns: the raw bytes, where they were in Kafka, and why.
QUARANTINE_COLUMNS = ("value", "topic", "partition", "offset", "reason", "kafka_ts")
