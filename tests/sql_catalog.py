"""A small data root for the catalog tests (``pulse sql`` and its Spark views), made by
hand with pyarrow through the stores' own writers: no Spark, no retrain.

What it holds, small enough to check by eye:

- the lake: 10 events of customers c1..c4 over three January days, written through
  ``storage.lake.write_events`` in two commits (so two files share a day);
- ``customers`` (c1..c4, as ingest writes them) and ``articles`` (a1..a3);
- the registry: two versions, ``V1`` then ``V2``, of each model, with meta.json
  (metrics), each with its output tables as Spark writes them (a part file and
  ``_SUCCESS``); CURRENT is ``V2`` for every model;
- the live features and the customer view, one published snapshot each.

``INPUTS`` keeps the tables as written, for the tests' independent computations.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from upath import UPath

from runtime.settings import Settings
from storage import lake, registry, snapshots
from storage.objects import write_parquet

V1 = "20240110T000000000Z-aaaaaa"
V2 = "20240201T000000000Z-bbbbbb"


def _at(day: int, hour: int) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=UTC)


# (event id, day, hour, customer, article, quantity, unit price). e9 at 23:30 UTC is the
# 3rd in UTC (a local-time reading would move it).
EVENTS = [
    ("e1", 1, 9, "c1", "a1", 1, 10.0),
    ("e2", 1, 10, "c2", "a2", 2, 5.0),
    ("e3", 1, 11, "c1", "a3", 1, 7.5),
    ("e4", 2, 8, "c3", "a1", 1, 10.0),
    ("e5", 2, 12, "c1", "a1", 3, 10.0),
    ("e6", 2, 13, "c4", "a2", 1, 5.0),
    ("e7", 3, 1, "c2", "a3", 1, 7.5),
    ("e8", 3, 9, "c3", "a3", 2, 7.5),
    ("e9", 3, 23, "c4", "a1", 1, 9.0),
    ("e10", 2, 14, "c2", "a2", 1, 5.0),
]


def events() -> pa.Table:
    """The events as contract rows."""
    rows = [
        {
            "event_id": eid,
            "event_time": _at(day, hour).replace(minute=30 if eid == "e9" else 0),
            "customer_id": cust,
            "article_id": art,
            "quantity": qty,
            "unit_price": price,
            "sales_channel_id": 2,
            "source": "synthetic",
            "produced_at": None,
        }
        for eid, day, hour, cust, art, qty, price in EVENTS
    ]
    return pa.Table.from_pylist(rows, schema=lake.EVENT_ARROW_SCHEMA)


CUSTOMERS = pa.table(
    {
        "customer_id": ["c1", "c2", "c3", "c4"],
        "FN": [1.0, None, 1.0, None],
        "Active": [1.0, None, None, 1.0],
        "club_member_status": ["ACTIVE", "ACTIVE", "PRE-CREATE", None],
        "fashion_news_frequency": ["Regularly", "NONE", None, "Monthly"],
        "age": [31.0, 45.0, None, 22.0],
    }
)

ARTICLES = pa.table(
    {
        "article_id": ["a1", "a2", "a3"],
        "name": ["Tee", "Jeans", "Scarf"],
        "category": [
            "Ladieswear > Tops > T-shirt",
            "Menswear > Trousers > Jeans",
            "Ladieswear > Accessories > Scarf",
        ],  # fmt: skip
        "brand": [None, None, None],
        "price": [10.0, 5.0, 7.5],
    },
    schema=pa.schema(
        [
            (n, pa.string() if t == "string" else pa.float64())
            for n, t in lake.ARTICLE_COLUMNS.items()
        ]
    ),  # fmt: skip
)

# Spark writes the outputs' as_of as INT96, which Arrow reads without a zone: naive UTC.
AS_OF = {
    V1: datetime(2024, 1, 9, 23, 59, 59, 999999, tzinfo=UTC).replace(tzinfo=None),
    V2: datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC).replace(tzinfo=None),
}


def churn_scores(version: str) -> pa.Table:
    """Each version scores its customers differently (V1 knew only c1..c3)."""
    probabilities = {V1: {"c1": 0.10, "c2": 0.50, "c3": 0.90},
                     V2: {"c1": 0.20, "c2": 0.40, "c3": 0.70, "c4": 0.05}}[version]  # fmt: skip
    return pa.table(
        {
            "customer_id": list(probabilities),
            "as_of": pa.array([AS_OF[version]] * len(probabilities), pa.timestamp("us")),
            "churn_probability": list(probabilities.values()),
        }
    )


def value(version: str) -> pa.Table:
    """Expected spend in the churn horizon, per customer."""
    spend = {V1: {"c1": 20.0, "c2": 8.0, "c3": 4.0},
             V2: {"c1": 30.0, "c2": 6.0, "c3": 12.0, "c4": 2.0}}[version]  # fmt: skip
    return pa.table(
        {
            "customer_id": list(spend),
            "as_of": pa.array([AS_OF[version]] * len(spend), pa.timestamp("us")),
            "expected_purchases": [s / 10 for s in spend.values()],
            "expected_spend": list(spend.values()),
            "p_alive": [0.9] * len(spend),
        }
    )


def recommendations(version: str) -> pa.Table:
    """Two ranks per customer, one row per (customer, rank), as the retrain writes them."""
    lists = {V1: {"c1": ["a2", "a3"], "c2": ["a1", "a3"]},
             V2: {"c1": ["a3", "a2"], "c2": ["a1", "a3"], "c3": ["a2", "a1"]}}[version]  # fmt: skip
    rows = [
        {"customer_id": c, "rank": r + 1, "article_id": a, "score": 1.0 / (r + 1), "source": "als"}
        for c, arts in lists.items()
        for r, a in enumerate(arts)
    ]
    schema = pa.schema([("customer_id", pa.string()), ("rank", pa.int32()),
                        ("article_id", pa.string()), ("score", pa.float64()),
                        ("source", pa.string())])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def segments(version: str) -> pa.Table:
    """Segment of each customer (V2 moves c3)."""
    ids = {V1: {"c1": 0, "c2": 1, "c3": 1}, V2: {"c1": 0, "c2": 1, "c3": 0, "c4": 2}}[version]
    names = {0: "Champions", 1: "At risk", 2: "New / Promising"}
    return pa.table(
        {
            "customer_id": list(ids),
            "segment_id": pa.array(list(ids.values()), pa.int32()),
            "segment_name": [names[i] for i in ids.values()],
        }
    )


def meta(model: str, version: str) -> dict[str, Any]:
    """A meta.json with nested and top-level metrics, as the retrains write them."""
    bump = 0.0 if version == V1 else 0.05
    metrics: dict[str, Any] = {
        "churn": {"stack": {"auc_roc": 0.70 + bump, "brier": 0.2}, "bgnbd": {"auc_roc": 0.68}},
        "recommendations": {"als": {"map@12": 0.03 + bump, "customers": 2},
                            "popularity": {"map@12": 0.02}},
        "segments": {"silhouette": 0.5 + bump, "silhouette_by_k": {"3": 0.4, "4": 0.5 + bump}},
    }[model]  # fmt: skip
    cutoff = "2024-01-10" if version == V1 else "2024-02-01"
    return {"model": model, "version": version, "metrics": metrics, "promoted": True,
            "window": {"cutoff_exclusive": cutoff}, "gate": {"passed": True}}  # fmt: skip


OUTPUTS = {
    "churn": {"churn_scores": churn_scores, "value": value},
    "recommendations": {"recommendations": recommendations},
    "segments": {"segments": segments},
}


def _write_spark_like(table: pa.Table, folder: UPath) -> None:
    """A Parquet folder as Spark leaves it: a part file and _SUCCESS (Spark's ``.crc``
    checksums are left out: Spark would check them; tests/unit/test_sql.py has its own)."""
    write_parquet(table, folder / "part-00000-x-c000.snappy.parquet")
    (folder / "_SUCCESS").write_bytes(b"")


def features() -> pa.Table:
    """A live feature snapshot's first columns, for the three customers it has seen."""
    return pa.table(
        {
            "customer_id": ["c1", "c2", "c3"],
            "as_of": pa.array([_at(3, 12)] * 3, pa.timestamp("us", tz="UTC")),
            "first_purchase_date": pa.array([date(2024, 1, 1)] * 3, pa.date32()),
            "frequency": pa.array([2, 3, 2], pa.int64()),
            "monetary": [57.5, 22.5, 25.0],
        }
    )


def view() -> pa.Table:
    """A customer view snapshot: features and scores, recommendations as a list."""
    return pa.table(
        {
            "customer_id": ["c1", "c2"],
            "as_of": pa.array([_at(3, 12)] * 2, pa.timestamp("us", tz="UTC")),
            "segment_name": ["Champions", "At risk"],
            "churn_probability": [0.2, None],
            "recommendations": pa.array([["a3", "a2"], []], pa.list_(pa.string())),
        }
    )


def build(settings: Settings) -> None:
    """Write the whole data root (module docstring) under ``settings.data_root``, on a
    disk or in an object store."""
    rows = events()
    lake.write_events(settings, rows.slice(0, 6), "test", 0)
    lake.write_events(settings, rows.slice(6), "test", 1)
    write_parquet(CUSTOMERS, lake.customers_dir(settings) / "customers-000000000001.parquet")
    write_parquet(ARTICLES, lake.articles_dir(settings) / "articles-000000000001.parquet")
    for version in (V1, V2):
        for model, tables in OUTPUTS.items():
            registry.write_meta(settings, model, version, meta(model, version))
            for table, make in tables.items():
                _write_spark_like(make(version), registry.output_path(settings, table, version))
    for model in OUTPUTS:
        registry.promote(settings, model, V2)

    def snapshot(table: pa.Table) -> Any:
        return lambda d: write_parquet(table, d / "part-00000.parquet")

    snapshots.publish(settings.features_dir, snapshot(features()))
    snapshots.publish(settings.serving_dir, snapshot(view()))


def listing(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): to prove nothing changed."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}
