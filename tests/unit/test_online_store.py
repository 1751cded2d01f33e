"""Both online-store backends keep the same contract: real SQLite, real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from serving.online import RECORD_COLUMNS, OnlineStore, RedisStore, SqliteStore


def record(cid: str, days: int, monetary: float = 1.0) -> tuple:
    values = {c: None for c in RECORD_COLUMNS}
    values |= {"customer_id": cid, "purchase_days": days, "n_events": 1, "monetary": monetary,
               "n_online": 0, "n_with_channel": 1, "max_event_time": 5,
               "history": "[[18000,1,1,2.5,0,1]]"}  # fmt: skip
    return tuple(values[c] for c in RECORD_COLUMNS)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path) -> Iterator[OnlineStore]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s: OnlineStore = SqliteStore(tmp_path / "online.db")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, prefix=f"test-{tmp_path.name}:")
    yield s
    s.close()


def test_records_upsert_and_read_back_with_their_types(store: OnlineStore) -> None:
    store.write_records([record("a", 2, monetary=0.1 + 0.2), record("b", 1)])
    store.write_records([record("b", 3)])  # an upsert of absolute values
    a, b = store.get("a"), store.get("b")
    assert a is not None and b is not None
    assert a["monetary"] == 0.1 + 0.2 and a["purchase_days"] == 2
    assert (b["purchase_days"], b["first_purchase_date"], b["max_event_time"]) == (3, None, 5)
    assert b["history"] == "[[18000,1,1,2.5,0,1]]"
    assert store.get("nobody") is None
    assert store.count() == 2


def test_records_reads_every_record_once(store: OnlineStore) -> None:
    store.write_records([record(f"c{i:03d}", i % 4) for i in range(250)])
    store.write_records([record("c007", 9)])
    seen = [row for chunk in store.records() for row in chunk]
    assert sorted(r[0] for r in seen) == [f"c{i:03d}" for i in range(250)]
    by_id = {r[0]: dict(zip(RECORD_COLUMNS, r, strict=True)) for r in seen}
    assert by_id["c007"]["purchase_days"] == 9 and by_id["c005"]["purchase_days"] == 1
    assert by_id["c005"] == store.get("c005")


def test_an_output_version_replaces_the_last_one_whole(store: OnlineStore) -> None:
    store.write_records([record("a", 1), record("b", 2)])
    store.replace_output("recommendations", "r1", [("a", json.dumps(["x1"])), ("b", "[]")])
    store.replace_output("recommendations", "r2", [("b", json.dumps(["y1", "y2"]))])
    a, b = store.get("a"), store.get("b")
    assert a is not None and b is not None
    assert "output_recommendations" not in a  # r2 does not hold a: nothing of r1 remains
    assert json.loads(b["output_recommendations"]) == ["y1", "y2"]
    store.set_meta({"clock_us": 7, "versions": {"recommendations": "r2"}})
    assert store.meta()["versions"] == {"recommendations": "r2"}
    assert store.meta()["clock_us"] == 7
