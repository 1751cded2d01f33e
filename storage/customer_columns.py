"""The columnar store's state in memory: NumPy columns indexed by customer, as Arrow tables.

``CustomerColumns`` holds what ``storage.columnar_store.CustomerStateStore`` folds
into (``features.customer.STATE_SCHEMA``, in two parts):

- per customer (a row, in order of first appearance), the *absolute* aggregates
  (``TOTAL_COLUMNS``): first/last purchase day (``NO_DAY`` for none), purchase days,
  events, monetary, online and channel counts, latest event time (microseconds);
- per (customer, UTC day), the day's activity (``DAY_VALUE_COLUMNS``), kept sorted by
  a customer-day key, ``row << DAY_BITS | day``.

Its reads give the store's two flat tables (``customers_table``, ``days_table``:
customer_id first, dates as day numbers since 1970-01-01, null for none), and its
writes (``from_tables``, ``set_totals``, ``set_days``) take the same tables back, with
absolute values: a snapshot, a changelog or a whole new state.
"""

from __future__ import annotations

from itertools import compress, repeat
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.customer import DAY_COLUMNS, STATE_SCHEMA

NO_DAY = -1  # a null first/last purchase day
DAY_BITS = 21  # a customer-day key is row << DAY_BITS | day (days < 2**21: year 7711)

# Per customer: STATE_SCHEMA's scalar columns, then the latest event time.
TOTAL_COLUMNS = (
    *(f.name for f in STATE_SCHEMA if f.name not in ("customer_id", "history")),
    "max_event_time",
)
DAY_VALUE_COLUMNS = tuple(c for c in DAY_COLUMNS if c != "day")
TOTAL_TYPES = {
    "first_purchase_date": np.int32,
    "last_purchase_date": np.int32,
    "monetary": np.float64,
}
DAY_TYPES = {"spend": np.float64}


class _Columns:
    """Growable NumPy columns of equal length."""

    def __init__(self, types: dict[str, Any]) -> None:
        self.types = types
        self.size = 0
        self.data = {name: np.zeros(1024, dtype=t) for name, t in types.items()}

    def grow(self, n: int) -> np.ndarray:
        """Append ``n`` zeroed rows; returns their row numbers."""
        need = self.size + n
        capacity = len(next(iter(self.data.values())))
        if need > capacity:
            new_cap = max(need, 2 * capacity)
            for name, col in self.data.items():
                bigger = np.zeros(new_cap, dtype=col.dtype)
                bigger[: self.size] = col[: self.size]
                self.data[name] = bigger
        rows = np.arange(self.size, need)
        self.size = need
        return rows

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name][: self.size]


class CustomerColumns:
    """Every customer's totals and recent customer-days; see the module docstring."""

    def __init__(self) -> None:
        self.ids: list[str] = []  # row -> customer_id
        self.row: dict[str, int] = {}  # customer_id -> row
        self.totals = _Columns({c: TOTAL_TYPES.get(c, np.int64) for c in TOTAL_COLUMNS})
        self.day_keys = np.zeros(0, dtype=np.int64)  # sorted: row << DAY_BITS | day
        self.days: dict[str, Any] = {
            c: np.zeros(0, dtype=DAY_TYPES.get(c, np.int64)) for c in DAY_VALUE_COLUMNS
        }

    @classmethod
    def from_tables(cls, customers: pa.Table, days: pa.Table) -> CustomerColumns:
        """The columns holding exactly ``customers`` (in order) and ``days``."""
        columns = cls()
        columns.ids = customers.column("customer_id").to_pylist()
        columns.row = {c: r for r, c in enumerate(columns.ids)}
        rows = columns.totals.grow(len(columns.ids))
        columns.set_totals(rows, customers)
        columns.set_days(days)
        return columns

    # --- reads ---------------------------------------------------------------------------

    def rows_of(self, customer_ids: list[str] | None) -> np.ndarray:
        """The rows of every customer (None), or of those of ``customer_ids`` held, sorted."""
        if customer_ids is None:
            return np.arange(len(self.ids))
        found = [self.row.get(c) for c in customer_ids]
        return np.array(sorted({r for r in found if r is not None}), dtype=np.int64)

    def customers_table(self, rows: np.ndarray) -> pa.Table:
        """customer_id and ``TOTAL_COLUMNS`` of ``rows``, in order."""
        cols: dict[str, pa.Array] = {
            "customer_id": pa.array(list(map(self.ids.__getitem__, rows.tolist())), pa.string())
        }
        for c in TOTAL_COLUMNS:
            values = self.totals[c][rows]
            if c in ("first_purchase_date", "last_purchase_date"):
                cols[c] = pa.array(values.astype(np.int64), mask=values == NO_DAY)
            else:
                cols[c] = pa.array(values)
        return pa.table(cols)

    def days_table(self, rows: np.ndarray) -> pa.Table:
        """customer_id, day and ``DAY_VALUE_COLUMNS`` of the customer-days of ``rows``."""
        key_rows = self.day_keys >> DAY_BITS
        if len(rows) == len(self.ids):
            pick = np.ones(len(self.day_keys), bool)
        else:
            pick = np.isin(key_rows, rows)
        return self._day_rows_table(np.flatnonzero(pick))

    def days_table_for_keys(self, keys: np.ndarray) -> pa.Table:
        """The customer-days of ``keys`` still held, as ``days_table``."""
        idx = np.searchsorted(self.day_keys, keys)
        found = idx < len(self.day_keys)
        found[found] = self.day_keys[idx[found]] == keys[found]
        return self._day_rows_table(idx[found])

    def _day_rows_table(self, idx: np.ndarray) -> pa.Table:
        keys = self.day_keys[idx]
        cols: dict[str, pa.Array] = {
            "customer_id": pa.array(
                list(map(self.ids.__getitem__, (keys >> DAY_BITS).tolist())), pa.string()
            ),
            "day": pa.array(keys & ((1 << DAY_BITS) - 1)),
        }
        for c in DAY_VALUE_COLUMNS:
            cols[c] = pa.array(self.days[c][idx])
        return pa.table(cols)

    # --- writes --------------------------------------------------------------------------

    def rows_for(self, customers: list[str]) -> np.ndarray:
        """Row numbers of ``customers``, appending the ones not seen before (in order)."""
        row, ids = self.row, self.ids
        out = np.fromiter(map(row.get, customers, repeat(-1)), np.int64, len(customers))
        missing = out < 0
        if missing.any():
            fresh = list(dict.fromkeys(compress(customers, missing)))  # first appearance
            row.update(zip(fresh, range(len(ids), len(ids) + len(fresh)), strict=True))
            ids.extend(fresh)
            out[missing] = np.fromiter(
                map(row.__getitem__, compress(customers, missing)), np.int64, int(missing.sum())
            )
            new_rows = self.totals.grow(len(fresh))
            for col in ("first_purchase_date", "last_purchase_date"):
                self.totals.data[col][new_rows] = NO_DAY
        return out

    def set_totals(self, rows: np.ndarray, customers: pa.Table) -> None:
        """Overwrite the totals of ``rows`` with ``customers``' (as ``customers_table``)."""
        for c in TOTAL_COLUMNS:
            col = customers.column(c)
            if c in ("first_purchase_date", "last_purchase_date"):
                col = pc.fill_null(col, NO_DAY)
            self.totals.data[c][rows] = col.to_numpy().astype(self.totals.data[c].dtype)

    def set_days(self, days: pa.Table) -> None:
        """Overwrite (or insert) customer-days given as customer_id, day and the values."""
        if not len(days):
            return
        rows = np.array([self.row[c] for c in days.column("customer_id").to_pylist()], np.int64)
        keys = (rows << DAY_BITS) | days.column("day").to_numpy().astype(np.int64)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        values = {
            c: days.column(c).to_numpy().astype(DAY_TYPES.get(c, np.int64))[order]
            for c in DAY_VALUE_COLUMNS
        }
        pos = np.searchsorted(self.day_keys, keys)
        exists = pos < len(self.day_keys)
        exists[exists] = self.day_keys[pos[exists]] == keys[exists]
        for c in DAY_VALUE_COLUMNS:
            self.days[c][pos[exists]] = values[c][exists]
        fresh = ~exists
        if fresh.any():
            self.day_keys = np.insert(self.day_keys, pos[fresh], keys[fresh])
            for c in DAY_VALUE_COLUMNS:
                self.days[c] = np.insert(self.days[c], pos[fresh], values[c][fresh])

    def keep_days_from(self, oldest_day: int) -> None:
        """Drop the customer-days before ``oldest_day`` (a day number)."""
        in_window = (self.day_keys & ((1 << DAY_BITS) - 1)) >= oldest_day
        if not in_window.all():
            self.day_keys = self.day_keys[in_window]
            self.days = {c: v[in_window] for c, v in self.days.items()}
