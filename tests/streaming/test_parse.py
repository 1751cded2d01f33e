"""The Spark validator gives the same reason as schemas.transaction.validate, record by record.

Both derive their rules from ``schemas.transaction.RULES``; this differential test is what
proves the two readings agree (type checks, structure, and every rule at its boundary).
"""

from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from schemas.transaction import RULES, decode, encode, parse_timestamp, validate
from streaming.parse import CANONICAL, classify

pytestmark = pytest.mark.spark

GOOD = {
    "event_id": "hm-abc",
    "event_time": "2020-09-22T00:00:00Z",
    "customer_id": "c1",
    "article_id": "0123",
    "quantity": 1,
    "unit_price": 0.05,
    "sales_channel_id": 2,
    "source": "hm",
    "produced_at": "2026-01-01T10:00:00.123Z",
}


def _with(**changes: object) -> bytes:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v != "<drop>"}).encode()


RECORDS: list[bytes] = [
    _with(),
    _with(sales_channel_id=None),
    _with(sales_channel_id="<drop>"),
    _with(quantity=-3, unit_price=2),
    b"{broken",
    b'{"event_id": "\xc3\x28"}',  # invalid UTF-8
    b"[1, 2]",
    b"null",
    b'"text"',
    _with(event_id="<drop>"),
    _with(event_id=None),
    _with(event_id=""),
    _with(event_id="   "),
    _with(event_id=5),
    _with(customer_id=True),
    _with(customer_id="x" * 300),
    _with(article_id=["a"]),
    _with(article_id={"a": 1}),
    _with(event_time=20200922),
    _with(event_time="yesterday"),
    _with(event_time="2020-13-45T00:00:00Z"),
    _with(quantity="1"),
    _with(quantity=1.5),
    _with(quantity=True),
    _with(quantity=0),
    _with(quantity=2**40),
    _with(unit_price=-0.01),
    _with(unit_price="9.99"),
    _with(unit_price=False),
    _with(sales_channel_id=3),
    _with(sales_channel_id=1.0),
    _with(source="amazon"),
    _with(produced_at=None),
    _with(extra_field=1),
    _with(zzz=1, aaa=2),
    _with(quantity=0, unit_price=-1),
    # The rule across fields: event_time at most 1 day after produced_at.
    _with(event_time="2026-01-02T10:00:00.123Z"),  # exactly 1 day: valid
    _with(event_time="2026-01-02T10:00:00.124Z"),  # 1 day + 1 ms: dated in the future
    _with(event_time="2031-01-01T00:00:00Z"),
    _with(event_time="2031-01-01T00:00:00Z", unit_price=-1),  # a field rule comes first
    # The fast paths of the number-type and extra-key checks:
    _with(quantity=1.0),
    _with(quantity=12345678901234567890123),
    _with(quantity=1e2),
    _with(unit_price=5),
    _with(unit_price=5.0),
    _with(unit_price=12345678901234567890123),
    _with(nested={"event_id": "x", "b": [1, 2]}),
    _with(**{"odd: key": 1}),
    _with(**{"a<b>": 1}),
    _with(**{"": 1}),
]

# Every rule of the contract, probed on both sides of its boundary (schemas.rules.Rule.probes):
# a rule added to RULES, or a change to how a test reads in Python or Spark, is covered here.
PROBES: list[tuple[str, bytes]] = [
    (rule.message, _with(**{rule.field: value})) for rule in RULES for value in rule.probes()
]


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


def _python_reason(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"malformed JSON: {exc.__class__.__name__}"
    return validate(obj)


def _compact(raw: bytes) -> bytes:
    """The record as the producer writes it (compact, same key order), when it is JSON.

    Compact records in the contract's key order take classify's fast path; the
    json.dumps default (spaces after separators) takes the exact path.
    """
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


FORMS = {"spaced": lambda raw: raw, "compact": _compact}


def _spark_disagrees(spark, records: list[bytes], expected: list[str | None]) -> list:  # type: ignore[no-untyped-def, type-arg]
    """(record, Spark's reason, Python's reason) wherever the two differ."""
    got = classify(_kafka_rows(spark, records)).orderBy("offset").collect()
    return [
        (raw, row["reason"], want)
        for raw, row, want in zip(records, got, expected, strict=True)
        if row["reason"] != want
    ]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_spark_reasons_equal_python_reasons(spark, form) -> None:  # type: ignore[no-untyped-def]
    records = [FORMS[form](r) for r in RECORDS]
    expected = [_python_reason(r) for r in records]
    assert _spark_disagrees(spark, records, expected) == []
    # The set exercises both valid and many distinct invalid reasons.
    assert expected[:4] == [None, None, None, None]
    assert len({e for e in expected if e}) >= 25


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_rule_is_probed_on_both_sides_in_spark_and_python(spark, form) -> None:  # type: ignore[no-untyped-def]
    records = [FORMS[form](raw) for _, raw in PROBES]
    expected = [_python_reason(raw) for raw in records]
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


def test_compact_records_take_the_fast_path(spark) -> None:  # type: ignore[no-untyped-def]
    records = [_compact(r) for r in RECORDS] + [_compact(raw) for _, raw in PROBES]
    texts = _kafka_rows(spark, records).select(F.col("value").cast("string").alias("t"))
    fast = texts.where(F.col("t").rlike(CANONICAL)).count()
    # Most are canonical (so the comparisons above test the fast path), not all.
    assert len(records) // 2 < fast < len(records)
    assert _compact(_with()).decode() == encode(decode(_with())).decode()


@pytest.mark.parametrize("form", sorted(FORMS))
def test_valid_rows_are_typed_like_decode(spark, form) -> None:  # type: ignore[no-untyped-def]
    values = [
        FORMS[form](v) for v in (_with(), _with(sales_channel_id=None, quantity=-3, unit_price=2))
    ]
    got = classify(_kafka_rows(spark, values)).orderBy("offset").collect()
    for row, raw in zip(got, values, strict=True):
        event = decode(raw)
        assert row["event_id"] == event["event_id"]
        assert row["quantity"] == event["quantity"]
        assert row["unit_price"] == event["unit_price"]
        assert row["sales_channel_id"] == event["sales_channel_id"]
        assert row["event_time"] == event["event_time"].replace(tzinfo=None)
        assert row["produced_at"] == parse_timestamp(GOOD["produced_at"]).replace(tzinfo=None)
    assert decode(encode(decode(values[0]))) == decode(values[0])
