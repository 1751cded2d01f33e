"""Look-ups against the online store: one customer's view row, or the most value at risk.

``lookup`` is the function an application calls (``pulse view`` prints the same
record). It reads one key from the online store, evaluates the features that age as of
the stream clock with the one feature definition (``features.customer.features_table``)
and scores them with the CURRENT models' exported scorers (``scoring``, carried in the
store's meta), then assembles the row exactly as the Parquet snapshot does
(``serving.view.assemble``). No Spark, no scan: the cost of one look-up does not depend
on the customer count.

    from runtime.settings import load_settings
    from serving.read import lookup
    row = lookup(load_settings(), "customer-42")   # dict: features, segment, churn, recs

Time semantics: ``as_of`` is the stream clock at the last micro-batch the store holds
(the latest event time the stream accepted); every feature and score is evaluated as of
it, so ``churn_as_of`` equals ``as_of``: the churn probability is P(no purchase in the
churn horizon from the clock on), given everything the stream has seen.

``at_risk`` ranks every customer by value at risk as of the same clock: a scan of the
store and one NumPy evaluation of all of them (the list changes when the clock does,
for customers nobody touched too).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from features.customer import HISTORY_DAYS, features_table
from runtime.errors import PulseError
from runtime.settings import Settings
from serving.online import RECORD_COLUMNS, OnlineStore, open_store
from serving.view import RECS_TABLE, SEGMENT_TABLE, ModelOutputs, assemble, score, scorers_from
from storage.state_rows import state_from_record, state_from_records

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
    ``with_value``: add ``expected_value`` (the expected spend in the churn horizon) and
    ``value_at_risk`` (churn probability x expected value), which the Parquet view, whose
    schema is ``schemas.tables``', does not hold.
    """
    own = store is None
    reader = open_reader(settings) if store is None else store
    try:
        found, meta = reader.get_many([customer_id])  # the record and its clock, together
        if customer_id not in found:
            raise PulseError(f"unknown customer {customer_id!r} (not in the online store)")
        row = view_row(found[customer_id], meta)
        if not with_value:
            del row["expected_value"], row["value_at_risk"]
        return row
    finally:
        if own:
            reader.close()


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A view row with its dates and times as ISO 8601 text (what ``pulse view --json``
    and ``pulse serve`` print)."""
    return {k: v.isoformat() if isinstance(v, date | datetime) else v for k, v in row.items()}


def view_row(record: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """An online-store record + the store's meta -> the customer's view row, with its
    ``expected_value`` and ``value_at_risk``."""
    return evaluate(state_from_record(record), _clock(meta), _models(meta, record))[0]


def evaluate(state: pa.Table, clock: datetime, models: ModelOutputs) -> list[dict[str, Any]]:
    """State rows -> view rows as of ``clock``, in state order: the features, the scores,
    the keyed outputs (``assemble``), and ``expected_value`` and ``value_at_risk`` joined
    by id. Every look-up, batched or not, and the stream's console go through here."""
    features = features_table(state, clock)
    scores = score(features, models)
    value = dict(zip(scores["customer_id"].to_pylist(), scores["expected_value"].to_pylist(),
                     strict=True))  # fmt: skip
    rows: list[dict[str, Any]] = assemble(features, scores, models).to_pylist()
    for row in rows:
        v, p = value[row["customer_id"]], row["churn_probability"]
        row["expected_value"] = v
        row["value_at_risk"] = None if p is None or v is None else p * v
    return rows


def history(record: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A record's daily activity in the ``HISTORY_DAYS`` days up to the stream clock (what
    the store keeps per customer), oldest first, with the first and last purchase dates."""
    clock = _clock(meta).date()
    first = clock.toordinal() - HISTORY_DAYS  # days after this one are in the window
    days = []
    for d in sorted(json.loads(record["history"] or "[]"), key=lambda d: int(d[0])):
        day = _EPOCH.date() + timedelta(days=int(d[0]))
        if first < day.toordinal() <= clock.toordinal():
            days.append({"date": day.isoformat(), "n_events": int(d[1]),
                         "n_purchases": int(d[2]), "spend": float(d[3])})  # fmt: skip

    def iso(value: Any) -> str | None:
        return None if value is None else (_EPOCH.date() + timedelta(days=int(value))).isoformat()

    return {
        "customer_id": record["customer_id"],
        "as_of": clock.isoformat(),
        "window_days": HISTORY_DAYS,
        "first_purchase_date": iso(record.get("first_purchase_date")),
        "last_purchase_date": iso(record.get("last_purchase_date")),
        "days": days,
    }


_SCORERS: dict[str, dict[str, Any]] = {}  # the meta's scorers, parsed once per version pair


def view_rows(records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Many records -> their view rows (as ``view_row``'s), by customer id, in one
    evaluation: a look-up's cost is mostly the fixed cost of Arrow calls on a table, so
    16 customers cost about what 1.5 do (``serving.api`` batches concurrent look-ups)."""
    if len(records) == 1:  # one record parses faster on its own
        state = state_from_record(records[0])
    else:
        state = state_from_records([tuple(r.get(c) for c in RECORD_COLUMNS) for r in records],
                                   RECORD_COLUMNS)  # fmt: skip
    rows = evaluate(state, _clock(meta), _models(meta, records))
    return {row["customer_id"]: row for row in rows}


def _models(
    meta: dict[str, Any], records: dict[str, Any] | list[dict[str, Any]] | None = None
) -> ModelOutputs:
    """The CURRENT models as the store's meta carries them, with the records' outputs."""
    versions = meta.get("versions") or {}
    key = json.dumps([versions.get("churn"), versions.get("segments")])
    if key not in _SCORERS:
        _SCORERS.clear()
        _SCORERS[key] = scorers_from(meta.get("scorers"))
    many = [] if records is None else [records] if isinstance(records, dict) else records
    return ModelOutputs(
        segments=_outputs(many, "segments", SEGMENT_TABLE),
        segments_version=versions.get("segments"),
        recommendations=_outputs(many, "recommendations", RECS_TABLE),
        popular=tuple(meta.get("popular") or ()) or None,
        recs_version=versions.get("recommendations"),
        churn_version=versions.get("churn"),
        **_SCORERS[key],
    )


def clock_of(meta: dict[str, Any]) -> datetime | None:
    """The stream clock a store's meta holds (None: no batch written yet)."""
    clock = meta.get("clock_us")
    return None if clock is None else _time(clock)


def _clock(meta: dict[str, Any]) -> datetime:
    clock = clock_of(meta)
    if clock is None:
        raise PulseError("the online store has no stream clock yet (no batch written)")
    return clock


def _outputs(records: list[dict[str, Any]], kind: str, schema: pa.Schema) -> pa.Table | None:
    """The records' ``kind`` outputs as a table, a row per customer that has one (None:
    none has)."""
    rows = []
    for record in records:
        value = record.get(f"output_{kind}")
        if value is not None:
            parsed = json.loads(value)
            row = parsed if isinstance(parsed, dict) else {schema.names[1]: parsed}
            rows.append({"customer_id": record["customer_id"], **row})
    return pa.Table.from_pylist(rows, schema) if rows else None


def live_clock(settings: Settings) -> datetime | None:
    """The stream clock of the last batch the online store holds (None: none yet)."""
    store = open_reader(settings)
    try:
        return clock_of(store.meta())
    finally:
        store.close()


def at_risk(
    settings: Settings, n: int, by_probability: bool = False, store: OnlineStore | None = None
) -> list[dict[str, Any]]:
    """The ``n`` customers with the most value at risk as of the stream clock, as short dicts.

    Value at risk = churn probability x expected value (the expected spend in the churn
    horizon, under the same CURRENT churn model); ties go to the smaller customer id, and
    customers without both are left out. ``by_probability``: the ``n`` with the highest
    churn probability instead. Every customer is evaluated as of the clock (a scan of the
    store), then the ``n`` rows are the customers' look-ups. Pass an open ``store`` to
    read on it.
    """
    reader = open_reader(settings) if store is None else store
    try:
        top = ranked(reader, reader.meta(), n, by_probability)
        # the rows: the ranked customers and the clock from one snapshot, so a customer
        # the stream updated during the scan is shown with the clock of that update
        found, meta = reader.get_many(top)
        rows = [view_row(found[i], meta) for i in top if i in found]
        return [{c: row[c] for c in AT_RISK_COLUMNS} for row in rows]
    finally:
        if store is None:
            reader.close()


def ranked(store: OnlineStore, meta: dict[str, Any], n: int, by_probability: bool) -> list[str]:
    """The ids of the ``n`` customers with the highest value at risk (or churn probability),
    every customer scored as of the clock; ties by id."""
    clock = _clock(meta)
    models = replace(_models(meta), segmenter=None)  # the ranking needs churn only
    if models.churn is None:
        return []
    best: list[tuple[float, str]] = []
    for chunk in store.records():
        state = state_from_records(chunk, RECORD_COLUMNS)
        scores = score(features_table(state, clock), models)
        p = scores["churn_probability"].to_numpy(zero_copy_only=False)
        key = p if by_probability else p * scores["expected_value"].to_numpy(zero_copy_only=False)
        key = np.where(np.isnan(key), -np.inf, key)
        # every customer at or above the chunk's n-th highest key (ties included)
        floor = np.partition(key, len(key) - n)[len(key) - n] if len(key) > n else -np.inf
        top = np.flatnonzero((key >= floor) & np.isfinite(key))
        ids = state["customer_id"].to_pylist()
        best.extend((float(key[i]), ids[i]) for i in top)
        best = sorted(best, key=lambda kv: (-kv[0], kv[1]))[:n]
    return [customer_id for _, customer_id in best]
