"""The live view: keeps the online store current as the stream runs (a ``streaming.state.Sink``).

Per micro-batch, for the customers the batch touched only:

1. read their absolute state from the stream's store, evaluate their features as of the
   stream clock (``features_table``), and score them with the CURRENT churn and
   segmentation models (``serving.view.score``: one small Spark job);
2. upsert their records (state + scores) into the online store, with the clock.

Before that, it re-resolves every CURRENT pointer (three small files): when a retrain
moved one, the new version's keyed outputs (segments, recommendation lists, the
popularity list) are loaded into the store once, and the stream logs the pick-up. No
restart is needed.

On each scheduled full snapshot every customer is re-scored as of the clock (so a
silent customer's churn score ages too), the scores are written to the store, and the
whole view is published as one Parquet snapshot (``serving.view.publish_view``),
readable by pandas, DuckDB and Spark.

The store is derived data: every write is an upsert of absolute values, so a replayed
batch, or a restart, writes the same records again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from features.customer import features_table
from runtime.settings import Settings
from serving.online import OnlineStore, open_store
from serving.view import ModelCache, ModelOutputs, assemble, publish_view, score
from storage.customer_state import BatchResult, CustomerStateStore
from storage.state_table import history_json, state_table

TOTALS = (
    "first_purchase_date",
    "last_purchase_date",
    "purchase_days",
    "n_events",
    "monetary",
    "n_online",
    "n_with_channel",
)


def _micros(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    return pc.cast(column, pa.int64()).to_pylist()


def records(state: pa.Table, scores: pa.Table) -> Iterator[tuple[Any, ...]]:
    """State rows + their scores (same order) -> online-store records (RECORD_COLUMNS)."""
    columns = [state["customer_id"].to_pylist()]
    for c in TOTALS:
        col = state[c]
        columns.append(
            pc.cast(col, pa.int32()).to_pylist() if pa.types.is_date(col.type) else col.to_pylist()
        )
    columns.append(_micros(state["max_event_time"]))
    columns.append(history_json(state).to_pylist())
    columns.extend(score_columns(scores))
    return zip(*columns, strict=True)


def score_columns(scores: pa.Table) -> list[list[Any]]:
    """``SCORES`` columns after customer_id as Python lists (times as microseconds)."""
    out = []
    for name in scores.column_names[1:]:
        col = scores[name]
        out.append(_micros(col) if pa.types.is_timestamp(col.type) else col.to_pylist())
    return out


class LiveView:
    """The stream's sink: online-store upserts per batch, a full view per snapshot."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        log: Callable[[str], None] = print,
        online: OnlineStore | None = None,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.log = log
        self.online = online if online is not None else open_store(settings)
        self.models = ModelCache()
        self.last_batch_seconds: float | None = None

    def current_models(self) -> ModelOutputs:
        """The CURRENT models; loads a newly promoted version's outputs into the store."""
        models = self.models.current(self.settings)
        if self.models.loaded_now:
            self._load_outputs(models, self.models.loaded_now)
        return models

    def _load_outputs(self, models: ModelOutputs, names: list[str]) -> None:
        t0 = time.perf_counter()
        if "segments" in names and models.segments is not None:
            seg = models.segments
            values = (
                json.dumps({"segment_id": i, "segment_name": n})
                for i, n in zip(
                    seg["segment_id"].to_pylist(), seg["segment_name"].to_pylist(), strict=True
                )
            )
            self.online.replace_output(
                "segments",
                models.segments_version or "",
                zip(seg["customer_id"].to_pylist(), values, strict=True),
            )
        if "recommendations" in names and models.recommendations is not None:
            recs = models.recommendations
            self.online.replace_output(
                "recommendations",
                models.recs_version or "",
                zip(
                    recs["customer_id"].to_pylist(),
                    (json.dumps(r) for r in recs["recommendations"].to_pylist()),
                    strict=True,
                ),
            )
        self.online.set_meta({"versions": models.versions(), "popular": list(models.popular or ())})
        picked = ", ".join(f"{n} {models.versions()[n]}" for n in names)
        self.log(f"model picked up: {picked} ({time.perf_counter() - t0:.1f} s, no restart)")

    def batch(self, store: CustomerStateStore, result: BatchResult) -> None:
        """Score and upsert the customers this batch touched."""
        t0 = time.perf_counter()
        models = self.current_models()
        clock = store.clock()
        if result.touched_ids and clock is not None:
            state = state_table(*store.read(list(result.touched_ids)))
            features = features_table(state, clock)
            self.online.write_records(records(state, score(self.spark, features, models, clock)))
        if clock is not None:
            self.online.set_meta({"clock_us": _clock_us(clock), "last_batch": result.batch_id})
        self.last_batch_seconds = time.perf_counter() - t0

    def snapshot(self, state: pa.Table, features: pa.Table, as_of: datetime) -> None:
        """Re-score every customer as of ``as_of``; publish the whole view."""
        models = self.current_models()
        scores = score(self.spark, features, models, as_of)
        self.online.write_records(records(state, scores))
        self.online.set_meta({"clock_us": _clock_us(as_of)})
        publish_view(self.settings, assemble(features, scores, models))

    def close(self) -> None:
        """Close the online store."""
        self.online.close()


def _clock_us(clock: datetime) -> int:
    return int(pa.scalar(clock, pa.timestamp("us", tz="UTC")).value)
