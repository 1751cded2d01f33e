"""Both online stores rank by value at risk (churn probability x expected value) the same
way, keep the old ordering available, and open a store written before the value existed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from serving.online import RECORD_COLUMNS, OnlineStore, RedisStore, SqliteStore

pytestmark = pytest.mark.unit


def record(cid: str, p: float | None, value: float | None) -> tuple:
    values = {c: None for c in RECORD_COLUMNS}
    values |= {"customer_id": cid, "purchase_days": 1, "n_events": 1, "monetary": 1.0,
               "n_online": 0, "n_with_channel": 1, "max_event_time": 5, "history": "[]",
               "churn_probability": p, "expected_value": value}  # fmt: skip
    return tuple(values[c] for c in RECORD_COLUMNS)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path) -> Iterator[OnlineStore]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s: OnlineStore = SqliteStore(tmp_path / "online.db")
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix=f"var-{tmp_path.name}:")
    yield s
    s.close()


def test_value_at_risk_orders_by_probability_times_value(store: OnlineStore) -> None:
    store.write_records(
        [
            record("gone-cheap", 0.95, 2.0),  # 1.9
            record("wavering-big", 0.40, 300.0),  # 120
            record("loyal-big", 0.05, 1000.0),  # 50
            record("tie-b", 0.5, 100.0),  # 50, ties with loyal-big: by id
            record("no-value", 0.99, None),  # an older churn model: not ranked by value
        ]
    )
    assert store.top_value_at_risk(10) == ["wavering-big", "loyal-big", "tie-b", "gone-cheap"]
    assert store.top_value_at_risk(2) == ["wavering-big", "loyal-big"]
    assert store.top_churn(2) == ["no-value", "gone-cheap"]
    # an upsert without a value takes the customer out of the value ranking
    store.write_records([record("wavering-big", 0.40, None)])
    assert store.top_value_at_risk(1) == ["loyal-big"]
    assert store.get("loyal-big")["expected_value"] == 1000.0  # type: ignore[index]


def test_a_store_from_before_the_value_column_still_opens(tmp_path) -> None:
    path = tmp_path / "old.db"
    old = [c for c in RECORD_COLUMNS[1:] if c != "expected_value"]
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE customer (customer_id TEXT PRIMARY KEY, {', '.join(old)})")
    db.execute("CREATE TABLE output (kind TEXT, customer_id TEXT, value TEXT)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO customer (customer_id, churn_probability) VALUES ('a', 0.5)")
    db.commit()
    db.close()
    reader = SqliteStore(path, readonly=True)
    record_a = reader.get("a")
    assert record_a is not None and record_a["expected_value"] is None
    assert reader.top_value_at_risk(5) == [] and reader.top_churn(5) == ["a"]
    reader.close()
    writer = SqliteStore(path)  # opened for writing: the column is added
    writer.write_records([record("b", 0.2, 10.0)])
    assert writer.top_value_at_risk(5) == ["b"]
    writer.close()
