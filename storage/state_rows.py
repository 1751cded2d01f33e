"""The stream's stored state as ``STATE_SCHEMA`` rows, and back from the online store's JSON.

``store_tables`` goes the other way, from events to the store's two tables, with the
batch code (``customer_state(daily_activity(events))``): the stream seeds itself with it,
and each retrain writes it as of its cutoff, so the stream can take the batch layer's
state (the lambda correction, ``streaming.seed.correct_from_batch``, which adds the
stream's days since the cutoff with ``merge_state``).

``CustomerStateStore.read`` returns two flat Arrow tables (per customer, per customer-day,
days as day numbers since 1970-01-01, which *are* Arrow ``date32`` values).
``state_table`` nests them into the rows ``features.customer.features_table`` takes; no
Spark, so the stream's snapshot and each micro-batch's touched customers cost NumPy
time only. ``history_json`` / ``state_from_record`` carry one customer's history
through the online store and back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from features.customer import DAY_COLUMNS, STATE_SCHEMA, customer_state, daily_activity

_DAY_VALUES = [(c, pa.float64() if c == "spend" else pa.int64()) for c in DAY_COLUMNS[1:]]
DAY_TYPE = pa.struct([("day", pa.date32()), *_DAY_VALUES])
_DAY_NUMBERS = pa.struct([("day", pa.int32()), *_DAY_VALUES])  # day as a day number
STATE_ARROW = pa.schema(
    [
        ("customer_id", pa.string()),
        ("first_purchase_date", pa.date32()),
        ("last_purchase_date", pa.date32()),
        ("purchase_days", pa.int64()),
        ("n_events", pa.int64()),
        ("monetary", pa.float64()),
        ("n_online", pa.int64()),
        ("n_with_channel", pa.int64()),
        ("history", pa.list_(DAY_TYPE)),
        ("max_event_time", pa.timestamp("us", tz="UTC")),
    ]
)
assert STATE_ARROW.names[:-1] == [f.name for f in STATE_SCHEMA]


def state_table(customers: pa.Table, days: pa.Table) -> pa.Table:
    """Store tables -> ``STATE_ARROW`` rows, in ``customers`` order.

    ``customers``: customer_id, the totals (purchase dates as day numbers or null) and
    ``max_event_time`` (microseconds); ``days``: customer_id, day (a day number) and the
    day's values. Each history is sorted by day.
    """
    n = customers.num_rows
    owner = pc.index_in(days["customer_id"], value_set=customers["customer_id"])
    owner_np = pc.fill_null(owner, -1).to_numpy(zero_copy_only=False)
    day_np = days["day"].to_numpy(zero_copy_only=False).astype(np.int64)
    keep = owner_np >= 0
    order = np.lexsort((day_np[keep], owner_np[keep]))
    idx = np.flatnonzero(keep)[order]
    picked = days.take(pa.array(idx, pa.int64()))
    offsets = np.concatenate(([0], np.cumsum(np.bincount(owner_np[idx], minlength=n))))
    values = pa.StructArray.from_arrays(
        [pa.array(day_np[idx].astype(np.int32)).cast(pa.date32())]
        + [picked[c].combine_chunks().cast(DAY_TYPE.field(c).type) for c in DAY_COLUMNS[1:]],
        fields=list(DAY_TYPE),
    )
    history = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    cols = {
        "customer_id": customers["customer_id"],
        **{
            c: customers[c].cast(pa.int32()).cast(pa.date32())
            for c in ("first_purchase_date", "last_purchase_date")
        },
        **{c: customers[c].cast(STATE_ARROW.field(c).type) for c in STATE_ARROW.names[3:8]},
        "history": history,
        "max_event_time": customers["max_event_time"].cast(pa.timestamp("us", tz="UTC")),
    }
    return pa.table([cols[c] for c in STATE_ARROW.names], schema=STATE_ARROW)


def history_json(state: pa.Table) -> pa.Array:
    """Each row's history as JSON text: ``[[day, n_events, n_purchases, spend, ...], ...]``.

    Vectorised (Arrow string kernels): a micro-batch writes this for every touched customer.
    """
    history = state["history"].combine_chunks()
    flat = pc.list_flatten(history)
    parts = [pc.cast(pc.cast(flat.field("day"), pa.int32()), pa.string())]
    parts += [pc.cast(flat.field(c), pa.string()) for c in DAY_COLUMNS[1:]]
    row = pc.binary_join_element_wise(*parts, ",")
    row = pc.binary_join_element_wise("[", row, "]", "")
    lists = pa.ListArray.from_arrays(_offsets(history), row)
    return pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", "")


def _offsets(lists: pa.ListArray) -> pa.Array:
    """``lists``' offsets rebased to its flattened values (it may be a slice)."""
    offsets = lists.offsets.to_numpy()
    return pa.array(offsets - offsets[0], pa.int32())


def state_from_record(record: dict[str, Any]) -> pa.Table:
    """One online-store record (``serving.online.RECORD_COLUMNS``) -> a one-row state."""
    days: Sequence[Sequence[Any]] = json.loads(record["history"] or "[]")
    history = [
        {"day": int(d[0]), "n_events": int(d[1]), "n_purchases": int(d[2]), "spend": float(d[3]),
         "n_online": int(d[4]), "n_with_channel": int(d[5])}
        for d in days
    ]  # fmt: skip
    row = {c: record.get(c) for c in STATE_ARROW.names if c != "history"}
    for c in ("first_purchase_date", "last_purchase_date"):
        value = row[c]
        row[c] = None if value is None else int(value)
    arrays = []
    for field in STATE_ARROW:
        if field.name == "history":
            arrays.append(pa.array([history], pa.list_(_DAY_NUMBERS)).cast(field.type))
        elif field.type == pa.date32():
            arrays.append(pa.array([row[field.name]], pa.int32()).cast(pa.date32()))
        elif field.name == "max_event_time":
            arrays.append(pa.array([row[field.name]], pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array([row[field.name]], field.type))
    return pa.Table.from_arrays(arrays, schema=STATE_ARROW)


def store_tables(
    events: DataFrame, as_of: Any, daily: DataFrame | None = None
) -> tuple[pa.Table, pa.Table]:
    """Events (``event_time <= as_of``) -> the store's (customers, customer_days) tables.

    Dates as day numbers since 1970-01-01, ``max_event_time`` in microseconds: what
    ``CustomerStateStore.load`` takes. The days are those of the history (the last
    ``HISTORY_DAYS`` before ``as_of``). ``daily``: the events' customer-day table when the
    caller has it already (a retrain does); else it is built here.
    """
    latest = events.groupBy("customer_id").agg(F.max("event_time").alias("max_event_time"))
    daily = daily_activity(events) if daily is None else daily
    # both tables below read it: computed once
    state = customer_state(daily, as_of).join(latest, "customer_id").cache()
    epoch = F.lit("1970-01-01").cast("date")
    dates = ("first_purchase_date", "last_purchase_date")
    customers = state.select(
        "customer_id",
        *[F.datediff(c, epoch).cast("long").alias(c) for c in dates],
        *[c for c in STATE_ARROW.names[3:8]],
        F.unix_micros("max_event_time").alias("max_event_time"),
    ).toArrow()
    days = (
        state.select("customer_id", F.explode("history").alias("d"))
        .select("customer_id", "d.*")
        .withColumn("day", F.datediff("day", epoch).cast("long"))
        .toArrow()
    )
    state.unpersist()
    return customers, days


_SUMS = ("n_events", "monetary", "n_online", "n_with_channel", "purchase_days")


def merge_state(
    batch: tuple[pa.Table, pa.Table], stream: tuple[pa.Table, pa.Table], cutoff_day: int
) -> tuple[pa.Table, pa.Table]:
    """The batch layer's state before ``cutoff_day`` + the stream's days from it on.

    Both are (customers, customer_days) as the store holds them. The batch state
    supersedes the stream's up to the cutoff (it counts late and re-sent events the
    stream could not); each total is then the batch total plus the stream's days on or
    after the cutoff, and the history is the batch's days followed by those. A customer
    the stream holds but neither part has (none can, when the lake holds what the
    stream wrote) keeps the stream's row.
    """
    import pandas as pd

    b_cust, b_days = batch
    s_cust, s_days = stream
    after = s_days.filter(pc.greater_equal(s_days["day"], cutoff_day)).to_pandas()
    bought = after["n_purchases"] > 0
    after = after.assign(purchase_days=bought.astype("int64"), pday=after["day"].where(bought))
    moved = after.groupby("customer_id").agg(
        n_events=("n_events", "sum"),
        monetary=("spend", "sum"),
        n_online=("n_online", "sum"),
        n_with_channel=("n_with_channel", "sum"),
        purchase_days=("purchase_days", "sum"),
        first=("pday", "min"),
        last=("pday", "max"),
    )
    b = b_cust.to_pandas().set_index("customer_id")
    s = s_cust.to_pandas().set_index("customer_id")
    ids = b.index.union(moved.index)
    out = pd.DataFrame(index=ids)
    for c in _SUMS:
        out[c] = b[c].reindex(ids).fillna(0) + moved[c].reindex(ids).fillna(0)
    out["first_purchase_date"] = pd.concat(
        [b["first_purchase_date"].reindex(ids), moved["first"].reindex(ids)], axis=1
    ).min(axis=1)
    out["last_purchase_date"] = pd.concat(
        [b["last_purchase_date"].reindex(ids), moved["last"].reindex(ids)], axis=1
    ).max(axis=1)
    out["max_event_time"] = pd.concat(
        [b["max_event_time"].reindex(ids), s["max_event_time"].reindex(ids)], axis=1
    ).max(axis=1)
    kept = s.loc[s.index.difference(ids)]
    merged = pd.concat([out, kept[out.columns]]).rename_axis("customer_id").reset_index()
    schema = s_cust.schema
    customers = pa.Table.from_pandas(merged[schema.names], preserve_index=False).cast(schema)
    days = pa.concat_tables(
        [
            b_days.select(s_days.column_names).cast(s_days.schema),
            s_days.filter(pc.greater_equal(s_days["day"], cutoff_day)),
        ]
    )
    return customers, days


_NO_BRACKETS = str.maketrans("", "", "[]")


def state_from_records(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> pa.Table:
    """Many online-store records (tuples in ``columns`` order) -> state rows, in order."""
    at = {c: i for i, c in enumerate(columns)}
    ids = [r[at["customer_id"]] for r in rows]
    customers = pa.table(
        {
            "customer_id": pa.array(ids, pa.string()),
            **{
                c: pa.array([r[at[c]] for r in rows], STATE_ARROW.field(c).type)
                for c in STATE_ARROW.names[3:8]
            },
            **{
                c: pa.array([r[at[c]] for r in rows], pa.int32())
                for c in ("first_purchase_date", "last_purchase_date")
            },
            "max_event_time": pa.array([r[at["max_event_time"]] for r in rows], pa.int64()),
        }
    )
    # The histories are flat lists of numbers (``history_json``): every non-empty one is
    # read in one C-level pass, with no json.loads per customer (which cost more than the
    # rest of the scan together).
    texts = [(i, r[at["history"]]) for i, r in enumerate(rows)]
    texts = [(i, t) for i, t in texts if t and t != "[]"]
    lengths = np.array([t.count("[") - 1 for _, t in texts], np.int64)
    owner_rows = np.repeat(np.array([i for i, _ in texts], np.int64), lengths)
    owners = pa.array(ids, pa.string()).take(pa.array(owner_rows, pa.int64()))
    flat = ",".join(t for _, t in texts).translate(_NO_BRACKETS)
    values = np.fromstring(flat, np.float64, sep=",") if texts else np.zeros(0)
    values = values.reshape(-1, len(DAY_COLUMNS))
    if len(values) != len(owner_rows):
        raise ValueError("online-store histories are not lists of day rows")
    day_table = pa.table(
        {
            "customer_id": owners,
            "day": values[:, 0].astype(np.int64),
            **{
                c: values[:, i + 1] if c == "spend" else values[:, i + 1].astype(np.int64)
                for i, c in enumerate(DAY_COLUMNS[1:])
            },
        }
    )
    return state_table(customers, day_table)
