"""The at-risk list, on both online stores: every customer evaluated as of the clock, ranked
by value at risk (or churn probability), ties by id; the same values their look-ups serve.

Records are hand-made states; the scorers are the bench's (a logistic stack over BG/NBD
and a K-Means), carried in the store's meta as the stream puts them there. The expected
list is the customers' own look-ups sorted in Python, so what is checked is the scan and
the ranking, chunk boundaries and ties included; what the look-ups serve is checked
against Spark ML in tests/integration/test_served_oracle.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from pulse.bench.view import bench_scorers
from runtime.settings import Settings
from serving import online, read
from serving.online import RECORD_COLUMNS, OnlineStore, open_store

DAY = 18_500  # the clock's day number
CLOCK_US = DAY * 86_400_000_000 + 3_600_000_000


def record(cid: str, last: int | None, days: int, monetary: float) -> tuple:
    """A customer whose first purchase was 200 days before the clock, the last ``last`` days."""
    values = {c: None for c in RECORD_COLUMNS}
    recent = [] if last is None or last >= 90 else [[DAY - last, 1, 1, monetary / days, 0, 1]]
    values |= {
        "customer_id": cid,
        "first_purchase_date": None if last is None else DAY - 200,
        "last_purchase_date": None if last is None else DAY - last,
        "purchase_days": days, "n_events": max(days, 1), "monetary": monetary, "n_online": 0,
        "n_with_channel": 1, "max_event_time": CLOCK_US,
        "history": str(recent).replace(" ", ""),
    }  # fmt: skip
    return tuple(values[c] for c in RECORD_COLUMNS)


RECORDS = [
    record(f"c{i:03d}", last=(i * 37) % 400, days=1 + i % 9, monetary=5.0 + (i * 13) % 97)
    for i in range(300)
] + [
    record("twin-b", last=120, days=2, monetary=40.0),  # the same state: the same scores,
    record("twin-a", last=120, days=2, monetary=40.0),  # so the smaller id first
    record("returns-only", last=None, days=0, monetary=-20.0),  # no churn probability
]


@pytest.fixture(params=["sqlite", "redis"])
def settings(request, settings: Settings) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    if request.param == "redis":
        url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/5"
        settings = settings.model_copy(update={"online_store": "redis", "redis_url": url})
    store: OnlineStore = open_store(settings)
    if request.param == "redis":
        store.r.flushdb()  # type: ignore[attr-defined]
    store.write_records(RECORDS)
    store.set_meta({"clock_us": CLOCK_US, "scorers": bench_scorers(),
                    "versions": {"churn": "bench", "segments": "bench"}})  # fmt: skip
    store.close()
    yield settings


def _lookups(settings: Settings) -> list[dict]:
    reader = read.open_reader(settings)
    try:
        return [read.lookup(settings, r[0], store=reader, with_value=True) for r in RECORDS]
    finally:
        reader.close()


def _expected(rows: list[dict], key: str, n: int) -> list[str]:
    ranked = sorted(
        (r for r in rows if r[key] is not None), key=lambda r: (-r[key], r["customer_id"])
    )
    return [r["customer_id"] for r in ranked[:n]]


@pytest.mark.parametrize("n", [1, 7, 40, 400])
def test_at_risk_ranks_every_customer_as_of_the_clock(
    settings: Settings, n: int, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(online, "_PIPELINE_ROWS", 3)  # SQLite reads 60 rows a chunk
    lookups = _lookups(settings)
    served = {r["customer_id"]: r for r in lookups}
    for by_probability, key in ((False, "value_at_risk"), (True, "churn_probability")):
        rows = read.at_risk(settings, n, by_probability=by_probability)
        assert [r["customer_id"] for r in rows] == _expected(lookups, key, n)
        for row in rows:  # each row is the customer's look-up
            assert {c: served[row["customer_id"]][c] for c in read.AT_RISK_COLUMNS} == row
    everyone = [r["customer_id"] for r in read.at_risk(settings, 1000)]
    assert len(everyone) == len(RECORDS) - 1 and "returns-only" not in everyone
    assert everyone.index("twin-a") + 1 == everyone.index("twin-b")


def test_a_batch_of_look_ups_is_each_customer_s_own(settings: Settings) -> None:
    """``read.view_rows`` (the API's batched look-ups) row by row equals ``view_row``,
    segments and recommendation lists included, whatever the batch's order."""
    import json

    store = open_store(settings)
    store.replace_output("segments", "s9", [
        (f"c{i:03d}", json.dumps({"segment_id": 7, "segment_name": "Kept"})) for i in range(10)
    ])  # fmt: skip
    store.replace_output("recommendations", "r9", [
        (f"c{i:03d}", json.dumps([f"a{i}", "b"])) for i in range(5, 15)
    ])  # fmt: skip
    store.set_meta({"versions": {"churn": "bench", "segments": "s9", "recommendations": "r9"},
                    "popular": ["p1", "p2"]})  # fmt: skip
    store.close()
    reader = read.open_reader(settings)
    try:
        meta = reader.meta()
        records = [reader.get(r[0]) for r in reversed(RECORDS)]
        batched = read.view_rows(records, meta)  # type: ignore[arg-type]
        assert list(batched) == [r["customer_id"] for r in records]  # type: ignore[index]
        for record in records:
            one = read.view_row(record, meta)  # type: ignore[arg-type]
            got = batched[one["customer_id"]]
            assert got.keys() == one.keys()
            for key, value in one.items():
                if isinstance(value, float):
                    assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
                else:
                    assert got[key] == value, key
        assert batched["c003"]["segment_name"] == "Kept"
        assert batched["c007"]["recommendations"] == ["a7", "b"]
        assert batched["c200"]["recommendations"] == ["p1", "p2"]
    finally:
        reader.close()


def test_a_silent_customer_ages_with_the_clock(settings: Settings) -> None:
    before = read.lookup(settings, "c001", with_value=True)
    store = open_store(settings)
    store.set_meta({"clock_us": CLOCK_US + 10 * 86_400_000_000})  # ten days, no purchase
    store.close()
    after = read.lookup(settings, "c001", with_value=True)
    assert after["recency_days"] == before["recency_days"] + 10
    assert after["churn_as_of"] == after["as_of"] != before["churn_as_of"]
    assert after["churn_probability"] != before["churn_probability"]
    assert after["expected_value"] < before["expected_value"]
    assert read.lookup(settings, "returns-only", with_value=True)["churn_probability"] is None


def test_no_churn_model_gives_no_list_and_null_scores(settings: Settings) -> None:
    store = open_store(settings)
    store.set_meta({"scorers": {"churn": None, "segments": None}, "versions": {}})
    store.close()
    assert read.at_risk(settings, 5) == []
    row = read.lookup(settings, "c001", with_value=True)
    assert (row["churn_probability"], row["expected_value"], row["segment_name"]) == (None,) * 3
    assert row["recency_days"] == 37


def test_a_store_written_with_stored_scores_serves_the_scorer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A store from before (scores stored per record) opens; its stale scores are not served."""
    s = Settings(data_root=tmp_path)
    path = s.online_store_path
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    cols = [*RECORD_COLUMNS[1:], "churn_probability", "expected_value"]
    db.execute(f"CREATE TABLE customer (customer_id TEXT PRIMARY KEY, {', '.join(cols)})")
    db.execute("CREATE TABLE output (kind TEXT, customer_id TEXT, value TEXT)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    marks = ", ".join("?" for _ in range(len(cols) + 1))
    db.execute(f"INSERT INTO customer VALUES ({marks})", (*RECORDS[1], 0.123, 456.0))
    db.commit()
    db.close()
    store = online.SqliteStore(path)
    store.set_meta({"clock_us": CLOCK_US, "scorers": bench_scorers(), "versions": {"churn": "b"}})
    store.close()
    row = read.lookup(s, "c001", with_value=True)
    assert row["churn_probability"] not in (None, 0.123) and row["expected_value"] != 456.0


def test_a_reader_never_sees_a_record_newer_than_its_clock(settings: Settings) -> None:
    """The stream writes each batch's records and clock in one transaction, and readers
    read a snapshot: while a writer thread moves one customer and the clock together,
    every look-up's record is exactly as new as its clock."""
    import threading

    writer = open_store(settings)
    stop = threading.Event()

    def write() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            row = record("c000", last=10, days=k, monetary=5.0)  # purchase_days = k
            writer.write_records([row], {"clock_us": CLOCK_US + k, "last_batch": k})

    thread = threading.Thread(target=write)
    thread.start()
    reader = read.open_reader(settings)
    try:
        seen = set()
        for _ in range(400):
            found, meta = reader.get_many(["c000", "c001"])
            if "last_batch" in meta:
                batch = meta["last_batch"]
                assert found["c000"]["purchase_days"] == batch == meta["clock_us"] - CLOCK_US
                seen.add(batch)
        assert len(seen) > 10  # the writer moved on while the reader read
    finally:
        stop.set()
        thread.join()
        reader.close()
        writer.close()
