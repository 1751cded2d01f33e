"""Per-customer RFM and churn-signal features, defined once for both layers.

Three steps, each a pure function:

1. ``daily_activity(events)``: one row per (customer_id, day) — the grain both
   layers agree on.
2. ``customer_state(daily, as_of)``: per customer, the *absolute* aggregates
   (totals, first/last purchase day) plus a bounded daily history of the last
   ``HISTORY_DAYS`` days before ``as_of``. This is exactly what the streaming
   job keeps in its state store; the batch layer derives it from the lake.
3. ``features_table(state, as_of)``: every time-relative value (recency,
   windows, overdue, trend, at_risk) computed as of ``as_of`` for every
   customer, so a customer who stops buying still ages. It is written once, in
   Arrow and NumPy: Spark runs it per partition (``features_as_of``), the stream's
   snapshot over its whole store, and a look-up on one customer's stored state.

Counts say what they count: ``n_events`` (and ``n_events_7d`` ...) counts contract
events, returns included (an H&M row is one unit; an Online Retail row is an invoice
line); ``frequency`` counts purchase days; ``spend_per_purchase_day`` is monetary /
frequency (there is no basket id in H&M, so a day's purchases stand in for a basket).

Time semantics: ``as_of`` is a UTC timestamp; events with ``event_time <= as_of``
count. Days are UTC calendar days; "the trailing 7 days" are the 7 days ending
on ``as_of``'s day, inclusive. A purchase is an event with quantity > 0; returns
(quantity < 0) reduce monetary and the window spend but are not purchase days.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

WINDOWS = (7, 30, 90)
HISTORY_DAYS = 90  # enough for every window, including the previous 30 days for the trend
AT_RISK_MIN_RECENCY = 30  # days; and twice the customer's own rhythm
ONE_OFF_AT_RISK_RECENCY = 90  # single-purchase-day customers at risk after this

# One day of a customer's history: every ``daily_activity`` column, so the stream can
# replace a day it has seen before by subtracting the old values (storage.columnar_store).
DAY_STRUCT = T.StructType(
    [
        T.StructField("day", T.DateType(), True),
        T.StructField("n_events", T.LongType(), True),
        T.StructField("n_purchases", T.LongType(), True),
        T.StructField("spend", T.DoubleType(), True),
        T.StructField("n_online", T.LongType(), True),
        T.StructField("n_with_channel", T.LongType(), True),
    ]
)
DAY_COLUMNS = tuple(f.name for f in DAY_STRUCT)

STATE_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), False),
        T.StructField("first_purchase_date", T.DateType(), True),
        T.StructField("last_purchase_date", T.DateType(), True),
        T.StructField("purchase_days", T.LongType(), False),
        T.StructField("n_events", T.LongType(), False),
        T.StructField("monetary", T.DoubleType(), False),
        T.StructField("n_online", T.LongType(), False),
        T.StructField("n_with_channel", T.LongType(), False),
        T.StructField("history", T.ArrayType(DAY_STRUCT, False), False),
    ]
)


def _as_of_ts(as_of: datetime | date | str) -> Column:
    if isinstance(as_of, datetime):
        return F.lit(as_of).cast("timestamp")
    if isinstance(as_of, date):
        return F.lit(as_of.isoformat()).cast("timestamp")
    return F.lit(as_of).cast("timestamp")


def daily_activity(events: DataFrame) -> DataFrame:
    """Events (contract columns) -> one row per customer and UTC day.

    Columns: customer_id, day, n_events, n_purchases, spend, n_online, n_with_channel.
    """
    return events.groupBy("customer_id", F.to_date("event_time").alias("day")).agg(
        *daily_aggregations()
    )


def daily_aggregations() -> list[Column]:
    """The customer-day aggregate columns, shared with the stream's stateful aggregation."""
    return [
        F.count(F.lit(1)).alias("n_events"),
        F.count(F.when(F.col("quantity") > 0, True)).alias("n_purchases"),
        F.sum(F.col("quantity") * F.col("unit_price")).alias("spend"),
        F.count(F.when(F.col("sales_channel_id") == 2, True)).alias("n_online"),
        F.count("sales_channel_id").alias("n_with_channel"),
    ]


def day_row(col) -> Column:  # type: ignore[no-untyped-def]
    """A ``DAY_STRUCT`` value built from ``col(name)`` for each daily column."""
    return F.struct(*[col(f.name).cast(f.dataType).alias(f.name) for f in DAY_STRUCT])


def customer_state(daily: DataFrame, as_of: datetime | date | str) -> DataFrame:
    """Customer-day rows up to ``as_of`` -> one state row per customer (``STATE_SCHEMA``).

    The history holds the days in (as_of_day - HISTORY_DAYS, as_of_day], sorted by day.
    """
    as_of_day = F.to_date(_as_of_ts(as_of))
    upto = daily.where(F.col("day") <= as_of_day)
    recent = F.col("day") > F.date_sub(as_of_day, HISTORY_DAYS)
    day_struct = day_row(F.col)
    state = upto.groupBy("customer_id").agg(
        F.min(F.when(F.col("n_purchases") > 0, F.col("day"))).alias("first_purchase_date"),
        F.max(F.when(F.col("n_purchases") > 0, F.col("day"))).alias("last_purchase_date"),
        F.count(F.when(F.col("n_purchases") > 0, True)).cast("long").alias("purchase_days"),
        F.sum("n_events").cast("long").alias("n_events"),
        F.sum("spend").cast("double").alias("monetary"),
        F.sum("n_online").cast("long").alias("n_online"),
        F.sum("n_with_channel").cast("long").alias("n_with_channel"),
        F.array_sort(F.collect_list(F.when(recent, day_struct))).alias("history"),
    )
    return state.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in STATE_SCHEMA])


def compute_features(events: DataFrame, as_of: datetime | date | str) -> DataFrame:
    """The batch path: contract events -> features as of ``as_of`` (events <= as_of count)."""
    upto = events.where(F.col("event_time") <= _as_of_ts(as_of))
    return features_as_of(customer_state(daily_activity(upto), as_of), as_of)


# --- The time-relative features: one definition, in Arrow and NumPy -----------------------
# ``features_table`` is the only place recency, the windows, overdue, trend and at_risk
# are defined. Spark runs it per partition (``features_as_of``: ``mapInArrow``), the
# stream's scheduled snapshot runs it over its whole store, and a look-up runs it on one
# customer's stored state: so the batch layer, the stream and the read path agree by
# construction.

US_PER_DAY = 86_400_000_000


def as_of_micros(as_of: datetime | date | str) -> int:
    """``as_of`` as microseconds since the epoch, UTC (a date is its 00:00; naive is UTC)."""
    if isinstance(as_of, str):
        as_of = datetime.fromisoformat(as_of)
    if not isinstance(as_of, datetime):
        as_of = datetime.combine(as_of, datetime.min.time())
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return (as_of - _EPOCH_TS) // timedelta(microseconds=1)


_EPOCH_TS = datetime(1970, 1, 1, tzinfo=UTC)


def _days(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A date32 column -> (day numbers as int64 with 0 for null, the null mask)."""
    ints = pc.cast(column, pa.int32())
    valid = pc.is_valid(ints).to_numpy(zero_copy_only=False)
    return pc.fill_null(ints, 0).to_numpy(zero_copy_only=False).astype(np.int64), ~valid


def _num(column: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(dtype)


def features_table(state: pa.Table | pa.RecordBatch, as_of: datetime | date | str) -> pa.Table:
    """State rows (``STATE_SCHEMA``) -> the live features as of ``as_of``, one row each.

    The columns and types of ``schemas.tables.LIVE_FEATURE_COLUMNS``; ``as_of`` is
    UTC and its day is a UTC calendar day. A day of the history counts in the trailing
    w-day window when ``as_of_day - w < day <= as_of_day``.
    """
    n = state.num_rows
    as_of_us = as_of_micros(as_of)
    today = as_of_us // US_PER_DAY
    first, no_first = _days(state.column("first_purchase_date"))
    last, no_last = _days(state.column("last_purchase_date"))
    purchase_days = _num(state.column("purchase_days"), np.int64)
    n_events = _num(state.column("n_events"), np.int64)
    monetary = _num(state.column("monetary"), np.float64)
    n_online = _num(state.column("n_online"), np.int64)
    n_with_channel = _num(state.column("n_with_channel"), np.int64)

    history = state.column("history")
    if isinstance(history, pa.ChunkedArray):
        history = history.combine_chunks() if history.num_chunks else pa.array([], history.type)
    owner = pc.list_parent_indices(history).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(history)
    day, _ = _days(flat.field("day"))
    day_events = _num(flat.field("n_events"), np.float64)
    day_spend = _num(flat.field("spend"), np.float64)

    def window(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
        inside = (day > today - hi) & (day <= today - lo)
        # (bincount returns int64 zeros when nothing is inside: always float64 here)
        sums = np.bincount(owner[inside], weights=values[inside], minlength=n)
        return sums.astype(np.float64)

    recency = today - last
    tenure = today - first
    several = purchase_days > 1
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_gap = np.where(several, (last - first) / np.maximum(purchase_days - 1, 1), np.nan)
    cols: dict[str, pa.Array] = {
        "customer_id": state.column("customer_id"),
        "as_of": pa.array(np.full(n, as_of_us), pa.timestamp("us", tz="UTC")),
        "first_purchase_date": state.column("first_purchase_date"),
        "last_purchase_date": state.column("last_purchase_date"),
        "recency_days": pa.array(recency.astype(np.int32), mask=no_last),
        "tenure_days": pa.array(tenure.astype(np.int32), mask=no_first),
        "frequency": pa.array(purchase_days),
        "n_events": pa.array(n_events),
        "monetary": pa.array(monetary),
        "spend_per_purchase_day": pa.array(
            monetary / np.maximum(purchase_days, 1), mask=purchase_days <= 0
        ),
    }
    for w in WINDOWS:
        cols[f"n_events_{w}d"] = pa.array(window(day_events, 0, w).astype(np.int64))
        cols[f"spend_{w}d"] = pa.array(window(day_spend, 0, w))
    n_30 = window(day_events, 0, 30)
    n_prev_30 = window(day_events, 30, 60)
    overdue = recency - mean_gap
    at_risk = np.where(
        purchase_days >= 2,
        (recency >= AT_RISK_MIN_RECENCY) & (recency > 2 * mean_gap),
        (purchase_days == 1) & (recency > ONE_OFF_AT_RISK_RECENCY),
    )
    busy = n_30 + n_prev_30
    cols |= {
        "mean_days_between": pa.array(mean_gap, mask=~several),
        "online_share": pa.array(
            n_online / np.maximum(n_with_channel, 1), mask=n_with_channel <= 0
        ),
        "days_overdue": pa.array(overdue, mask=~several | no_last),
        "activity_trend_30d": pa.array((n_30 - n_prev_30) / np.maximum(busy, 1), mask=busy <= 0),
        "at_risk": pa.array(at_risk & ~no_last, pa.bool_()),
    }
    return pa.table(cols)


def features_as_of(state: DataFrame, as_of: datetime | date | str) -> DataFrame:
    """State rows -> the live feature table as of ``as_of`` (one row per customer).

    Spark runs ``features_table`` on each partition's Arrow batches.
    """
    from schemas.tables import live_features_schema

    as_of_us = as_of_micros(as_of)

    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from features_table(batch, _from_micros(as_of_us)).to_batches()

    columns = [f.name for f in STATE_SCHEMA]
    return state.select(*columns).mapInArrow(per_partition, live_features_schema())


def _from_micros(us: int) -> datetime:
    return _EPOCH_TS + timedelta(microseconds=us)
