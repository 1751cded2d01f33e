"""The live customer view: live features joined with the current model outputs.

``build_view`` is the pure transform: one live-feature row per customer plus

- ``segment_id`` / ``segment_name``: the CURRENT segments table for the customers it
  holds (their segment as trained: a segment is a model *output*, joined in, as
  design.md's "Serving view" says); a customer the table does not hold (first seen
  after that retrain) is assigned by the CURRENT segmentation PipelineModel applied to
  its *live* features, named with the version's ``names.json``;
- ``churn_probability``: the CURRENT churn PipelineModel applied to the *live*
  features (joined with the customer attributes), so the score moves as the
  customer buys or goes quiet;
- ``recommendations``: the ``N_RECOMMENDATIONS`` (12) article ids of the CURRENT
  recommendations table, in rank order; a customer the table does not hold gets that version's
  popularity list (``popular.json``), as cold-start customers do at training time,

and the version of each model used. A model with no CURRENT version yet gives
nulls, never an error. A registry version written before the segmentation model or
the popularity list were kept next to it is served from its table alone: customers
it does not hold get a null segment / null recommendations, as before.

``publish_view`` is what the streaming job calls after each feature publish: it
resolves CURRENT for every model *on every call* (so a retrain is picked up
without restarting the stream), loads each model version once into the caller's
``ModelCache`` (one per stream run), and publishes the view as a whole snapshot
under ``settings.serving_dir`` with ``storage.snapshots.publish``.

Time semantics: the view is "as of" the live features' ``as_of`` (the latest
event time the stream has seen); the model outputs are whatever version was
CURRENT when the snapshot was built.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from features.attributes import with_customer_attributes
from runtime.settings import Settings
from schemas.tables import (
    N_RECOMMENDATIONS,
    VIEW_EXTRA_COLUMNS,
    serving_view_schema,
)
from storage import registry, snapshots
from storage.lake import customers_dir

log = logging.getLogger(__name__)

# Columns the view adds to the live features, in order, as Spark types: derived from
# their one definition, schemas.tables.VIEW_EXTRA_COLUMNS.
VIEW_COLUMNS: dict[str, T.DataType] = {
    f.name: f.dataType for f in serving_view_schema().fields if f.name in VIEW_EXTRA_COLUMNS
}


@dataclass(frozen=True)
class ModelOutputs:
    """The CURRENT model outputs the view joins in; any part may be missing (None).

    ``segments``: customer_id, segment_id, segment_name. ``segments_model``: the fitted
    segmentation PipelineModel (live feature columns -> ``prediction``) and
    ``segment_names`` its prediction -> name mapping; both needed to segment customers
    absent from ``segments``. ``recommendations``: customer_id, rank, article_id (the
    registry's table). ``popular``: the article ids given to customers absent from
    ``recommendations``, in rank order. ``churn_model``: a fitted Spark ML PipelineModel
    that outputs ``probability``. ``customers``: customer_id plus any of
    ``CUSTOMER_ATTRIBUTES``.
    """

    segments: DataFrame | None = None
    segments_model: Any = None
    segment_names: dict[int, str] | None = None
    segments_version: str | None = None
    churn_model: Any = None
    churn_version: str | None = None
    recommendations: DataFrame | None = None
    popular: tuple[str, ...] | None = None
    recs_version: str | None = None
    customers: DataFrame | None = None


def recommendation_lists(recommendations: DataFrame) -> DataFrame:
    """Registry rows (customer_id, rank, article_id) -> customer_id, recommendations.

    ``recommendations`` is the article ids ordered by rank, at most ``N_RECOMMENDATIONS``.
    """
    ranked = F.array_sort(F.collect_list(F.struct("rank", "article_id")))
    return recommendations.groupBy("customer_id").agg(
        F.slice(F.transform(ranked, lambda r: r["article_id"]), 1, N_RECOMMENDATIONS).alias(
            "recommendations"
        )
    )


def churn_scores(features: DataFrame, model: Any, customers: DataFrame | None) -> DataFrame:
    """Apply a churn PipelineModel to live features -> customer_id, churn_probability.

    ``churn_probability`` is P(class 1 = churn) from the model's ``probability`` vector.
    """
    from pyspark.ml.functions import vector_to_array

    scored = model.transform(with_customer_attributes(features, customers))
    return scored.select(
        "customer_id",
        vector_to_array(F.col("probability"))[1].cast("double").alias("churn_probability"),
    )


def segment_assignments(features: DataFrame, model: Any, names: dict[int, str]) -> DataFrame:
    """Apply a segmentation PipelineModel to live features -> customer_id, segment_id,
    segment_name.

    The pipeline starts from the feature columns (``batch.segments.build_pipeline``: log
    RFM, scaling and KMeans inside it); ``names`` maps its ``prediction`` to a name.
    """
    pairs = [F.lit(x) for sid, name in sorted(names.items()) for x in (int(sid), name)]
    segment_id = F.col("prediction").cast("int")
    return model.transform(features).select(
        "customer_id",
        segment_id.alias("segment_id"),
        F.create_map(*pairs)[segment_id].cast("string").alias("segment_name"),
    )


def segments_for(features: DataFrame, models: ModelOutputs) -> DataFrame | None:
    """customer_id, segment_id, segment_name for the view; None without a segments version.

    The table's row for a customer it holds; the model's assignment on the live features
    for every other customer in ``features`` (when the version has a model and names).
    """
    table = None
    if models.segments is not None:
        table = models.segments.select(
            "customer_id",
            F.col("segment_id").cast("int").alias("segment_id"),
            F.col("segment_name").cast("string").alias("segment_name"),
        )
    if models.segments_model is None or not models.segment_names:
        return table
    unseen = features
    if table is not None:
        unseen = features.join(table.select("customer_id"), "customer_id", "left_anti")
    assigned = segment_assignments(unseen, models.segments_model, models.segment_names)
    return assigned if table is None else table.unionByName(assigned)


def build_view(features: DataFrame, models: ModelOutputs) -> DataFrame:
    """Live features + CURRENT model outputs -> one view row per customer.

    Columns: the live feature columns (unchanged), then ``VIEW_COLUMNS``. Customers in the
    segments / recommendations tables get their rows there; the others get the segment the
    segmentation model assigns to their live features and the popularity list (null where
    the version has no model / list). The churn model scores every live customer.
    """
    view = features
    seg = segments_for(features, models)
    if seg is not None:
        view = view.join(seg, "customer_id", "left").withColumn(
            "segments_model_version", F.lit(models.segments_version).cast("string")
        )
    if models.churn_model is not None:
        scores = churn_scores(features, models.churn_model, models.customers)
        view = view.join(scores, "customer_id", "left").withColumn(
            "churn_model_version", F.lit(models.churn_version).cast("string")
        )
    if models.recommendations is not None or models.popular:
        if models.recommendations is not None:
            recs = recommendation_lists(models.recommendations)
            view = view.join(recs, "customer_id", "left")
        else:
            view = view.withColumn("recommendations", F.lit(None).cast("array<string>"))
        if models.popular:
            popular = F.array(*[F.lit(a) for a in models.popular[:N_RECOMMENDATIONS]])
            view = view.withColumn("recommendations", F.coalesce(F.col("recommendations"), popular))
        view = view.withColumn("recs_model_version", F.lit(models.recs_version).cast("string"))
    for name, dtype in VIEW_COLUMNS.items():
        if name not in view.columns:
            view = view.withColumn(name, F.lit(None).cast(dtype))
    return view.select(*features.columns, *VIEW_COLUMNS)


# --- Registry access -------------------------------------------------------------------------
# The registry (storage/registry.py) is owned by the batch layer; serving only reads it.


def _load_segments(spark: SparkSession, settings: Settings, version: str) -> dict[str, Any]:
    """The segments table, plus the segmentation model and its names when the version has
    them (older versions: the table only)."""
    parts: dict[str, Any] = {
        "segments": _read_parquet(
            spark, registry.output_path(settings, "segments", version), cache=True
        )
    }
    model_path = registry.model_path(settings, "segments", version)
    names_file = registry.model_dir(settings, "segments", version) / registry.SEGMENT_NAMES_FILE
    if model_path.is_dir() and names_file.is_file():
        names = _read_json(names_file)
        try:
            mapping = {int(k): str(v) for k, v in names.items()} if names else None
        except (AttributeError, TypeError, ValueError):
            log.warning("serving: %s is not a segment id -> name mapping", names_file)
            mapping = None
        model = _load_pipeline(model_path, "segments") if mapping else None
        if model is not None:
            parts |= {"segments_model": model, "segment_names": mapping}
    return parts


def _load_churn(spark: SparkSession, settings: Settings, version: str) -> dict[str, Any]:
    """The churn PipelineModel (applied to the live features at every publish)."""
    return {"churn_model": _load_pipeline(registry.model_path(settings, "churn", version), "churn")}


def _load_recommendations(spark: SparkSession, settings: Settings, version: str) -> dict[str, Any]:
    """The recommendations table, plus the popularity list when the version has one."""
    parts: dict[str, Any] = {
        "recommendations": _read_parquet(
            spark, registry.output_path(settings, "recommendations", version), cache=False
        )
    }
    popular_file = registry.model_dir(settings, "recommendations", version) / registry.POPULAR_FILE
    if popular_file.is_file():
        data = _read_json(popular_file)
        articles = data.get("articles") if isinstance(data, dict) else None
        if isinstance(articles, list) and articles:
            parts["popular"] = tuple(str(a) for a in articles)
    return parts


Loader = Callable[[SparkSession, Settings, str], dict[str, Any]]

# registry model name -> (the ModelOutputs field holding its version, its loader)
MODEL_LOADERS: dict[str, tuple[str, Loader]] = {
    "segments": ("segments_version", _load_segments),
    "churn": ("churn_version", _load_churn),
    "recommendations": ("recs_version", _load_recommendations),
}


class ModelCache:
    """Loads each model version once; ``current()`` re-checks every CURRENT pointer.

    Keyed by (model name, path of the version directory), so two data roots never share
    an entry.

    Cheap to call per micro-batch: resolving CURRENT reads three small files, and a
    version already loaded is reused (the Spark ML models and cached tables).
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], dict[str, Any]] = {}

    def _get(self, key: tuple[str, str], load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self._loaded:
            # Keep only the newest version of each kind: old ones are released.
            for old in [k for k in self._loaded if k[0] == key[0]]:
                for value in self._loaded.pop(old).values():
                    if isinstance(value, DataFrame):
                        value.unpersist()
            self._loaded[key] = load()
        return self._loaded[key]

    def current(self, spark: SparkSession, settings: Settings) -> ModelOutputs:
        """The CURRENT outputs of every model (None where there is no version yet)."""
        parts: dict[str, Any] = {}
        for name, (version_field, loader) in MODEL_LOADERS.items():
            version = _safe_version(settings, name)
            if version is None:
                continue
            key = (name, str(registry.model_dir(settings, name, version)))
            loaded = self._get(key, partial(loader, spark, settings, version))
            parts.update(loaded)
            if any(v is not None for v in loaded.values()):
                parts[version_field] = version
        cust = customers_dir(settings)
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("serving: cannot read %s: %s", path, exc)
        return None


def _load_pipeline(path: Path, name: str) -> Any:
    from pyspark.ml import PipelineModel

    try:
        return PipelineModel.load(str(path))
    except Exception as exc:
        log.warning("serving: cannot load %s model %s: %s", name, path, exc)
        return None


def publish_view(
    spark: SparkSession, settings: Settings, features_df: DataFrame, models: ModelCache
) -> Path:
    """Build the view from ``features_df`` and the CURRENT models; publish a snapshot.

    Reads: the registry's CURRENT pointers, model dirs and output tables, through
    ``models``, the caller's cache (keep one for a stream run, so each model version is
    loaded once, and released when CURRENT moves on). Writes: a new snapshot
    ``settings.serving_dir/v=<version>/`` (Parquet) and moves CURRENT to it.
    Returns the published directory.
    """
    view = build_view(features_df, models.current(spark, settings))
    return snapshots.publish(
        settings.serving_dir, lambda tmp: view.write.mode("overwrite").parquet(str(tmp))
    )
