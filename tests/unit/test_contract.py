"""The transaction contract v1: each way a record can be wrong has its own precise reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.rules import TESTS, Rule
from schemas.transaction import (
    FIELD_NAMES,
    FIELDS,
    MAX_STRING_LEN,
    RULES,
    ContractError,
    check_event,
    decode,
    encode,
    make_event_id,
    rules_for,
    validate,
    wire_frame,
    wire_value,
)

VALID: dict[str, Any] = {
    "event_id": "hm-0123456789abcdef01234567",
    "event_time": "2020-09-22T00:00:00Z",
    "customer_id": "c1",
    "article_id": "0108775015",
    "quantity": 1,
    "unit_price": 0.0508,
    "sales_channel_id": 2,
    "source": "hm",
    "produced_at": "2026-01-01T10:00:00.123Z",
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in VALID.items() if k != name}


def test_a_valid_event_passes_and_round_trips() -> None:
    assert validate(VALID) is None
    event = decode(json.dumps(VALID).encode())
    assert event["event_time"] == datetime(2020, 9, 22, tzinfo=UTC)
    assert event["produced_at"] == datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert event["unit_price"] == 0.0508
    assert json.loads(encode(event)) == VALID


def test_the_wire_bytes_of_an_event() -> None:
    """Compact JSON in contract order; a null channel written as null, other nulls left out."""
    event = decode(json.dumps(VALID).encode())
    wire = (
        '{"event_id":"hm-0123456789abcdef01234567","event_time":"2020-09-22T00:00:00Z",'
        '"customer_id":"c1","article_id":"0108775015","quantity":1,"unit_price":0.0508,'
        '"sales_channel_id":2,"source":"hm","produced_at":"2026-01-01T10:00:00.123Z"}'
    )
    assert encode(event) == wire.encode()
    assert encode(dict(reversed(event.items())) | {"extra": 1}) == wire.encode()
    odd = encode({**event, "customer_id": "Zoë\n", "sales_channel_id": None, "source": None})
    assert odd == (
        wire.replace('"c1"', '"Zoë\\n"')
        .replace('"sales_channel_id":2', '"sales_channel_id":null')
        .replace(',"source":"hm"', "")
        .encode()
    )
    # the batch encoder's pieces (frame and values) make the same object
    frame = wire_frame(FIELD_NAMES)
    values = [wire_value(event[name]) for name in FIELD_NAMES]
    assert "".join(p + v for p, v in zip(frame, values, strict=False)) + frame[-1] == wire
    assert wire_frame(()) == ("{}",) and encode({}) == b'{"sales_channel_id":null}'


@pytest.mark.parametrize("name", [f.name for f in FIELDS if not f.nullable])
def test_each_required_field_missing(name: str) -> None:
    assert validate(without(name)) == f"{name}: missing"


def test_null_required_field_and_nullable_channel() -> None:
    assert validate(with_(customer_id=None)) == "customer_id: null"
    assert validate(with_(sales_channel_id=None)) is None
    assert validate(without("sales_channel_id")) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"event_id": 12}, "event_id: wrong type int, expected string"),
        ({"customer_id": 17850}, "customer_id: wrong type int, expected string"),
        ({"article_id": 108775015}, "article_id: wrong type int, expected string"),
        ({"event_time": 1600732800}, "event_time: wrong type int, expected ISO-8601"),
        ({"quantity": "1"}, "quantity: wrong type str, expected int"),
        ({"quantity": 1.5}, "quantity: wrong type float, expected int"),
        ({"quantity": True}, "quantity: wrong type bool, expected int"),
        ({"unit_price": "0.05"}, "unit_price: wrong type str, expected number"),
        ({"sales_channel_id": "2"}, "sales_channel_id: wrong type str, expected int"),
        ({"source": ["hm"]}, "source: wrong type list, expected string"),
    ],
)
def test_wrong_types(changes: dict[str, Any], reason: str) -> None:
    assert validate(with_(**changes)) == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"unit_price": -0.01}, "unit_price: is negative"),
        ({"unit_price": float("inf")}, "unit_price: not a finite number"),
        ({"event_id": ""}, "event_id: is empty"),
        ({"customer_id": "   "}, "customer_id: is empty"),
        ({"article_id": ""}, "article_id: is empty"),
        ({"quantity": 0}, "quantity: is zero"),
        ({"quantity": 2**31}, "quantity: out of int range"),
        ({"sales_channel_id": 3}, "sales_channel_id: is not 1 or 2"),
        ({"source": "ebay"}, "source: is not one of hm, online_retail, synthetic, amazon"),
        ({"event_time": "yesterday"}, "event_time: unparseable timestamp 'yesterday'"),
        ({"event_time": "2020-13-01T00:00:00Z"}, "event_time: unparseable timestamp"),
        ({"produced_at": "2020-09-22 25:00"}, "produced_at: unparseable timestamp"),
        ({"customer_id": "x" * (MAX_STRING_LEN + 1)}, "customer_id: longer than 256 characters"),
    ],
)
def test_rule_violations(changes: dict[str, Any], reason: str) -> None:
    got = validate(with_(**changes))
    assert got is not None and got.startswith(reason)


def test_returns_and_free_items_are_valid_and_a_naive_time_is_utc() -> None:
    assert validate(with_(quantity=-3)) is None
    assert validate(with_(unit_price=0)) is None  # unit_price >= 0: a free item is an event
    assert validate(with_(unit_price=0.0)) is None
    event = check_event(with_(event_time="2010-12-01T08:26:00"))
    assert event["event_time"] == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)


def test_blank_means_ascii_whitespace_only() -> None:
    # One character set for Python, pandas and Spark (Java's whitespace is not Python's).
    assert validate(with_(customer_id=" \t\n\r\f\v")) == "customer_id: is empty"
    assert validate(with_(customer_id="\u00a0")) is None


def test_unknown_field_and_non_objects() -> None:
    assert validate(with_(colour="red")) == "unknown field colour"
    assert validate([VALID]) == "not a JSON object (list)"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event_id": "x"', "malformed JSON: JSONDecodeError"),
        (b"\xff\xfe", "malformed JSON"),
        (b"", "malformed JSON: JSONDecodeError"),
        (b"42", "not a JSON object (int)"),
    ],
)
def test_bad_bytes(raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        decode(raw)
    assert caught.value.reason.startswith(reason)


def test_event_ids_are_deterministic_and_distinguish_occurrences() -> None:
    a = make_event_id("hm", "2020-09-20", "c1", "0108775015", 0)
    assert a == make_event_id("hm", "2020-09-20", "c1", "0108775015", 0)
    assert a != make_event_id("hm", "2020-09-20", "c1", "0108775015", 1)
    assert a != make_event_id("synthetic", "2020-09-20", "c1", "0108775015", 0)
    assert a.startswith("hm-") and len(a) == len("hm-") + 24


def test_spark_schema_agrees_with_fields() -> None:
    pytest.importorskip("pyspark")
    from pyspark.sql import types as T

    from schemas.transaction import spark_schema

    expected = {
        "string": T.StringType(),
        "timestamp": T.TimestampType(),
        "int": T.IntegerType(),
        "double": T.DoubleType(),
    }
    schema = spark_schema()
    assert tuple(schema.fieldNames()) == FIELD_NAMES
    for spec, struct_field in zip(FIELDS, schema.fields, strict=True):
        assert struct_field.dataType == expected[spec.kind], spec.name
        assert struct_field.nullable == spec.nullable, spec.name


def test_arrow_schema_of_the_adapters_agrees_with_fields() -> None:
    import pyarrow as pa

    from producers.adapters import ARROW_SCHEMA

    expected = {
        "string": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "int": pa.int32(),
        "double": pa.float64(),
    }
    for spec in FIELDS:
        assert ARROW_SCHEMA.field(spec.name).type == expected[spec.kind], spec.name


# -- the rules: one definition, read the same way in Python and pandas ------------------

KIND_RULE = {"string": "max_length", "int": "int32", "double": "finite"}


def test_rules_are_named_once_and_each_kind_rule_comes_first() -> None:
    assert len({(r.field, r.name) for r in RULES}) == len(RULES)
    assert len({r.message for r in RULES}) == len(RULES)
    assert {r.field for r in RULES} <= set(FIELD_NAMES)
    for spec in FIELDS:
        names = [r.name for r in rules_for(spec.name)]
        if spec.kind in KIND_RULE:
            assert names[0] == KIND_RULE[spec.kind], spec.name
        else:
            assert names == [], spec.name  # timestamps: parsing is their only check


def test_a_rule_with_an_unknown_test_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown test"):
        Rule("quantity", "odd", "is_odd", None, "is odd")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.field}.{r.name}")
def test_each_rule_breaks_with_its_reason_and_its_probes_reach_both_sides(rule: Rule) -> None:
    reasons = [validate(with_(**{rule.field: value})) for value in rule.probes()]
    assert rule.message in reasons
    assert any(r != rule.message for r in reasons)


def _as_adapters_read(rule: Rule, value: Any):  # type: ignore[no-untyped-def]
    """A one-value Series typed as the adapters hold it: Arrow strings, or to_numeric of text."""
    import pandas as pd

    text = pd.Series([str(value)], dtype="string[pyarrow]")
    kind = next(f.kind for f in FIELDS if f.name == rule.field)
    return text if kind == "string" else pd.to_numeric(text, errors="coerce")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.field}.{r.name}")
def test_pandas_reading_of_each_rule_agrees_with_python(rule: Rule) -> None:
    assert {r.test for r in RULES} <= set(TESTS)
    for value in rule.probes():
        series = _as_adapters_read(rule, value)
        got = bool(rule.broken_series(series).iloc[0])
        held = series.iloc[0]
        if series.isna().iloc[0]:
            assert not got  # nulls never break a rule: the adapter reports them itself
        else:
            held = held.item() if hasattr(held, "item") else held
            assert got == rule.broken(held), (rule.name, value, held)
