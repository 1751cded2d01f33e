"""The speed layer's per-customer state: a keyed, transactional store (embedded SQLite).

Why a keyed store and not a table rewritten per micro-batch: a micro-batch must cost
what it touches. Each batch upserts only the customers and customer-days its events
touch, in one transaction, so 1.37M customers in state cost no more per batch than
84.5k.

What it holds (``features.customer.STATE_SCHEMA``, split in two tables):

- ``customers``: one row per customer, the *absolute* aggregates: first/last purchase
  day, purchase days, events, monetary, online and channel counts, latest event time;
- ``customer_days``: the per-(customer, UTC day) activity of the last ``HISTORY_DAYS``
  days before the stream clock (the windows, trend and overdue read it);
- ``seen``: the event ids of the days that can still change (within the allowed
  lateness), so a re-sent event is counted once;
- ``batch_duplicates``: the ids the last batch found seen before, so a replay of
  that batch writes the lake exactly as the first attempt did;
- ``meta``: the last applied batch id and the stream clock.

Exactly once: ``apply_batch`` commits the batch's effect and its batch id in one
transaction and skips a batch id it has applied already, so a micro-batch that Spark
replays after a crash (same offsets, same events) is folded once.

Time semantics: the stream clock is the latest accepted event time, robust to
outliers (see ``robust_clock``); an event older than ``clock - allowed lateness``
(the clock before its batch, like Spark's watermark) is *late*: not folded here,
but kept in the lake for the batch layer. Days are UTC calendar days, stored as days
since 1970-01-01; times as microseconds since the epoch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from features.customer import DAY_COLUMNS, HISTORY_DAYS, STATE_SCHEMA

EPOCH = date(1970, 1, 1)
US_PER_DAY = 86_400_000_000
# An event more than this beyond both the batch's median event time and the current
# clock cannot move the clock (``robust_clock``).
CLOCK_OUTLIER = timedelta(days=30)

# Columns of the events handed to ``apply_batch`` (contract names).
EVENT_COLUMNS = (
    "event_id",
    "customer_id",
    "event_time",
    "quantity",
    "unit_price",
    "sales_channel_id",
)
# The customers table: STATE_SCHEMA's scalar columns, then the latest event time.
TOTAL_COLUMNS = (
    *(f.name for f in STATE_SCHEMA if f.name not in ("customer_id", "history")),
    "max_event_time",
)
DAY_VALUE_COLUMNS = tuple(c for c in DAY_COLUMNS if c != "day")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY,
    first_purchase_date INTEGER, last_purchase_date INTEGER,
    purchase_days INTEGER NOT NULL, n_events INTEGER NOT NULL, monetary REAL NOT NULL,
    n_online INTEGER NOT NULL, n_with_channel INTEGER NOT NULL,
    max_event_time INTEGER, batch_id INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS customer_days (
    customer_id TEXT NOT NULL, day INTEGER NOT NULL,
    {", ".join(f"{c} {'REAL' if c == 'spend' else 'INTEGER'} NOT NULL" for c in DAY_VALUE_COLUMNS)},
    PRIMARY KEY (customer_id, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS customer_days_by_day ON customer_days (day);
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, day INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_duplicates (
    batch_id INTEGER NOT NULL, event_id TEXT NOT NULL, PRIMARY KEY (batch_id, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_day ON seen (day);
"""


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


def day_number(d: date) -> int:
    """Days since 1970-01-01."""
    return (d - EPOCH).days


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch -> an aware UTC datetime."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def robust_clock(times_us: pa.Array, previous_us: int | None = None) -> int | None:
    """The latest event time of a batch that is not an outlier, or None.

    Events within ``CLOCK_OUTLIER`` after the previous clock count as they are (a
    replayed batch spans days, sparse data has gaps of weeks). A batch entirely
    beyond that is a jump, believed only when at least two events make it, and then
    only as far as ``CLOCK_OUTLIER`` past the batch's median. So one event dated
    years ahead (a bad clock, a typo) cannot age every customer.
    """
    outlier = CLOCK_OUTLIER // timedelta(microseconds=1)
    if previous_us is not None:
        near = pc.filter(times_us, pc.less_equal(times_us, previous_us + outlier))
        if len(near):
            return int(pc.max(near).as_py())
        if len(times_us) < 2:
            return None
    if len(times_us) == 0:
        return None
    median = int(pc.quantile(times_us, q=0.5, interpolation="lower")[0].as_py())
    return int(pc.max(pc.filter(times_us, pc.less_equal(times_us, median + outlier))).as_py())


class CustomerStateStore:
    """The per-customer state in one SQLite file; see the module docstring."""

    def __init__(self, path: Path, allowed_lateness_days: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lateness_us = allowed_lateness_days * US_PER_DAY
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a process kill
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.execute("PRAGMA cache_size=-262144")  # 256 MiB
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection (committed state is on disk)."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    @property
    def last_batch(self) -> int | None:
        """The id of the last applied micro-batch (-1 after seeding), or None."""
        return self._meta("last_batch")

    @property
    def clock_us(self) -> int | None:
        """The stream clock (microseconds since the epoch), or None before any event."""
        return self._meta("clock_us")

    def clock(self) -> datetime | None:
        """The stream clock as a UTC datetime, or None before any event."""
        us = self.clock_us
        return None if us is None else to_datetime(us)

    def customer_count(self) -> int:
        """Customers in the state."""
        return int(self._db.execute("SELECT count(*) FROM customers").fetchone()[0])

    def size_bytes(self) -> int:
        """Bytes on disk (database plus write-ahead log)."""
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))

    # --- the micro-batch fold ------------------------------------------------------------

    def apply_batch(self, batch_id: int, events: pa.Table) -> BatchResult:
        """Fold one micro-batch of valid events (``EVENT_COLUMNS``) into the state.

        In one transaction: drop ids seen before and events older than the watermark,
        add the rest to their customer-days and customers (a day's purchase status and
        the totals move by the new events only), advance the clock, forget days the
        watermark has passed, and record ``batch_id``. A batch id at or below the last
        applied one is skipped: Spark replays a batch with the same events.
        """
        with self._transaction() as db:
            last = self._meta("last_batch")
            if last is not None and batch_id <= last:
                recorded = db.execute(
                    "SELECT event_id FROM batch_duplicates WHERE batch_id = ?", (batch_id,)
                )
                return BatchResult(
                    batch_id,
                    applied=False,
                    clock_us=self._meta("clock_us"),
                    duplicate_ids=tuple(r[0] for r in recorded),
                )
            clock = self._meta("clock_us")
            watermark = None if clock is None else clock - self.lateness_us
            times = pc.cast(events.column("event_time"), pa.int64())
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS batch_events (event_id TEXT PRIMARY KEY,"
                " customer_id TEXT, day INTEGER, t INTEGER, purchase INTEGER, spend REAL,"
                " online INTEGER, with_channel INTEGER) WITHOUT ROWID"
            )
            db.execute("DELETE FROM batch_events")
            rows = _event_rows(events, times)
            # INSERT OR IGNORE keeps one row per event id: duplicates within the batch.
            db.executemany("INSERT OR IGNORE INTO batch_events VALUES (?,?,?,?,?,?,?,?)", rows)
            unique = db.execute("SELECT count(*) FROM batch_events").fetchone()[0]
            late = 0
            if watermark is not None:
                late = db.execute("DELETE FROM batch_events WHERE t < ?", (watermark,)).rowcount
            db.execute("DELETE FROM batch_duplicates")
            db.execute(
                "INSERT INTO batch_duplicates SELECT ?, event_id FROM batch_events"
                " WHERE event_id IN (SELECT event_id FROM seen)",
                (batch_id,),
            )
            duplicate_ids = tuple(r[0] for r in db.execute("SELECT event_id FROM batch_duplicates"))
            seen_before = db.execute(
                "DELETE FROM batch_events WHERE event_id IN (SELECT event_id FROM seen)"
            ).rowcount
            db.execute("INSERT INTO seen SELECT event_id, day FROM batch_events")
            counted = unique - late - seen_before
            touched = self._fold(db, batch_id)
            in_time = pc.filter(times, pc.greater_equal(times, watermark or -(2**62)))
            candidate = robust_clock(in_time, clock)
            if candidate is not None and (clock is None or candidate > clock):
                clock = candidate
                db.execute(
                    "INSERT INTO meta VALUES ('clock_us', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (clock,),
                )
            if clock is not None:
                self._forget(db, clock)
            db.execute(
                "INSERT INTO meta VALUES ('last_batch', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (batch_id,),
            )
        return BatchResult(
            batch_id,
            applied=True,
            events=len(events),
            counted=counted,
            duplicates=len(events) - unique + seen_before,
            late=late,
            touched=touched,
            clock_us=clock,
            duplicate_ids=duplicate_ids,
        )

    @staticmethod
    def _fold(db: sqlite3.Connection, batch_id: int) -> int:
        """Add ``batch_events`` to customer_days and customers; returns customers touched."""
        db.execute("DROP TABLE IF EXISTS temp.batch_days")
        db.execute(
            "CREATE TEMP TABLE batch_days AS SELECT b.customer_id, b.day,"
            " count(*) AS n_events, sum(b.purchase) AS n_purchases, sum(b.spend) AS spend,"
            " sum(b.online) AS n_online, sum(b.with_channel) AS n_with_channel,"
            " max(b.t) AS max_t,"
            # a purchase day is new when the day had no purchase before this batch
            " (sum(b.purchase) > 0 AND coalesce(d.n_purchases, 0) = 0) AS new_purchase_day"
            " FROM batch_events b LEFT JOIN customer_days d"
            " ON d.customer_id = b.customer_id AND d.day = b.day"
            " GROUP BY b.customer_id, b.day"
        )
        db.execute(
            "INSERT INTO customer_days SELECT customer_id, day, n_events, n_purchases, spend,"
            " n_online, n_with_channel FROM batch_days WHERE true"
            " ON CONFLICT(customer_id, day) DO UPDATE SET"
            " n_events = n_events + excluded.n_events,"
            " n_purchases = n_purchases + excluded.n_purchases,"
            " spend = spend + excluded.spend, n_online = n_online + excluded.n_online,"
            " n_with_channel = n_with_channel + excluded.n_with_channel"
        )
        return db.execute(
            "INSERT INTO customers SELECT customer_id,"
            " min(CASE WHEN n_purchases > 0 THEN day END),"
            " max(CASE WHEN n_purchases > 0 THEN day END),"
            " sum(new_purchase_day), sum(n_events), sum(spend), sum(n_online),"
            " sum(n_with_channel), max(max_t), ? FROM batch_days WHERE true GROUP BY customer_id"
            " ON CONFLICT(customer_id) DO UPDATE SET"
            # SQLite's two-argument min/max return NULL if either side is NULL
            " first_purchase_date = coalesce(min(first_purchase_date,"
            "   excluded.first_purchase_date), first_purchase_date, excluded.first_purchase_date),"
            " last_purchase_date = coalesce(max(last_purchase_date, excluded.last_purchase_date),"
            "   last_purchase_date, excluded.last_purchase_date),"
            " purchase_days = purchase_days + excluded.purchase_days,"
            " n_events = n_events + excluded.n_events,"
            " monetary = monetary + excluded.monetary,"
            " n_online = n_online + excluded.n_online,"
            " n_with_channel = n_with_channel + excluded.n_with_channel,"
            " max_event_time = coalesce(max(max_event_time, excluded.max_event_time),"
            "   max_event_time, excluded.max_event_time),"
            " batch_id = excluded.batch_id",
            (batch_id,),
        ).rowcount

    def _forget(self, db: sqlite3.Connection, clock_us: int) -> None:
        """Drop what no read or later batch needs: days out of the history, old ids."""
        clock_day = clock_us // US_PER_DAY
        db.execute("DELETE FROM customer_days WHERE day <= ?", (clock_day - HISTORY_DAYS,))
        db.execute("DELETE FROM seen WHERE day < ?", ((clock_us - self.lateness_us) // US_PER_DAY,))

    # --- bulk load and reads -------------------------------------------------------------

    def load(self, customers: pa.Table, days: pa.Table, clock_us: int, batch_id: int) -> int:
        """Replace the whole state (seeding from the lake, or a batch-layer correction).

        ``customers``: customer_id plus ``TOTAL_COLUMNS`` with dates as day numbers and
        ``max_event_time`` in microseconds; ``days``: customer_id plus ``DAY_COLUMNS``
        (day as a day number). Returns the number of customers loaded.
        """
        with self._transaction() as db:
            for table in ("customers", "customer_days", "seen"):
                db.execute(f"DELETE FROM {table}")
            cust_cols = ["customer_id", *TOTAL_COLUMNS]
            db.executemany(
                f"INSERT INTO customers VALUES ({', '.join('?' * len(cust_cols))}, ?)",
                ((*row, batch_id) for row in _rows(customers, cust_cols)),
            )
            day_cols = ["customer_id", *DAY_COLUMNS]
            db.executemany(
                f"INSERT INTO customer_days VALUES ({', '.join('?' * len(day_cols))})",
                _rows(days, day_cols),
            )
            for key, value in (("clock_us", clock_us), ("last_batch", batch_id)):
                db.execute(
                    "INSERT INTO meta VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            self._forget(db, clock_us)
        return len(customers)

    def read(self, customer_ids: list[str] | None = None) -> tuple[pa.Table, pa.Table]:
        """(customers, customer_days) as Arrow tables, for all customers or the given ones.

        Dates are day numbers and ``max_event_time`` microseconds, as stored; see
        ``streaming.state`` for the conversion to ``STATE_SCHEMA``.
        """
        cust_cols = ["customer_id", *TOTAL_COLUMNS]
        day_cols = ["customer_id", *DAY_COLUMNS]
        if customer_ids is None:
            cust = self._db.execute(f"SELECT {', '.join(cust_cols)} FROM customers")
            customers = _table(cust.fetchall(), cust_cols)
            days = _table(
                self._db.execute(f"SELECT {', '.join(day_cols)} FROM customer_days").fetchall(),
                day_cols,
            )
            return customers, days
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (customer_id TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM wanted")
        self._db.executemany(
            "INSERT OR IGNORE INTO wanted VALUES (?)", ((c,) for c in customer_ids)
        )
        select = ", ".join(f"t.{c}" for c in cust_cols)
        customers = _table(
            self._db.execute(
                f"SELECT {select} FROM customers t JOIN wanted USING (customer_id)"
            ).fetchall(),
            cust_cols,
        )
        select = ", ".join(f"t.{c}" for c in day_cols)
        days = _table(
            self._db.execute(
                f"SELECT {select} FROM customer_days t JOIN wanted USING (customer_id)"
            ).fetchall(),
            day_cols,
        )
        return customers, days

    def touched_in(self, batch_id: int) -> list[str]:
        """The customers whose state the given batch changed last."""
        rows = self._db.execute("SELECT customer_id FROM customers WHERE batch_id = ?", (batch_id,))
        return [r[0] for r in rows]


_ARROW_TYPES = {
    "customer_id": pa.string(),
    "first_purchase_date": pa.int64(),
    "last_purchase_date": pa.int64(),
    "day": pa.int64(),
    "spend": pa.float64(),
    "monetary": pa.float64(),
}


def _table(rows: list[tuple], columns: list[str]) -> pa.Table:  # type: ignore[type-arg]
    arrays = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    return pa.table(
        {
            c: pa.array(a, type=_ARROW_TYPES.get(c, pa.int64()))
            for c, a in zip(columns, arrays, strict=True)
        }
    )


def _rows(table: pa.Table, columns: list[str]) -> Iterator[tuple]:  # type: ignore[type-arg]
    return zip(*[table.column(c).to_pylist() for c in columns], strict=True)


def _event_rows(events: pa.Table, times: pa.ChunkedArray) -> Iterator[tuple]:  # type: ignore[type-arg]
    """Per event: id, customer, day number, time, purchase flag, spend, online, has channel.

    The same arithmetic as ``features.customer.daily_aggregations``, vectorised.
    """
    quantity = events.column("quantity")
    channel = events.column("sales_channel_id")
    columns = [
        events.column("event_id"),
        events.column("customer_id"),
        pc.cast(pc.cast(pc.cast(events.column("event_time"), pa.date32()), pa.int32()), pa.int64()),
        times,
        pc.cast(pc.greater(quantity, 0), pa.int64()),
        pc.multiply(pc.cast(quantity, pa.float64()), events.column("unit_price")),
        pc.cast(pc.fill_null(pc.equal(channel, 2), False), pa.int64()),
        pc.cast(pc.is_valid(channel), pa.int64()),
    ]
    return zip(*[c.to_pylist() for c in columns], strict=True)
