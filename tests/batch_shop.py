"""A tiny, deterministic shop in the contract's Arrow form, for the batch tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from schemas.transaction import make_event_id

START = datetime(2020, 1, 1, tzinfo=UTC)
DAYS = 120


class TableSource:
    """A stand-in for an adapter Source: yields the given Arrow tables."""

    name = "synthetic"

    def __init__(self, tables: list[pa.Table], customers_path: Path | None = None) -> None:
        self.tables = tables
        self.customers_path = customers_path

    def iter_batches(self, batch_rows: int = 100_000):  # noqa: ANN201
        yield from self.tables


def events_table(rows: list[tuple[int, str, str]], price: float = 1.0) -> pa.Table:
    """(day offset, customer, article) rows -> a contract Arrow table (ids deterministic)."""
    seen: dict[tuple, int] = {}
    cols: dict[str, list] = {
        k: []
        for k in (
            "event_id",
            "event_time",
            "customer_id",
            "article_id",
            "quantity",
            "unit_price",
            "sales_channel_id",
            "source",
            "produced_at",
        )
    }
    for day, customer, article in sorted(rows):
        n = seen.get((day, customer, article), 0)
        seen[(day, customer, article)] = n + 1
        cols["event_id"].append(make_event_id("synthetic", day, customer, article, n))
        cols["event_time"].append(START + timedelta(days=day))
        cols["customer_id"].append(customer)
        cols["article_id"].append(article)
        cols["quantity"].append(1)
        cols["unit_price"].append(price)
        cols["sales_channel_id"].append(2)
        cols["source"].append("synthetic")
        cols["produced_at"].append(None)
    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("event_time", pa.timestamp("us", tz="UTC")),
            ("customer_id", pa.string()),
            ("article_id", pa.string()),
            ("quantity", pa.int32()),
            ("unit_price", pa.float64()),
            ("sales_channel_id", pa.int32()),
            ("source", pa.string()),
            ("produced_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    return pa.table(cols, schema=schema)


def shop_rows() -> list[tuple[int, str, str]]:
    """40 customers over 120 days: 'loyal' ones buy their favourite articles every few days
    until the end; 'lapsing' ones stop after day 50. Hand-checkable by construction."""
    rows = []
    for c in range(40):
        customer = f"c{c:02d}"
        loyal = c % 2 == 0
        gap = 3 + c % 4
        last = DAYS - 1 if loyal else 50
        favourites = [f"a{(c + j) % 20:02d}" for j in range(3)]
        for i, day in enumerate(range(c % 5, last + 1, gap)):
            rows.append((day, customer, favourites[i % 3]))
            if i % 4 == 0:
                rows.append((day, customer, f"a{(c * 7 + i) % 20:02d}"))
    return rows
