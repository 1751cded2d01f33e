"""The shared feature code on events small enough to check by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime

from pyspark.testing import assertDataFrameEqual

from features.customer import compute_features
from schemas.transaction import spark_schema

AS_OF = datetime(2020, 3, 31, 23, 59, 59, tzinfo=UTC)


def ev(i, day, customer, qty=1, price=10.0, channel=2):
    return (
        f"e{i}",
        datetime.fromisoformat(day).replace(tzinfo=UTC),
        customer,
        "0001",
        qty,
        price,
        channel,
        "synthetic",
        datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_features_by_hand(spark):
    events = spark.createDataFrame(
        [
            # alice: purchase days Jan 1, Mar 1, Mar 31 (two items), one return on Mar 31
            ev(1, "2020-01-01T10:00", "alice", price=20.0, channel=1),
            ev(2, "2020-03-01T10:00", "alice"),
            ev(3, "2020-03-31T09:00", "alice"),
            ev(4, "2020-03-31T09:00", "alice", price=5.0),
            ev(5, "2020-03-31T12:00", "alice", qty=-1, price=5.0),
            # bob: one purchase day long ago -> at risk; an event after as_of is ignored
            ev(6, "2019-11-01T00:00", "bob", qty=2, price=3.0, channel=None),
            ev(7, "2020-04-01T00:00", "bob"),
        ],
        spark_schema(),
    )
    got = compute_features(events, AS_OF).drop("as_of")
    expected = spark.createDataFrame(
        [
            # customer, first, last, recency, tenure, freq, n_tx, monetary, avg_basket,
            # n7, s7, n30, s30, n90, s90, mean_gap, online_share, overdue, trend, at_risk
            (
                "alice",
                date(2020, 1, 1),
                date(2020, 3, 31),
                0,
                90,
                3,
                5,
                40.0,
                40.0 / 3,
                3,
                10.0,
                3,
                10.0,
                4,
                20.0,
                45.0,
                0.8,
                -45.0,
                (3 - 1) / (3 + 1),
                False,
            ),
            (
                "bob",
                date(2019, 11, 1),
                date(2019, 11, 1),
                151,
                151,
                1,
                1,
                6.0,
                6.0,
                0,
                0.0,
                0,
                0.0,
                0,
                0.0,
                None,
                None,
                None,
                None,
                True,
            ),
        ],
        "customer_id string, first_purchase_date date, last_purchase_date date, "
        "recency_days int, tenure_days int, frequency long, n_events long, "
        "monetary double, spend_per_purchase_day double, n_events_7d long, spend_7d double, "
        "n_events_30d long, spend_30d double, n_events_90d long, "
        "spend_90d double, mean_days_between double, online_share double, "
        "days_overdue double, activity_trend_30d double, at_risk boolean",
    )
    assertDataFrameEqual(got, expected, checkRowOrder=False)
