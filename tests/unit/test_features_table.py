"""The one definition of the time-relative features, on a state small enough to check by hand.

No JVM: this is the code the read path runs for one customer, and Spark runs per
partition (tests/spark/test_features.py checks the Spark route on the same rules).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa

from features.customer import features_table
from schemas.tables import LIVE_FEATURE_COLUMNS
from storage.state_rows import STATE_ARROW


def state(rows: list[dict]) -> pa.Table:
    schema = STATE_ARROW.remove(STATE_ARROW.get_field_index("max_event_time"))
    return pa.Table.from_pylist(rows, schema)


def day(d: str, n: int, spend: float) -> dict:
    return {"day": date.fromisoformat(d), "n_events": n, "n_purchases": n, "spend": spend,
            "n_online": 0, "n_with_channel": n}  # fmt: skip


# alice bought on Mar 1 (2 events, 30.0) and Mar 31 (1 event, 10.0), first on Jan 1;
# bob once, on Nov 1, and nothing since; carol has only a return (no purchase day).
ALICE = {
    "customer_id": "alice", "first_purchase_date": date(2020, 1, 1),
    "last_purchase_date": date(2020, 3, 31), "purchase_days": 3, "n_events": 4,
    "monetary": 60.0, "n_online": 1, "n_with_channel": 4,
    "history": [day("2020-03-01", 2, 30.0), day("2020-03-31", 1, 10.0)],
}  # fmt: skip
BOB = {
    "customer_id": "bob", "first_purchase_date": date(2019, 11, 1),
    "last_purchase_date": date(2019, 11, 1), "purchase_days": 1, "n_events": 1,
    "monetary": 6.0, "n_online": 0, "n_with_channel": 0, "history": [],
}  # fmt: skip
CAROL = {
    "customer_id": "carol", "first_purchase_date": None, "last_purchase_date": None,
    "purchase_days": 0, "n_events": 1, "monetary": -5.0, "n_online": 0,
    "n_with_channel": 1, "history": [],
}  # fmt: skip


def test_columns_and_types_are_the_live_feature_table() -> None:
    got = features_table(state([ALICE]), datetime(2020, 3, 31, 23, 0, tzinfo=UTC))
    assert got.column_names == list(LIVE_FEATURE_COLUMNS)


def test_values_by_hand_as_of_the_last_purchase_day() -> None:
    as_of = datetime(2020, 3, 31, 23, 0, tzinfo=UTC)
    a, b, c = features_table(state([ALICE, BOB, CAROL]), as_of).to_pylist()
    assert (a["recency_days"], a["tenure_days"], a["frequency"]) == (0, 90, 3)
    assert a["spend_per_purchase_day"] == 20.0
    assert (a["n_events_7d"], a["spend_7d"]) == (1, 10.0)  # Mar 25..31
    assert (a["n_events_30d"], a["spend_30d"]) == (1, 10.0)  # Mar 2..31: Mar 1 is outside
    assert (a["n_events_90d"], a["spend_90d"]) == (3, 40.0)
    assert a["mean_days_between"] == 45.0  # 90 days over 2 gaps
    assert a["days_overdue"] == -45.0
    assert a["activity_trend_30d"] == (1 - 2) / (1 + 2)  # Mar 1 is in the previous 30 days
    assert a["online_share"] == 0.25
    assert a["at_risk"] is False
    assert b["recency_days"] == 151 and b["at_risk"] is True  # one-off, > 90 days ago
    assert b["mean_days_between"] is None and b["online_share"] is None
    assert c["recency_days"] is None and c["spend_per_purchase_day"] is None
    assert c["at_risk"] is False and c["activity_trend_30d"] is None


def test_a_silent_customer_ages() -> None:
    """The same stored state read later: recency grows, windows empty, then at risk."""
    rows = state([ALICE])
    may = features_table(rows, datetime(2020, 5, 15, 12, 0, tzinfo=UTC)).to_pylist()[0]
    assert may["recency_days"] == 45
    assert (may["n_events_30d"], may["spend_30d"]) == (0, 0.0)  # Apr 16..May 15
    assert (may["n_events_90d"], may["spend_90d"]) == (3, 40.0)  # Feb 16..May 15
    assert may["activity_trend_30d"] == -1.0  # Mar 31 is in the previous 30 days
    assert may["at_risk"] is False  # 45 days is not yet twice the 45-day rhythm
    july = features_table(rows, datetime(2020, 7, 9, tzinfo=UTC)).to_pylist()[0]
    assert july["recency_days"] == 100 and july["at_risk"] is True
    assert july["n_events_90d"] == 0 and july["activity_trend_30d"] is None
