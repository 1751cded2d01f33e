"""The speed layer's per-customer store: columnar in memory, a changelog on disk.

Why not a table rewritten per micro-batch, nor a B-tree: a micro-batch must cost what it
touches. The state lives in NumPy columns indexed by customer
(``storage.customer_columns``), and a batch is folded into the rows of the customers it
touches with vectorised arithmetic. Durability comes the way Spark's RocksDB store and
Kafka Streams get it: each batch appends a *changelog* (the touched customers' and
customer-days' new absolute values, the new event ids, the clock) named by its batch
id, and every ``SNAPSHOT_EVERY`` batches a full snapshot replaces the changelogs before
it (``storage.changelog``). Opening the store loads the newest snapshot and replays the
changelogs after it. (A first version kept the state in SQLite: 200k random-key upserts
into 1.37M customers took 5-10 s per batch, most of it rewriting B-tree pages.)

What it holds (``features.customer.STATE_SCHEMA``, in two parts):

- per customer, the *absolute* aggregates: first/last purchase day, purchase days,
  events, monetary, online and channel counts, latest event time;
- per (customer, UTC day), the activity of the last ``HISTORY_DAYS`` days before the
  stream clock (the windows, trend and overdue read it);
- the event ids of the days that can still change (within the allowed lateness), so
  a re-sent event is counted once.

Exactly once: a batch's changelog is written atomically, after the fold; the store
skips a batch id at or below the last one it holds, so a micro-batch that Spark
replays after a crash (same offsets, same events) is folded once, and the ids it
found seen before are recorded, so the replay writes the lake as the first attempt did.

Time semantics: the stream clock is the latest accepted event time, robust to outliers
(``storage.stream_clock.robust_clock``); an event older than ``clock - allowed
lateness`` (the clock before its batch, like Spark's watermark) is *late*: not folded
here, but kept in the lake for the batch layer. Days are UTC calendar days, counted
from 1970-01-01; times are microseconds since the epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from features.customer import HISTORY_DAYS
from storage.changelog import Changelog
from storage.customer_columns import (
    DAY_BITS,
    DAY_TYPES,
    DAY_VALUE_COLUMNS,
    NO_DAY,
    CustomerColumns,
)
from storage.seen_ids import SeenIds, id_hashes
from storage.stream_clock import US_PER_DAY, robust_clock, to_datetime

SNAPSHOT_EVERY = 50  # batches between full snapshots (each replaces its changelogs)
# An id is remembered while its day is within the allowed lateness, and also for an
# hour after it arrived, so a re-send of an old (late) event is not written twice; of
# those kept only for their arrival, the newest RESEND_MAX_IDS (a bulk load arrives
# millions an hour: without the cap, 31.8M ids filled 18 GB).
RESEND_WINDOW_US = 3600 * 1_000_000
RESEND_MAX_IDS = 500_000

# Columns of the events handed to ``apply_batch`` (contract names).
EVENT_COLUMNS = (
    "event_id",
    "customer_id",
    "event_time",
    "quantity",
    "unit_price",
    "sales_channel_id",
)


@dataclass(frozen=True)
class BatchResult:
    """What ``apply_batch`` did with one micro-batch."""

    batch_id: int
    applied: bool  # False: this batch id was applied before (a replay), nothing changed
    events: int = 0
    counted: int = 0  # new events folded into the state
    duplicates: int = 0  # event ids seen before (in this batch or an earlier one)
    late: int = 0  # older than the watermark: lake only
    touched: int = 0  # customers whose state changed
    clock_us: int | None = None  # the stream clock after the batch
    # ids of this batch seen in an earlier one (also on a replay: recorded at the time)
    duplicate_ids: tuple[str, ...] = ()
    touched_ids: tuple[str, ...] = ()  # the customers whose state changed
    # wall seconds per stage of the micro-batch (read, parse, state, lake), for its log
    stage_seconds: dict[str, float] = field(default_factory=dict)


class CustomerStateStore:
    """The per-customer state of the stream under ``directory``; see the module docstring."""

    def __init__(self, directory: UPath, allowed_lateness_days: int) -> None:
        self.dir = directory
        self.lateness_us = allowed_lateness_days * US_PER_DAY
        self._changelog = Changelog(directory)
        self._reset()
        self._open()

    # --- state ---------------------------------------------------------------------------

    def _reset(self) -> None:
        self.last_batch: int | None = None
        self.clock_us: int | None = None
        self._cols = CustomerColumns()
        self._seen = SeenIds()  # event id -> (day, arrival time)
        self._last_duplicates: tuple[str, ...] = ()

    def clock(self) -> datetime | None:
        """The stream clock as a UTC datetime, or None before any event."""
        return None if self.clock_us is None else to_datetime(self.clock_us)

    def customer_count(self) -> int:
        """Customers in the state."""
        return len(self._cols.ids)

    def size_bytes(self) -> int:
        """Bytes on disk (snapshot plus changelogs)."""
        return self._changelog.size_bytes()

    def close(self) -> None:
        """Nothing to flush: every applied batch is on disk already."""

    # --- the micro-batch fold ------------------------------------------------------------

    def apply_batch(self, batch_id: int, events: pa.Table) -> BatchResult:
        """Fold one micro-batch of valid events (``EVENT_COLUMNS``) into the state.

        Drops ids seen before and events older than the watermark, adds the rest to
        their customer-days and customers (a day's purchase status and the totals move
        by the new events only), advances the clock, forgets days the watermark has
        passed, and appends the batch's changelog. A batch id at or below the last
        applied one is skipped: Spark replays a batch with the same events.
        """
        if self.last_batch is not None and batch_id <= self.last_batch:
            recorded = self._last_duplicates if batch_id == self.last_batch else ()
            return BatchResult(
                batch_id, applied=False, clock_us=self.clock_us, duplicate_ids=recorded
            )
        # Per-id work is C-level iteration (map, compress, zip) over one list of ids: a
        # Python loop per event cost more than the arithmetic of the whole fold.
        n = len(events)
        id_column = pc.cast(events.column("event_id").combine_chunks(), pa.string())
        ids = id_column.to_numpy(zero_copy_only=False)
        hashes = id_hashes(ids)
        times = pc.cast(events.column("event_time"), pa.int64()).to_numpy(zero_copy_only=False)
        ordered = np.sort(hashes)
        if not (ordered[1:] == ordered[:-1]).any():  # distinct hashes: distinct ids
            in_batch_dup = np.zeros(n, bool)
        else:
            in_batch_dup = pd.Series(ids).duplicated().to_numpy()
        watermark = None if self.clock_us is None else self.clock_us - self.lateness_us
        late = times < watermark if watermark is not None else np.zeros(n, bool)
        seen_before = self._seen.contains(ids, hashes) & ~in_batch_dup
        first_seen = ~in_batch_dup & ~seen_before  # late ones too: the lake keeps them
        counted = first_seen & ~late
        duplicate_ids = tuple(ids[seen_before].tolist())

        days = (times // US_PER_DAY).astype(np.int64)
        new_ids = id_column.filter(pa.array(first_seen))
        new_days = days[first_seen]
        now = time.time_ns() // 1000
        self._seen.add(new_ids, hashes[first_seen], new_days, now)

        touched_rows, touched_keys = self._fold(events, counted, times, days)
        candidate = robust_clock(times[~late], self.clock_us)
        if candidate is not None and (self.clock_us is None or candidate > self.clock_us):
            self.clock_us = candidate
        self._forget()
        self.last_batch = batch_id
        self._last_duplicates = duplicate_ids
        self._write_changelog(batch_id, touched_rows, touched_keys, new_ids, new_days, now)
        if (batch_id + 1) % SNAPSHOT_EVERY == 0:
            self.write_snapshot()
        return BatchResult(
            batch_id,
            applied=True,
            events=n,
            counted=int(counted.sum()),
            duplicates=int(in_batch_dup.sum() + seen_before.sum()),
            late=int((late & first_seen).sum()),
            touched=len(touched_rows),
            clock_us=self.clock_us,
            duplicate_ids=duplicate_ids,
            touched_ids=tuple(map(self._cols.ids.__getitem__, touched_rows.tolist())),
        )

    def _fold(
        self, events: pa.Table, counted: np.ndarray, times: np.ndarray, days: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the counted events to their customer-days and customers.

        The same arithmetic as ``features.customer.daily_aggregations``. Returns the
        touched customer rows and customer-day keys.
        """
        if not counted.any():
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        cols = self._cols
        mask = pa.array(counted)
        quantity = events.column("quantity").filter(mask).to_numpy(zero_copy_only=False)
        price = events.column("unit_price").filter(mask).to_numpy(zero_copy_only=False)
        channel = events.column("sales_channel_id").filter(mask)
        rows = cols.rows_for(events.column("customer_id").filter(mask).to_pylist())
        keys = (rows << DAY_BITS) | days[counted]
        batch_keys, inverse = np.unique(keys, return_inverse=True)
        per_event = {
            "n_events": np.ones(len(rows), np.int64),
            "n_purchases": (quantity > 0).astype(np.int64),
            "spend": quantity.astype(np.float64) * price,
            "n_online": pc.fill_null(pc.equal(channel, 2), False).to_numpy(zero_copy_only=False),
            "n_with_channel": pc.is_valid(channel).to_numpy(zero_copy_only=False),
        }
        delta = {
            c: np.bincount(inverse, weights=v, minlength=len(batch_keys)).astype(
                DAY_TYPES.get(c, np.int64)
            )
            if c != "spend"
            else np.bincount(inverse, weights=v, minlength=len(batch_keys))
            for c, v in per_event.items()
        }
        max_t = np.full(len(batch_keys), np.iinfo(np.int64).min)
        np.maximum.at(max_t, inverse, times[counted])

        # Customer-days: add to the existing ones, insert the new ones (keys stay sorted).
        pos = np.searchsorted(cols.day_keys, batch_keys)
        exists = pos < len(cols.day_keys)
        exists[exists] = cols.day_keys[pos[exists]] == batch_keys[exists]
        old_purchases = np.zeros(len(batch_keys), np.int64)
        old_purchases[exists] = cols.days["n_purchases"][pos[exists]]
        new_purchase_day = (delta["n_purchases"] > 0) & (old_purchases == 0)
        for c in DAY_VALUE_COLUMNS:
            cols.days[c][pos[exists]] += delta[c][exists]
        fresh = ~exists
        if fresh.any():
            at = pos[fresh]
            cols.day_keys = np.insert(cols.day_keys, at, batch_keys[fresh])
            for c in DAY_VALUE_COLUMNS:
                cols.days[c] = np.insert(cols.days[c], at, delta[c][fresh])

        # Customers: the batch-days summed per customer.
        day_rows = batch_keys >> DAY_BITS
        day_of = (batch_keys & ((1 << DAY_BITS) - 1)).astype(np.int32)
        touched, per_row = np.unique(day_rows, return_inverse=True)
        t = cols.totals.data
        for total, source in (
            ("n_events", delta["n_events"]),
            ("monetary", delta["spend"]),
            ("n_online", delta["n_online"]),
            ("n_with_channel", delta["n_with_channel"]),
            ("purchase_days", new_purchase_day.astype(np.int64)),
        ):
            t[total][touched] += np.bincount(
                per_row, weights=source, minlength=len(touched)
            ).astype(t[total].dtype)
        big = np.iinfo(np.int32).max
        bought = delta["n_purchases"] > 0
        first = np.full(len(touched), big, np.int32)
        np.minimum.at(first, per_row[bought], day_of[bought])
        last = np.full(len(touched), NO_DAY, np.int32)
        np.maximum.at(last, per_row[bought], day_of[bought])
        old_first = t["first_purchase_date"][touched]
        t["first_purchase_date"][touched] = np.where(
            old_first == NO_DAY, np.where(first == big, NO_DAY, first), np.minimum(old_first, first)
        )
        t["last_purchase_date"][touched] = np.maximum(t["last_purchase_date"][touched], last)
        latest = np.full(len(touched), np.iinfo(np.int64).min)
        np.maximum.at(latest, per_row, max_t)
        t["max_event_time"][touched] = np.maximum(t["max_event_time"][touched], latest)
        return touched, batch_keys

    def _forget(self) -> None:
        """Drop what no read or later batch needs: days out of the history, old ids."""
        if self.clock_us is None:
            return
        self._cols.keep_days_from(self.clock_us // US_PER_DAY - HISTORY_DAYS + 1)
        seen_from = (self.clock_us - self.lateness_us) // US_PER_DAY
        arrived_from = time.time_ns() // 1000 - RESEND_WINDOW_US
        seen = self._seen
        if not len(seen):
            return
        # Arrival order is roughly event-time order: while the first entry is still
        # kept and the set is not far over the cap, the pass is skipped.
        expired = seen.day[0] < seen_from and seen.arrived_us[0] < arrived_from
        if not expired and len(seen) <= 2 * RESEND_MAX_IDS:
            return
        in_window = seen.day >= seen_from
        recent = ~in_window & (seen.arrived_us >= arrived_from)
        kept_for_arrival = np.flatnonzero(recent)
        recent[kept_for_arrival[: max(0, len(kept_for_arrival) - RESEND_MAX_IDS)]] = False
        seen.keep(in_window | recent)  # the newest RESEND_MAX_IDS kept for their arrival

    # --- reads ---------------------------------------------------------------------------

    def read(self, customer_ids: list[str] | None = None) -> tuple[pa.Table, pa.Table]:
        """(customers, customer_days) as Arrow tables, for all customers or the given ones.

        Dates are day numbers (null for none) and ``max_event_time`` microseconds, as
        stored; ``storage.state_rows.state_table`` converts them to ``STATE_SCHEMA``.
        """
        rows = self._cols.rows_of(customer_ids)
        return self._cols.customers_table(rows), self._cols.days_table(rows)

    # --- persistence (``storage.changelog``) ---------------------------------------------

    def _write_changelog(
        self,
        batch_id: int,
        rows: np.ndarray,
        keys: np.ndarray,
        new_ids: pa.Array,
        new_days: np.ndarray,
        arrived_us: int,
    ) -> None:
        """The batch's effect, as absolute values."""
        self._changelog.write_changelog(
            batch_id,
            {
                "customers": self._cols.customers_table(rows),
                "days": self._cols.days_table_for_keys(keys),
                "seen": pa.table(
                    {
                        "event_id": new_ids,
                        "day": pa.array(new_days, pa.int64()),
                        "arrived_us": pa.array(np.full(len(new_ids), arrived_us), pa.int64()),
                    }
                ),
            },
            self._meta(),
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "batch_id": self.last_batch,
            "clock_us": self.clock_us,
            "duplicate_ids": list(self._last_duplicates),
        }

    def write_snapshot(self) -> None:
        """Write the whole state as one snapshot and drop the changelogs it covers."""
        if self.last_batch is None:
            return
        rows = np.arange(len(self._cols.ids))
        seen = self._seen.table()
        self._changelog.write_snapshot(
            self.last_batch,
            {
                "customers": self._cols.customers_table(rows),
                "days": self._cols.days_table(rows),
                "seen": seen,
            },
            self._meta(),
        )
        self._changelog.drop_covered(self.last_batch)

    def _open(self) -> None:
        """Load the newest snapshot, then replay the changelogs after it."""
        snapshot = self._changelog.newest_snapshot()
        if snapshot is not None:
            tables, meta = snapshot
            self._load_tables(tables["customers"], tables["days"], tables["seen"], meta)
        for batch_id in self._changelog.changelog_ids():
            if self.last_batch is not None and batch_id <= self.last_batch:
                continue
            tables, meta = self._changelog.read_changelog(batch_id)
            self._replay(tables, meta)

    def _load_tables(
        self, customers: pa.Table, days: pa.Table, seen: pa.Table, meta: dict[str, Any]
    ) -> None:
        self._reset()
        self._cols = CustomerColumns.from_tables(customers, days)
        self._seen = SeenIds.from_table(seen)
        self._apply_meta(meta)

    def _apply_meta(self, meta: dict[str, Any]) -> None:
        self.last_batch = meta["batch_id"]
        self.clock_us = meta["clock_us"]
        self._last_duplicates = tuple(meta.get("duplicate_ids", ()))

    def _replay(self, tables: dict[str, pa.Table], meta: dict[str, Any]) -> None:
        """Apply one changelog: overwrite its customers and customer-days, add its ids."""
        customers = tables["customers"]
        rows = self._cols.rows_for(customers.column("customer_id").to_pylist())
        self._cols.set_totals(rows, customers)
        self._cols.set_days(tables["days"])
        seen = tables["seen"]
        self._seen.extend(seen)
        self._apply_meta(meta)
        self._forget()

    def load(
        self,
        customers: pa.Table,
        days: pa.Table,
        clock_us: int,
        batch_id: int,
        keep_seen: bool = False,
    ) -> int:
        """Replace the whole state (seeding from the lake, or a batch-layer correction).

        ``customers``: customer_id plus ``storage.customer_columns.TOTAL_COLUMNS``
        (dates as day numbers, null for none; ``max_event_time`` in microseconds);
        ``days``: customer_id plus ``DAY_COLUMNS`` (day as a day number).
        ``keep_seen``: keep the event ids seen (a correction: a later re-send of them
        must still count once). Writes a snapshot; returns the customers.
        """
        seen = (self._seen if keep_seen else SeenIds()).table()
        self._load_tables(customers, days, seen, {"batch_id": batch_id, "clock_us": clock_us})
        self._forget()
        self._changelog.drop_changelogs()
        self.write_snapshot()
        return len(self._cols.ids)
