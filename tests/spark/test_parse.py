"""The stream's validators give the same reason as schemas.transaction.validate, record by
record: ``classify_exact`` (Spark, any record) and ``classify_arrow`` (the job's path).

Both derive their rules from ``schemas.transaction.RULES``; this differential test is what
proves the two readings agree (type checks, structure, and every rule at its boundary).
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from parse_cases import (
    CANONICAL_EDGES,
    FORMS,
    GOOD,
    PROBES,
    RECORDS,
    python_reason,
    with_,
)
from pyspark.sql import types as T

from schemas.transaction import RULES, decode, encode, parse_timestamp
from streaming.contract_variant import classify_exact
from streaming.parse import classify_arrow


def _kafka_rows(spark, values: list[bytes]):  # type: ignore[no-untyped-def]
    schema = T.StructType(
        [
            T.StructField("value", T.BinaryType()),
            T.StructField("topic", T.StringType()),
            T.StructField("partition", T.IntegerType()),
            T.StructField("offset", T.LongType()),
            T.StructField("timestamp", T.TimestampType()),
        ]
    )
    rows = [(bytearray(v), "t", 0, i, None) for i, v in enumerate(values)]
    return spark.createDataFrame(rows, schema)


def _spark_disagrees(spark, records: list[bytes], expected: list[str | None]) -> list:  # type: ignore[no-untyped-def, type-arg]
    """(record, Spark's reason, Python's reason) wherever the two differ."""
    got = classify_exact(_kafka_rows(spark, records)).orderBy("offset").collect()
    return [
        (raw, row["reason"], want)
        for raw, row, want in zip(records, got, expected, strict=True)
        if row["reason"] != want
    ]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_spark_reasons_equal_python_reasons(spark, form) -> None:  # type: ignore[no-untyped-def]
    records = [FORMS[form](r) for r in RECORDS]
    expected = [python_reason(r) for r in records]
    assert _spark_disagrees(spark, records, expected) == []
    # The set exercises both valid and many distinct invalid reasons.
    assert expected[:4] == [None, None, None, None]
    assert len({e for e in expected if e}) >= 25


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_rule_is_probed_on_both_sides_in_spark_and_python(spark, form) -> None:  # type: ignore[no-untyped-def]
    records = [FORMS[form](raw) for _, raw in PROBES]
    expected = [python_reason(raw) for raw in records]
    assert _spark_disagrees(spark, records, expected) == []
    # The probes reach each rule: some break it, and some are on its passing side.
    for rule in RULES:
        reasons = [
            want
            for (message, _), want in zip(PROBES, expected, strict=True)
            if message == rule.message
        ]
        assert rule.message in reasons, rule
        assert any(r != rule.message for r in reasons), rule


@pytest.mark.parametrize("form", sorted(FORMS))
def test_valid_rows_are_typed_like_decode(spark, form) -> None:  # type: ignore[no-untyped-def]
    values = [
        FORMS[form](v) for v in (with_(), with_(sales_channel_id=None, quantity=-3, unit_price=2))
    ]
    got = classify_exact(_kafka_rows(spark, values)).orderBy("offset").collect()
    for row, raw in zip(got, values, strict=True):
        event = decode(raw)
        assert row["event_id"] == event["event_id"]
        assert row["quantity"] == event["quantity"]
        assert row["unit_price"] == event["unit_price"]
        assert row["sales_channel_id"] == event["sales_channel_id"]
        assert row["event_time"] == event["event_time"].replace(tzinfo=None)
        assert row["produced_at"] == parse_timestamp(GOOD["produced_at"]).replace(tzinfo=None)
    assert decode(encode(decode(values[0]))) == decode(values[0])


def _arrow_rows(values: list[bytes]) -> pa.Table:
    """The Kafka rows of ``_kafka_rows`` as the driver holds them after ``toArrow``."""
    return pa.table(
        {
            "value": pa.array(values, pa.binary()),
            "topic": pa.array(["t"] * len(values)),
            "partition": pa.array([0] * len(values), pa.int32()),
            "offset": pa.array(range(len(values)), pa.int64()),
            "timestamp": pa.nulls(len(values), pa.timestamp("us", tz="UTC")),
        }
    )


def _rows(table: pa.Table) -> list[dict]:  # type: ignore[type-arg]
    """Classified rows by offset, times as microseconds (Spark keeps years Python has not),
    less the bytes of a valid record (no output keeps them)."""
    table = table.sort_by("offset")
    table = table.cast(
        pa.schema(
            [
                pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f
                for f in table.schema
            ]
        )
    )
    return [
        {k: v for k, v in row.items() if k != "value" or row["reason"] is not None}
        for row in table.to_pylist()
    ]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_driver_path_equals_spark_and_python_on_every_record_and_probe(spark, form) -> None:  # type: ignore[no-untyped-def]
    """The job's path (pyarrow on the driver, classify_exact for the rest) against Python.

    Reasons equal Python's, record by record, for every structural case, every rule's
    probes and the canonical edges; typed columns equal ``decode``'s.
    """
    records = [FORMS[form](r) for r in [*RECORDS, *(raw for _, raw in PROBES)]]
    records += CANONICAL_EDGES
    expected = [python_reason(r) for r in records]
    got = _rows(classify_arrow(spark, _arrow_rows(records)))
    assert [
        (raw, row["reason"], want)
        for raw, row, want in zip(records, got, expected, strict=True)
        if row["reason"] != want
    ] == []
    # The typed columns: split_canonical's (canonical records) equal the VARIANT
    # reading's, and every valid record's equal schemas.transaction.decode's.
    assert got == _rows(classify_exact(_kafka_rows(spark, records)).toArrow())
    typed = [(raw, row) for raw, row in zip(records, got, strict=True) if row["reason"] is None]
    assert len(typed) >= 4
    for raw, row in typed:
        event = decode(raw)
        for name in ("event_id", "customer_id", "article_id", "quantity", "unit_price",
                     "sales_channel_id", "source"):  # fmt: skip
            assert row[name] == event[name], (raw, name)
        for name in ("event_time", "produced_at"):  # microseconds since the epoch
            assert row[name] == round(event[name].timestamp() * 1_000_000), (raw, name)


def test_spark_reasons_equal_python_reasons_on_the_canonical_edges(spark) -> None:  # type: ignore[no-untyped-def]
    # Read back as Arrow: collect() would turn 0001-01-01 into a local time, year 0.
    got = _rows(classify_exact(_kafka_rows(spark, CANONICAL_EDGES)).toArrow())
    assert [r["reason"] for r in got] == [python_reason(r) for r in CANONICAL_EDGES]
