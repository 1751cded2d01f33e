"""The live customer view: live features joined with the current model outputs.

``build_view`` is the pure transform: one live-feature row per customer plus

- ``segment_id`` / ``segment_name`` from the CURRENT segments table,
- ``churn_probability``: the CURRENT churn PipelineModel applied to the *live*
  features (joined with the customer attributes), so the score moves as the
  customer buys or goes quiet,
- ``recommendations``: the 12 article ids of the CURRENT recommendations table,
  in rank order,

and the version of each model used. A model with no CURRENT version yet gives
nulls, never an error.

``publish_view`` is what the streaming job calls after each feature publish: it
resolves CURRENT for every model *on every call* (so a retrain is picked up
without restarting the stream), loads each model version once (cached by
version), and publishes the view as a whole snapshot under
``settings.serving_dir`` with ``pulse.snapshots.publish``.

Time semantics: the view is "as of" the live features' ``as_of`` (the latest
event time the stream has seen); the model outputs are whatever version was
CURRENT when the snapshot was built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pulse import registry, snapshots
from pulse.settings import Settings

log = logging.getLogger(__name__)

N_RECOMMENDATIONS = 12

# Customer attributes the churn pipeline expects (customers.csv columns); nullable,
# imputed inside the pipeline. Missing ones are added as typed nulls.
CUSTOMER_ATTRIBUTES: dict[str, T.DataType] = {
    "age": T.DoubleType(),
    "club_member_status": T.StringType(),
    "fashion_news_frequency": T.StringType(),
    "FN": T.DoubleType(),
    "Active": T.DoubleType(),
}

# Columns the view adds to the live features, in order.
VIEW_COLUMNS: dict[str, T.DataType] = {
    "segment_id": T.IntegerType(),
    "segment_name": T.StringType(),
    "segments_model_version": T.StringType(),
    "churn_probability": T.DoubleType(),
    "churn_model_version": T.StringType(),
    "recommendations": T.ArrayType(T.StringType()),
    "recs_model_version": T.StringType(),
}


@dataclass(frozen=True)
class ModelOutputs:
    """The CURRENT model outputs the view joins in; any part may be missing (None).

    ``segments``: customer_id, segment_id, segment_name. ``recommendations``:
    customer_id, rank, article_id (the registry's table). ``churn_model``: a fitted
    Spark ML PipelineModel that outputs ``probability``. ``customers``: customer_id
    plus any of ``CUSTOMER_ATTRIBUTES``.
    """

    segments: DataFrame | None = None
    segments_version: str | None = None
    churn_model: Any = None
    churn_version: str | None = None
    recommendations: DataFrame | None = None
    recs_version: str | None = None
    customers: DataFrame | None = None


def recommendation_lists(recommendations: DataFrame) -> DataFrame:
    """Registry rows (customer_id, rank, article_id) -> customer_id, recommendations.

    ``recommendations`` is the article ids ordered by rank, at most 12.
    """
    ranked = F.array_sort(F.collect_list(F.struct("rank", "article_id")))
    return recommendations.groupBy("customer_id").agg(
        F.slice(F.transform(ranked, lambda r: r["article_id"]), 1, N_RECOMMENDATIONS).alias(
            "recommendations"
        )
    )


def with_customer_attributes(features: DataFrame, customers: DataFrame | None) -> DataFrame:
    """Left-join the customer attributes onto the features; absent ones become typed nulls."""
    out = features
    if customers is not None:
        present = [c for c in CUSTOMER_ATTRIBUTES if c in customers.columns]
        attrs = customers.select(
            "customer_id", *[F.col(c).cast(CUSTOMER_ATTRIBUTES[c]).alias(c) for c in present]
        )
        out = out.join(attrs, "customer_id", "left")
    for name, dtype in CUSTOMER_ATTRIBUTES.items():
        if name not in out.columns:
            out = out.withColumn(name, F.lit(None).cast(dtype))
    return out


def churn_scores(features: DataFrame, model: Any, customers: DataFrame | None) -> DataFrame:
    """Apply a churn PipelineModel to live features -> customer_id, churn_probability.

    ``churn_probability`` is P(class 1 = churn) from the model's ``probability`` vector.
    """
    from pyspark.ml.functions import vector_to_array

    scored = model.transform(with_customer_attributes(features, customers))
    return scored.select(
        "customer_id", vector_to_array("probability")[1].cast("double").alias("churn_probability")
    )


def build_view(features: DataFrame, models: ModelOutputs) -> DataFrame:
    """Live features + CURRENT model outputs -> one view row per customer.

    Columns: the live feature columns (unchanged), then ``VIEW_COLUMNS``. Customers the
    models have never seen get a segment/recommendations of null; the churn model
    scores every live customer.
    """
    view = features
    if models.segments is not None:
        seg = models.segments.select(
            "customer_id",
            F.col("segment_id").cast("int").alias("segment_id"),
            F.col("segment_name").cast("string").alias("segment_name"),
        )
        view = view.join(seg, "customer_id", "left").withColumn(
            "segments_model_version", F.lit(models.segments_version).cast("string")
        )
    if models.churn_model is not None:
        scores = churn_scores(features, models.churn_model, models.customers)
        view = view.join(scores, "customer_id", "left").withColumn(
            "churn_model_version", F.lit(models.churn_version).cast("string")
        )
    if models.recommendations is not None:
        recs = recommendation_lists(models.recommendations)
        view = view.join(recs, "customer_id", "left").withColumn(
            "recs_model_version", F.lit(models.recs_version).cast("string")
        )
    for name, dtype in VIEW_COLUMNS.items():
        if name not in view.columns:
            view = view.withColumn(name, F.lit(None).cast(dtype))
    return view.select(*features.columns, *VIEW_COLUMNS)


# --- Registry access -------------------------------------------------------------------------
# The registry (pulse/registry.py) is owned by the batch layer; serving only reads it.


def customers_path(settings: Settings) -> Path:
    """The customer attributes `pulse ingest` writes (batch.lake.customers_dir).

    Named here rather than imported: serving reads the batch layer's files, not its code.
    """
    return settings.data_root / "lake" / "customers"


class ModelCache:
    """Loads each model version once; ``current()`` re-checks every CURRENT pointer.

    Keyed by (kind, path of the version), so two data roots never share an entry.

    Cheap to call per micro-batch: resolving CURRENT reads three small files, and a
    version already loaded is reused (the Spark ML model and cached tables).
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], Any] = {}

    def _get(self, key: tuple[str, str], load: Any) -> Any:
        if key not in self._loaded:
            # Keep only the newest version of each kind: old ones are released.
            for old in [k for k in self._loaded if k[0] == key[0]]:
                value = self._loaded.pop(old)
                if isinstance(value, DataFrame):
                    value.unpersist()
            self._loaded[key] = load()
        return self._loaded[key]

    def current(self, spark: SparkSession, settings: Settings) -> ModelOutputs:
        """The CURRENT outputs of every model (None where there is no version yet)."""
        parts: dict[str, Any] = {}
        seg_v = _safe_version(settings, "segments")
        if seg_v is not None:
            path = registry.output_path(settings, "segments", seg_v)
            parts["segments"] = self._get(
                ("segments", str(path)), lambda: _read_parquet(spark, path, cache=True)
            )
            parts["segments_version"] = seg_v if parts["segments"] is not None else None
        churn_v = _safe_version(settings, "churn")
        if churn_v is not None:
            path = registry.model_path(settings, "churn", churn_v)
            parts["churn_model"] = self._get(("churn", str(path)), lambda: _load_pipeline(path))
            parts["churn_version"] = churn_v if parts["churn_model"] is not None else None
        recs_v = _safe_version(settings, "recommendations")
        if recs_v is not None:
            path = registry.output_path(settings, "recommendations", recs_v)
            parts["recommendations"] = self._get(
                ("recommendations", str(path)), lambda: _read_parquet(spark, path, cache=False)
            )
            parts["recs_version"] = recs_v if parts["recommendations"] is not None else None
        cust = customers_path(settings)
        if cust.exists():
            parts["customers"] = _read_parquet(spark, cust, cache=False)
        return ModelOutputs(**parts)


def _safe_version(settings: Settings, name: str) -> str | None:
    """CURRENT version of ``name``; None (with a warning) if the registry can't say."""
    try:
        return registry.current_version(settings, name)
    except Exception as exc:  # a half-set-up registry must not stop the stream
        log.warning("serving: cannot resolve CURRENT %s: %s", name, exc)
        return None


def _read_parquet(spark: SparkSession, path: Path, cache: bool) -> DataFrame | None:
    try:
        df = spark.read.parquet(str(path))
    except Exception as exc:
        log.warning("serving: cannot read %s: %s", path, exc)
        return None
    return df.cache() if cache else df


def _load_pipeline(path: Path) -> Any:
    from pyspark.ml import PipelineModel

    try:
        return PipelineModel.load(str(path))
    except Exception as exc:
        log.warning("serving: cannot load churn model %s: %s", path, exc)
        return None


_CACHE = ModelCache()


def publish_view(spark: SparkSession, settings: Settings, features_df: DataFrame) -> Path:
    """Build the view from ``features_df`` and the CURRENT models; publish a snapshot.

    Reads: the registry's CURRENT pointers, model dirs and output tables. Writes: a new
    snapshot ``settings.serving_dir/v=<version>/`` (Parquet) and moves CURRENT to it.
    Returns the published directory.
    """
    view = build_view(features_df, _CACHE.current(spark, settings))
    return snapshots.publish(
        settings.serving_dir, lambda tmp: view.write.mode("overwrite").parquet(str(tmp))
    )
