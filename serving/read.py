"""Look-ups against the online store: one customer's view row, or the most value at risk.

``lookup`` is the function an application calls (``pulse view`` prints the same
record). It reads one key from the online store and evaluates the features that age as
of the stream clock with the one feature definition (``features.customer.features_table``),
then assembles the row exactly as the Parquet snapshot does (``serving.view.assemble``).
No Spark, no scan: the cost of one look-up does not depend on the customer count.

    from runtime.settings import load_settings
    from serving.read import lookup
    row = lookup(load_settings(), "customer-42")   # dict: features, segment, churn, recs

Time semantics: ``as_of`` is the stream clock at the last micro-batch the store holds
(the latest event time the stream accepted); ``churn_as_of`` is the clock the churn
score was computed at (its last batch, or the last full snapshot).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from features.customer import features_table
from runtime.errors import PulseError
from runtime.settings import Settings
from serving.online import SCORE_COLUMNS, OnlineStore, open_store
from serving.view import RECS_TABLE, SCORED, SEGMENT_TABLE, ModelOutputs, assemble
from storage.state_table import state_from_record

AT_RISK_COLUMNS = (
    "customer_id",
    "value_at_risk",
    "expected_value",
    "churn_probability",
    "churn_as_of",
    "recency_days",
    "frequency",
    "monetary",
    "segment_name",
    "at_risk",
    "as_of",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def open_reader(settings: Settings) -> OnlineStore:
    """The online store for reading; PulseError when the stream has not written one yet."""
    return open_store(settings, readonly=True)


def lookup(
    settings: Settings,
    customer_id: str,
    store: OnlineStore | None = None,
    with_value: bool = False,
) -> dict[str, Any]:
    """One customer's view row as a dict; PulseError if the customer is unknown.

    Pass an open ``store`` (``open_reader``) to look up many customers on one connection.
    ``with_value``: add ``expected_value`` (the record's expected spend in the churn
    horizon; not a column of the Parquet view, whose schema is ``schemas.tables``').
    """
    own = store is None
    reader = open_reader(settings) if store is None else store
    try:
        record = reader.get(customer_id)
        if record is None:
            raise PulseError(f"unknown customer {customer_id!r} (not in the online store)")
        row = view_row(record, reader.meta())
        if with_value:
            row["expected_value"] = record.get("expected_value")
        return row
    finally:
        if own:
            reader.close()


def view_row(record: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """An online-store record + the store's meta -> the customer's view row."""
    if "clock_us" not in meta:
        raise PulseError("the online store has no stream clock yet (no batch written)")
    features = features_table(state_from_record(record), _time(meta["clock_us"]))
    score = {c: record.get(c) for c in SCORE_COLUMNS}
    if score["churn_as_of"] is not None:
        score["churn_as_of"] = _time(score["churn_as_of"])
    scores = pa.Table.from_pylist([{"customer_id": record["customer_id"], **score}], SCORED)
    versions = meta.get("versions") or {}
    models = ModelOutputs(
        segments=_one(record, "segments", SEGMENT_TABLE),
        segments_version=versions.get("segments"),
        recommendations=_one(record, "recommendations", RECS_TABLE),
        popular=tuple(meta.get("popular") or ()) or None,
        recs_version=versions.get("recommendations"),
    )
    return assemble(features, scores, models).to_pylist()[0]


def _one(record: dict[str, Any], kind: str, schema: pa.Schema) -> pa.Table | None:
    """The record's ``kind`` output as a one-row table (None: the customer has none)."""
    value = record.get(f"output_{kind}")
    if value is None:
        return None
    parsed = json.loads(value)
    row = parsed if isinstance(parsed, dict) else {schema.names[1]: parsed}
    return pa.Table.from_pylist([{"customer_id": record["customer_id"], **row}], schema)


def live_clock(settings: Settings) -> datetime | None:
    """The stream clock of the last batch the online store holds (None: none yet)."""
    store = open_reader(settings)
    try:
        clock = store.meta().get("clock_us")
        return None if clock is None else _time(clock)
    finally:
        store.close()


def at_risk(settings: Settings, n: int, by_probability: bool = False) -> list[dict[str, Any]]:
    """The ``n`` customers with the most value at risk, as short dicts.

    Value at risk = churn probability x expected value (the expected spend in the churn
    horizon, under the same CURRENT churn model), both stored in the customer's record.
    ``by_probability``: the ``n`` with the highest churn probability instead (the older
    ordering, also used when no record has an expected value yet: a churn model without one).
    """
    with_store = open_reader(settings)
    try:
        meta = with_store.meta()
        ids = [] if by_probability else with_store.top_value_at_risk(n)
        if not ids:
            ids = with_store.top_churn(n)
        rows = []
        for customer_id in ids:
            record = with_store.get(customer_id)
            if record is not None:
                row = view_row(record, meta)
                p, value = record.get("churn_probability"), record.get("expected_value")
                row["expected_value"] = value
                row["value_at_risk"] = None if p is None or value is None else p * value
                rows.append({c: row[c] for c in AT_RISK_COLUMNS})
        return rows
    finally:
        with_store.close()
