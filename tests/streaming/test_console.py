"""`pulse stream --console`: each micro-batch prints the customers it updated, and what
it prints is Spark's ``compute_features`` over the events up to that batch's clock,
customer by customer (no model is served yet: churn and segment print as "-")."""

from __future__ import annotations

from datetime import UTC, datetime

from stream_helpers import event

from features.customer import compute_features
from schemas.transaction import FIELD_NAMES, spark_schema
from serving.console import COLUMNS, ConsoleSink, Fanout, _cell
from serving.live import LiveView
from storage.columnar_store import CustomerStateStore
from streaming.job import run

FIRST = [event("c1", "2020-09-01", 10.0), event("c2", "2020-09-02", 7.5),
         event("c3", "2020-09-10T12:00", 0.25)]  # fmt: skip
SECOND = [event("c2", "2020-09-11", 6.0, n=2), event("c4", "2020-09-11T08:00", 1.5)]


def _blocks(lines: list[str]) -> list[tuple[str, list[list[str]]]]:
    """Printed batches: (header, rows split into cells)."""
    out = []
    for text in lines:
        header, _, *rows = text.splitlines()
        out.append((header, [row.split() for row in rows]))
    return out


def _reversed(read):  # type: ignore[no-untyped-def]
    def reading(self, customer_ids=None):  # type: ignore[no-untyped-def]
        customers, days = read(self, customer_ids)
        return customers.take(list(range(customers.num_rows))[::-1]), days

    return reading


def test_each_batch_prints_its_customers_as_spark_computes_them(
    spark, stream_settings, file_topic, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    printed: list[str] = []
    live = LiveView(stream_settings, log=lambda _: None)
    sink = Fanout(live, ConsoleSink(stream_settings, rows=2, out=printed.append))
    # read out of id order, as the store may: the table is still by id
    monkeypatch.setattr(CustomerStateStore, "read", _reversed(CustomerStateStore.read))
    file_topic.send(FIRST, per_file=3)
    file_topic.send(SECOND, per_file=2)
    try:
        run(spark, stream_settings, until_idle=True, log=lambda _: None, sink=sink,
            raw=file_topic.stream(spark))  # fmt: skip
    finally:
        live.close()

    blocks = _blocks(printed)
    assert [h for h, _ in blocks] == [
        "-- batch 0: 3 customers updated, as of 2020-09-10 12:00:00Z (showing 2) --",
        "-- batch 1: 2 customers updated, as of 2020-09-11 08:00:00Z (all shown) --",
    ]
    seen: list[dict] = []
    for (_, rows), batch, clock in (
        (blocks[0], FIRST, datetime(2020, 9, 10, 12, tzinfo=UTC)),
        (blocks[1], SECOND, datetime(2020, 9, 11, 8, tzinfo=UTC)),
    ):
        seen += batch
        events = spark.createDataFrame(
            [tuple(e[n] for n in FIELD_NAMES) for e in seen], spark_schema()
        )
        expected = {r["customer_id"]: r.asDict() for r in
                    compute_features(events, clock).collect()}  # fmt: skip
        updated = sorted({e["customer_id"] for e in batch})[:2]
        assert [row[0] for row in rows] == updated
        for row in rows:
            want = expected[row[0]] | {"churn_probability": None, "value_at_risk": None,
                                       "segment_name": None}  # fmt: skip
            assert row == [_cell(want[key], width) for _, key, width in COLUMNS], row[0]
