"""The customer view: live features, live scores and the CURRENT model outputs.

A view row is one customer's live feature columns (``features.customer.features_table``)
followed by ``schemas.tables.VIEW_EXTRA_COLUMNS``:

- ``segment_id`` / ``segment_name``: the CURRENT segments table's row for a customer it
  holds (a segment is a model *output*, design.md's "Serving view"); for any other
  customer (first seen after that retrain), the segment the CURRENT segmentation model
  assigns to their live features, named with the version's ``names.json``;
- ``churn_probability``: the CURRENT churn model applied to the live features (joined
  with the customer attributes), with ``churn_as_of``, the stream clock it was
  computed at, and ``churn_model_version``;
- ``recommendations``: the ``N_RECOMMENDATIONS`` article ids of the CURRENT table in rank
  order; a customer it does not hold gets that version's popularity list.

A model with no CURRENT version gives nulls, never an error.

Three steps, each used by the stream (``serving.live``) and the read path
(``serving.read``), so a look-up and the Parquet snapshot assemble a row the same way:

- ``ModelCache.current``: resolves every CURRENT pointer, loads a version once (the
  Spark ML models; the tables as Arrow);
- ``score``: one Spark job applies the churn and segmentation models to live features
  -> ``SCORE_COLUMNS`` (what the online store keeps per customer);
- ``assemble``: features + scores + keyed outputs -> view rows (Arrow, no Spark).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.attributes import with_customer_attributes
from runtime.settings import Settings
from schemas.tables import (
    CUSTOMER_ATTRIBUTES,
    LIVE_FEATURE_COLUMNS,
    N_RECOMMENDATIONS,
    VIEW_EXTRA_COLUMNS,
)
from serving.online import SCORE_COLUMNS
from storage import registry, snapshots
from storage.lake import customers_dir

if TYPE_CHECKING:  # Spark and pyarrow.dataset (pandas) load only when scoring or reading
    from pyspark.sql import DataFrame, SparkSession  # outputs: a look-up starts faster

log = logging.getLogger(__name__)

SEGMENT_TABLE = pa.schema([("customer_id", pa.string()), ("segment_id", pa.int32()),
                           ("segment_name", pa.string())])  # fmt: skip
RECS_TABLE = pa.schema([("customer_id", pa.string()), ("recommendations", pa.list_(pa.string()))])
SCORES = pa.schema(
    [
        ("customer_id", pa.string()),
        ("churn_probability", pa.float64()),
        ("churn_as_of", pa.timestamp("us", tz="UTC")),
        ("churn_model_version", pa.string()),
        ("segment_id", pa.int32()),
        ("segment_name", pa.string()),
        ("segments_model_version", pa.string()),
    ]
)
# What ``score`` returns and the online store keeps: SCORES + the expected value (spend in
# the churn horizon, from a churn model that computes it; null from one that does not).
SCORED = SCORES.append(pa.field("expected_value", pa.float64()))
assert tuple(SCORED.names[1:]) == SCORE_COLUMNS
_ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int32(),
    "double": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "array<string>": pa.list_(pa.string()),
}
# The view's extra columns as Arrow types, from their one definition in schemas.tables.
VIEW_EXTRA = pa.schema([(n, _ARROW_TYPES[t]) for n, t in VIEW_EXTRA_COLUMNS.items()])


@dataclass(frozen=True)
class ModelOutputs:
    """The CURRENT model outputs; any part may be missing (None).

    ``segments``: ``SEGMENT_TABLE``. ``segments_model``: the fitted segmentation
    PipelineModel (live feature columns -> ``prediction``), ``segment_names`` its
    prediction -> name mapping. ``churn_model``: a PipelineModel that outputs
    ``probability``. ``recommendations``: ``RECS_TABLE``; ``popular``: the list given
    to customers absent from it. ``customers``: customer_id plus any of
    ``CUSTOMER_ATTRIBUTES`` (Arrow).
    """

    segments: pa.Table | None = None
    segments_model: Any = None
    segment_names: dict[int, str] | None = None
    segments_version: str | None = None
    churn_model: Any = None
    churn_version: str | None = None
    recommendations: pa.Table | None = None
    popular: tuple[str, ...] | None = None
    recs_version: str | None = None
    customers: pa.Table | None = None

    def versions(self) -> dict[str, str | None]:
        """The version of each model in use (None: none yet)."""
        return {
            "segments": self.segments_version,
            "churn": self.churn_version,
            "recommendations": self.recs_version,
        }


def recommendation_lists(recommendations: pa.Table) -> pa.Table:
    """Registry rows (customer_id, rank, article_id) -> ``RECS_TABLE`` (ids in rank order)."""
    ranked = recommendations.select(["customer_id", "rank", "article_id"]).sort_by(
        [("customer_id", "ascending"), ("rank", "ascending")]
    )
    # Single-threaded grouping keeps each group's rows in input (rank) order.
    grouped = ranked.group_by("customer_id", use_threads=False).aggregate([("article_id", "list")])
    lists = pc.list_slice(grouped["article_id_list"], 0, N_RECOMMENDATIONS)
    return pa.table([grouped["customer_id"], lists.cast(pa.list_(pa.string()))], schema=RECS_TABLE)


# --- Scoring (Spark ML) ------------------------------------------------------------------------


def churn_scores(
    features: DataFrame, model: Any, customers: DataFrame | None, carry: Sequence[str] = ()
) -> DataFrame:
    """Apply a churn PipelineModel to live features -> customer_id, *carry, churn_probability,
    expected_value (the model's ``expected_spend`` column; null when it has none)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    scored = model.transform(with_customer_attributes(features, customers))
    value = F.col("expected_spend") if "expected_spend" in scored.columns else F.lit(None)
    return scored.select(
        "customer_id",
        *carry,
        vector_to_array(F.col("probability"))[1].cast("double").alias("churn_probability"),
        value.cast("double").alias("expected_value"),
    )


def with_segment(features: DataFrame, model: Any, names: dict[int, str]) -> DataFrame:
    """Apply a segmentation PipelineModel: ``features`` + segment_id, segment_name."""
    from pyspark.sql import functions as F

    pairs = [F.lit(x) for sid, name in sorted(names.items()) for x in (int(sid), name)]
    segment_id = F.col("prediction").cast("int")
    return model.transform(features).select(
        *features.columns,
        segment_id.alias("segment_id"),
        F.create_map(*pairs)[segment_id].cast("string").alias("segment_name"),
    )


def segment_assignments(features: DataFrame, model: Any, names: dict[int, str]) -> DataFrame:
    """Apply a segmentation PipelineModel -> customer_id, segment_id, segment_name."""
    return with_segment(features, model, names).select("customer_id", "segment_id", "segment_name")


def score(
    spark: SparkSession, features: pa.Table, models: ModelOutputs, as_of: datetime
) -> pa.Table:
    """Live features (Arrow) -> ``SCORED``: churn, expected value and the model's segment,
    one Spark job.

    ``as_of`` is the stream clock the features were evaluated at (``churn_as_of``).
    Without a model the columns are null.
    """
    n = features.num_rows
    columns: dict[str, pa.Array] = {"customer_id": features["customer_id"]}
    churn = models.churn_model
    seg = models.segments_model if models.segment_names else None
    scored: pa.Table | None = None
    if n and (churn is not None or seg is not None):
        # One narrow plan (segment, then churn, on the same rows: no join) over a cached
        # frame: the models' plans read their input more than once, and every read of a
        # frame made from local Arrow data re-sends it. 186k customers: 40 s -> 3 s.
        df = spark.createDataFrame(features.drop_columns(["as_of"])).cache()
        try:
            frame, carry = df, ["customer_id"]
            if seg is not None:
                frame = with_segment(frame, seg, models.segment_names or {})
                carry += ["segment_id", "segment_name"]
            if churn is not None:
                attrs = _attributes_frame(spark, models, features)
                frame = churn_scores(frame, churn, attrs, carry[1:])
            else:
                frame = frame.select(*carry)
            scored = _align(features["customer_id"], frame.toArrow())
        finally:
            df.unpersist()
    version = pa.array([models.churn_version] * n, pa.string())
    if scored is not None and churn is not None:
        columns["churn_probability"] = scored["churn_probability"]
        columns["churn_as_of"] = pa.array([as_of] * n, pa.timestamp("us", tz="UTC"))
        columns["churn_model_version"] = version
        columns["expected_value"] = scored["expected_value"]
    if scored is not None and seg is not None:
        columns["segment_id"] = scored["segment_id"]
        columns["segment_name"] = scored["segment_name"]
        columns["segments_model_version"] = pa.array([models.segments_version] * n, pa.string())
    return pa.table(
        [columns.get(f.name, pa.nulls(n, f.type)).cast(f.type) for f in SCORED], schema=SCORED
    )


def _attributes_frame(
    spark: SparkSession, models: ModelOutputs, features: pa.Table
) -> DataFrame | None:
    """The customer attributes of just these customers, as a small Spark frame."""
    if models.customers is None:
        return None
    wanted = pc.is_in(models.customers["customer_id"], value_set=features["customer_id"])
    return spark.createDataFrame(models.customers.filter(wanted))


def _align(ids: pa.ChunkedArray | pa.Array, table: pa.Table) -> pa.Table:
    """``table``'s rows in the order of ``ids`` (null rows for ids it lacks)."""
    return table.take(pc.index_in(ids, value_set=table["customer_id"]))


# --- Assembly (Arrow) --------------------------------------------------------------------------


def assemble(features: pa.Table, scores: pa.Table, models: ModelOutputs) -> pa.Table:
    """Live features + their scores + the keyed outputs -> view rows, in ``features`` order.

    Segments: the table's row where it has one, else the model's assignment in
    ``scores``. Recommendations: the table's list, else the popularity list.
    """
    ids = features["customer_id"]
    n = features.num_rows
    live = _align(ids, scores)
    seg_id, seg_name = live["segment_id"], live["segment_name"]
    if models.segments is not None:
        table = _align(ids, models.segments)
        seg_id = pc.coalesce(table["segment_id"], seg_id)
        seg_name = pc.if_else(pc.is_valid(table["segment_id"]), table["segment_name"], seg_name)
    recs = pa.nulls(n, pa.list_(pa.string()))
    if models.recommendations is not None:
        recs = _align(ids, models.recommendations)["recommendations"]
    if models.popular:
        popular = pa.scalar(list(models.popular[:N_RECOMMENDATIONS]), pa.list_(pa.string()))
        recs = pc.if_else(pc.is_valid(recs), recs, popular)
    extra = {
        "segment_id": seg_id,
        "segment_name": seg_name,
        "segments_model_version": _constant(models.segments_version, n),
        "churn_probability": live["churn_probability"],
        "churn_as_of": live["churn_as_of"],
        "churn_model_version": live["churn_model_version"],
        "recommendations": recs,
        "recs_model_version": _constant(models.recs_version, n),
    }
    return pa.table(
        [features[c] for c in LIVE_FEATURE_COLUMNS]
        + [_flat(extra[f.name]).cast(f.type) for f in VIEW_EXTRA],
        names=[*LIVE_FEATURE_COLUMNS, *VIEW_EXTRA.names],
    )


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    return values


def _constant(value: str | None, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def publish_view(settings: Settings, view: pa.Table) -> Path:
    """Write the whole view as one atomic Parquet snapshot under ``settings.serving_dir``."""
    return snapshots.publish(
        settings.serving_dir, lambda tmp: _write_parquet(view.sort_by("customer_id"), tmp)
    )


def _write_parquet(table: pa.Table, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / "part-00000.parquet", row_group_size=256_000)


# --- Registry access ---------------------------------------------------------------------------
# The registry (storage/registry.py) is owned by the batch layer; serving only reads it.


def _load_segments(settings: Settings, version: str) -> dict[str, Any]:
    """The segments table, plus the segmentation model and its names when the version has
    them (older versions: the table only)."""
    parts: dict[str, Any] = {}
    table = _read_table(registry.output_path(settings, "segments", version))
    if table is not None:
        parts["segments"] = table.select(SEGMENT_TABLE.names).cast(SEGMENT_TABLE)
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


def _load_churn(settings: Settings, version: str) -> dict[str, Any]:
    return {"churn_model": _load_pipeline(registry.model_path(settings, "churn", version), "churn")}


def _load_recommendations(settings: Settings, version: str) -> dict[str, Any]:
    """The recommendation lists, plus the popularity list when the version has one."""
    parts: dict[str, Any] = {}
    table = _read_table(registry.output_path(settings, "recommendations", version))
    if table is not None:
        parts["recommendations"] = recommendation_lists(table)
    popular_file = registry.model_dir(settings, "recommendations", version) / registry.POPULAR_FILE
    if popular_file.is_file():
        data = _read_json(popular_file)
        articles = data.get("articles") if isinstance(data, dict) else None
        if isinstance(articles, list) and articles:
            parts["popular"] = tuple(str(a) for a in articles)
    return parts


Loader = Callable[[Settings, str], dict[str, Any]]

# registry model name -> (the ModelOutputs field holding its version, its loader)
MODEL_LOADERS: dict[str, tuple[str, Loader]] = {
    "segments": ("segments_version", _load_segments),
    "churn": ("churn_version", _load_churn),
    "recommendations": ("recs_version", _load_recommendations),
}


class ModelCache:
    """Loads each model version once; ``current()`` re-checks every CURRENT pointer.

    Cheap to call per micro-batch: resolving CURRENT reads three small files, and a
    version already loaded is reused. ``loaded_now`` names the models whose version
    changed in the last ``current()`` call (the stream logs and stores them).
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], dict[str, Any]] = {}
        self._customers: tuple[float, pa.Table | None] | None = None
        self.loaded_now: list[str] = []

    def current(self, settings: Settings) -> ModelOutputs:
        """The CURRENT outputs of every model (None where there is no version yet)."""
        parts: dict[str, Any] = {}
        self.loaded_now = []
        for name, (version_field, loader) in MODEL_LOADERS.items():
            version = _safe_version(settings, name)
            if version is None:
                continue
            key = (name, str(registry.model_dir(settings, name, version)))
            if key not in self._loaded:
                for old in [k for k in self._loaded if k[0] == name]:
                    del self._loaded[old]  # keep only the newest version of each kind
                self._loaded[key] = loader(settings, version)
                self.loaded_now.append(name)
            loaded = self._loaded[key]
            parts.update(loaded)
            if any(v is not None for v in loaded.values()):
                parts[version_field] = version
        parts["customers"] = self._customer_attributes(settings)
        return ModelOutputs(**parts)

    def _customer_attributes(self, settings: Settings) -> pa.Table | None:
        """The ingested customer attributes, re-read when the table changes."""
        path = customers_dir(settings)
        stamp = max((p.stat().st_mtime for p in path.rglob("*.parquet")), default=0.0)
        if self._customers is None or self._customers[0] != stamp:
            table = _read_table(path) if stamp else None
            if table is not None:
                present = [c for c in CUSTOMER_ATTRIBUTES if c in table.column_names]
                table = table.select(["customer_id", *present])
            self._customers = (stamp, table)
        return self._customers[1]


def _safe_version(settings: Settings, name: str) -> str | None:
    """CURRENT version of ``name``; None (with a warning) if the registry can't say."""
    try:
        return registry.current_version(settings, name)
    except Exception as exc:  # a half-set-up registry must not stop the stream
        log.warning("serving: cannot resolve CURRENT %s: %s", name, exc)
        return None


def _read_table(path: Path) -> pa.Table | None:
    """A Parquet directory written by Spark, as Arrow (its _SUCCESS and .crc files skipped)."""
    import pyarrow.dataset as ds

    try:
        return ds.dataset(str(path), format="parquet", exclude_invalid_files=True).to_table()
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("serving: cannot read %s: %s", path, exc)
        return None


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
