"""The stream's driver-side fast path (``streaming.contract_canonical.split_canonical``)
against Python.

Spark-free: every record the fast path keeps must get ``validate``'s reason and, when
valid, ``decode``'s values; the records it hands on are the exact path's (Spark's,
compared in tests/spark/test_parse.py). Random number and date texts probe the
conversions json.loads and datetime.fromisoformat make.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from parse_cases import CANONICAL_EDGES, PROBES, RECORDS, compact, python_reason, with_

from schemas.rules import Rule
from schemas.transaction import FIELD_NAMES, FIELDS, RULES, decode, encode
from streaming.contract_canonical import split_canonical
from streaming.kafka_rows import CLASSIFIED_SCHEMA


def _kafka(values: list[bytes | None]) -> pa.Table:
    return pa.table(
        {
            "value": pa.array(values, pa.binary()),
            "topic": pa.array(["t"] * len(values)),
            "partition": pa.array([0] * len(values), pa.int32()),
            "offset": pa.array(range(len(values)), pa.int64()),
            "timestamp": pa.nulls(len(values), pa.timestamp("us", tz="UTC")),
        }
    )


def _check(records: list[bytes | None]) -> tuple[int, list[int]]:
    """Run the fast path; assert its rows agree with Python. Returns (fast, other offsets)."""
    fast, others = split_canonical(_kafka(records))
    assert fast.schema == CLASSIFIED_SCHEMA
    for row in fast.to_pylist():
        raw = records[row["offset"]]
        assert raw is not None
        assert row["reason"] == python_reason(raw), raw
        if row["reason"] is None:
            event = decode(raw)
            assert {n: row[n] for n in FIELD_NAMES} == event, raw
            assert row["value"] is None  # only quarantine keeps the bytes
        else:
            assert row["value"] == raw
    offsets = others.column("offset").to_pylist()
    assert sorted(fast.column("offset").to_pylist() + offsets) == list(range(len(records)))
    assert others.column("value").to_pylist() == [records[i] for i in offsets]
    return len(fast), offsets


def test_compact_is_the_producers_form() -> None:
    assert compact(with_()).decode() == encode(decode(with_())).decode()


def test_fast_rows_get_pythons_reasons_and_values() -> None:
    records = [compact(r) for r in [*RECORDS, *(raw for _, raw in PROBES)]] + CANONICAL_EDGES
    fast, _ = _check(records)
    # Most are canonical (so tests/spark/test_parse.py's compact form runs the fast
    # path), not all.
    assert len(records) // 2 < fast < len(records)
    # Every rule is broken by some fast record, so each Arrow reading is exercised here,
    # but those no canonical text can break (9 digits fit an int32; 15 digits and no
    # exponent are finite): a record that does is handed on.
    reasons = set(split_canonical(_kafka(records))[0].column("reason").to_pylist())
    assert {r.message for r in RULES} - reasons == {
        "quantity: out of int range",
        "sales_channel_id: out of int range",
        "unit_price: not a finite number",
    }


def test_records_not_in_canonical_form_are_handed_on() -> None:
    good = compact(with_())
    records = [
        good,
        None,
        b"",
        good.replace(b'"c1"', b'"c\xff"'),  # not UTF-8
        good.replace(b'"c1"', b'"c\\u0031"'),  # an escape
        good.replace(b'"quantity":1', b'"quantity":1e0'),
        good.replace(b'"quantity":1', b'"quantity":1234567890'),  # 10 digits
        good.replace(b",", b", ", 1),
        good.replace(
            b'"event_time":"2020-09-22T00:00:00Z"', b'"event_time":"2020-02-30T00:00:00Z"'
        ),
        good.replace(
            b'"event_time":"2020-09-22T00:00:00Z"', b'"event_time":"0000-09-22T00:00:00Z"'
        ),
        good[:-1] + b',"extra":1}',
        good,
    ]
    assert _check(records) == (2, list(range(1, 11)))


def test_many_batches_in_one_call_keep_their_order() -> None:
    records = [compact(with_(event_id=f"e{i}", quantity=i % 5 - 2)) for i in range(5000)]
    fast, others = split_canonical(_kafka(records))
    assert len(others) == 0
    assert fast.column("event_id").to_pylist() == [f"e{i}" for i in range(5000)]
    assert fast.column("reason").to_pylist().count("quantity: is zero") == 1000


def _number_texts(rng: random.Random, n: int) -> list[str]:
    """Number texts of the canonical form: up to 15 integer and 17 fraction digits."""
    texts = []
    for _ in range(n):
        whole = str(rng.randrange(10 ** rng.randint(1, 15)))
        sign = "-" if rng.random() < 0.3 else ""
        if rng.random() < 0.2:
            texts.append(sign + whole)
        else:
            digits = rng.randint(1, 17)
            texts.append(f"{sign}{whole}.{rng.randrange(10**digits):0{digits}d}")
    return texts + ["0", "-0", "0.0", "-0.0", "0.1", "0.30000000000000004"]


def test_prices_convert_as_json_loads_does() -> None:
    rng = random.Random(12)
    texts = _number_texts(rng, 20_000)
    base = compact(with_())
    records = [base.replace(b'"unit_price":0.05', f'"unit_price":{t}'.encode()) for t in texts]
    fast, others = split_canonical(_kafka(records))
    assert len(others) == 0
    got = fast.column("unit_price").to_pylist()
    want = [float(json.loads(t)) for t in texts]
    # bit for bit, the sign of zero included
    assert [(t, g) for t, g, w in zip(texts, got, want, strict=True) if repr(g) != repr(w)] == []


def _time_texts(rng: random.Random, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        y = rng.choice([rng.randint(0, 9999), rng.randint(1896, 2104)])
        mo, d = rng.randint(0, 13), rng.randint(0, 32)
        h, mi, s = rng.randint(0, 25), rng.randint(0, 61), rng.randint(0, 61)
        ms = f".{rng.randrange(1000):03d}" if rng.random() < 0.5 else ""
        texts.append(f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{ms}Z")
    return texts


def test_timestamps_convert_as_fromisoformat_does() -> None:
    rng = random.Random(7)
    texts = _time_texts(rng, 20_000)
    base = compact(with_())
    old = b'"event_time":"2020-09-22T00:00:00Z"'
    records = [base.replace(old, f'"event_time":"{t}"'.encode()) for t in texts]
    fast, others = split_canonical(_kafka(records))
    kept = dict(
        zip(fast.column("offset").to_pylist(), fast.column("event_time").to_pylist(), strict=True)
    )
    for i, text in enumerate(texts):
        try:
            want: datetime | None = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            want = None
        assert kept.get(i) == want, text  # refused ones are handed on, for the exact reason
    assert 0 < len(others) < len(texts)


def _as_fast_path_holds(rule: Rule, value: Any) -> pa.Array | None:
    """One probe as the fast path holds its field, or None where that never happens."""
    kind = next(f.kind for f in FIELDS if f.name == rule.field)
    if kind == "string":
        return pa.array([value], pa.string()) if isinstance(value, str) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind == "int":
        ok = isinstance(value, int) and -(2**31) <= value < 2**31
        return pa.array([value], pa.int32()) if ok else None
    try:
        return pa.array([float(value)], pa.float64())
    except OverflowError:
        return None


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.field}.{r.name}")
def test_arrow_reading_of_each_rule_agrees_with_python(rule: Rule) -> None:
    held = 0
    for value in rule.probes():
        array = _as_fast_path_holds(rule, value)
        if array is None:
            continue
        held += 1
        assert rule.broken_arrow(array)[0].as_py() == rule.broken(array[0].as_py()), value
    assert held
    null = pa.nulls(1, pa.array(rule.probes()[:1]).type if rule.test != "blank" else pa.string())
    assert rule.broken_arrow(null)[0].as_py() is None


def test_times_are_utc_microseconds() -> None:
    raw = compact(with_(event_time="1969-12-31T23:59:59.001Z", produced_at="2026-01-01T10:00:00Z"))
    fast, _ = split_canonical(_kafka([raw]))
    assert fast.column("event_time")[0].as_py() == datetime(1969, 12, 31, 23, 59, 59, 1000, UTC)
    assert fast.column("produced_at").type == pa.timestamp("us", tz="UTC")
