"""Per-customer RFM and churn-signal features, defined once for both layers.

Three steps, each a pure DataFrame function:

1. ``daily_activity(events)``: one row per (customer_id, day) — the grain both
   layers agree on.
2. ``customer_state(daily, as_of)``: per customer, the *absolute* aggregates
   (totals, first/last purchase day) plus a bounded daily history of the last
   ``HISTORY_DAYS`` days before ``as_of``. This is exactly what the streaming
   job keeps in its state store; the batch layer derives it from the lake.
3. ``features_as_of(state, as_of)``: every time-relative value (recency,
   windows, overdue, trend, at_risk) computed as of ``as_of`` for every
   customer, so a customer who stops buying still ages.

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

from datetime import date, datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

WINDOWS = (7, 30, 90)
HISTORY_DAYS = 90  # enough for every window, including the previous 30 days for the trend
AT_RISK_MIN_RECENCY = 30  # days; and twice the customer's own rhythm
ONE_OFF_AT_RISK_RECENCY = 90  # single-purchase-day customers at risk after this

# One day of a customer's history: every ``daily_activity`` column, so the stream can
# replace a day it has seen before by subtracting the old values (streaming.state).
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


def _window_sum(field: str, lo: int, hi: int, as_of_day: Column) -> Column:
    """Sum of ``history[].field`` over days d with as_of_day - hi < d <= as_of_day - lo."""
    in_window = F.filter(
        "history",
        lambda h: (h["day"] > F.date_sub(as_of_day, hi)) & (h["day"] <= F.date_sub(as_of_day, lo)),
    )
    zero = F.lit(0).cast("long") if field == "n_events" else F.lit(0.0)
    return F.aggregate(F.transform(in_window, lambda h: h[field]), zero, lambda acc, x: acc + x)


def features_as_of(state: DataFrame, as_of: datetime | date | str) -> DataFrame:
    """State rows -> the live feature table as of ``as_of`` (one row per customer)."""
    as_of_col = _as_of_ts(as_of)
    as_of_day = F.to_date(as_of_col)
    recency = F.datediff(as_of_day, F.col("last_purchase_date"))
    tenure = F.datediff(as_of_day, F.col("first_purchase_date"))
    mean_gap = F.when(
        F.col("purchase_days") > 1,
        F.datediff("last_purchase_date", "first_purchase_date") / (F.col("purchase_days") - 1),
    )
    windows = {}
    for w in WINDOWS:
        windows[f"n_events_{w}d"] = _window_sum("n_events", 0, w, as_of_day)
        windows[f"spend_{w}d"] = _window_sum("spend", 0, w, as_of_day)
    n_30 = windows["n_events_30d"]
    n_prev_30 = _window_sum("n_events", 30, 60, as_of_day)
    overdue = recency - mean_gap
    at_risk = F.coalesce(
        F.when(
            F.col("purchase_days") >= 2,
            (recency >= AT_RISK_MIN_RECENCY) & (recency > 2 * mean_gap),
        ).when(F.col("purchase_days") == 1, recency > ONE_OFF_AT_RISK_RECENCY),
        F.lit(False),
    )
    return state.select(
        "customer_id",
        as_of_col.alias("as_of"),
        "first_purchase_date",
        "last_purchase_date",
        recency.alias("recency_days"),
        tenure.alias("tenure_days"),
        F.col("purchase_days").alias("frequency"),
        "n_events",
        "monetary",
        F.when(F.col("purchase_days") > 0, F.col("monetary") / F.col("purchase_days")).alias(
            "spend_per_purchase_day"
        ),
        *[c.alias(name) for name, c in windows.items()],
        mean_gap.cast("double").alias("mean_days_between"),
        F.when(F.col("n_with_channel") > 0, F.col("n_online") / F.col("n_with_channel")).alias(
            "online_share"
        ),
        overdue.cast("double").alias("days_overdue"),
        F.when(n_30 + n_prev_30 > 0, (n_30 - n_prev_30) / (n_30 + n_prev_30))
        .cast("double")
        .alias("activity_trend_30d"),
        at_risk.alias("at_risk"),
    )


def compute_features(events: DataFrame, as_of: datetime | date | str) -> DataFrame:
    """The batch path: contract events -> features as of ``as_of`` (events <= as_of count)."""
    upto = events.where(F.col("event_time") <= _as_of_ts(as_of))
    return features_as_of(customer_state(daily_activity(upto), as_of), as_of)
