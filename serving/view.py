"""The customer view: live features, live scores and the CURRENT model outputs.

A view row is one customer's live feature columns (``features.customer.features_table``)
followed by ``schemas.tables.VIEW_EXTRA_COLUMNS``:

- ``segment_id`` / ``segment_name``: the CURRENT segments table's row for a customer it
  holds (a segment is a model *output*, design.md's "Serving view"); for any other
  customer (first seen after that retrain), the segment the CURRENT segmentation model
  assigns to their live features, named as the version names it;
- ``churn_probability``: P(no purchase in the churn horizon, starting at the stream
  clock), the CURRENT churn model applied to the live features as of the stream clock
  (``churn_as_of``), with ``churn_model_version``; so a silent customer's probability
  ages with the clock like their recency does. Null for a customer with no purchase;
- ``recommendations``: the ``N_RECOMMENDATIONS`` article ids of the CURRENT table in rank
  order; a customer it does not hold gets that version's popularity list.

A model with no CURRENT version (or a version without an exported scorer) gives nulls,
never an error.

Three steps, each used by the stream (``serving.live``: the Parquet snapshot) and the
read path (``serving.read``: look-ups and the at-risk list), so both assemble a row the
same way:

- ``ModelCache.current``: resolves every CURRENT pointer, loads a version once (its
  scorers from ``scorer.json``, its tables as Arrow); no Spark;
- ``score``: the scorers on live features -> ``SCORED`` (NumPy);
- ``assemble``: features + scores + keyed outputs -> view rows (Arrow), joined by id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from runtime.settings import Settings
from schemas.tables import (
    LIVE_FEATURE_COLUMNS,
    N_RECOMMENDATIONS,
    VIEW_EXTRA_COLUMNS,
)
from scoring.churn import ChurnScorer
from scoring.segments import SegmentScorer
from storage import registry, snapshots
from storage.lake import ARROW_TYPES
from storage.objects import arrow_fs, write_parquet

log = logging.getLogger(__name__)

SEGMENT_TABLE = pa.schema([("customer_id", pa.string()), ("segment_id", pa.int32()),
                           ("segment_name", pa.string())])  # fmt: skip
RECS_TABLE = pa.schema([("customer_id", pa.string()), ("recommendations", pa.list_(pa.string()))])
# What ``score`` returns: a customer's live scores.
SCORED = pa.schema(
    [
        ("customer_id", pa.string()),
        ("churn_probability", pa.float64()),
        ("churn_as_of", pa.timestamp("us", tz="UTC")),
        ("churn_model_version", pa.string()),
        ("segment_id", pa.int32()),
        ("segment_name", pa.string()),
        ("segments_model_version", pa.string()),
        ("expected_value", pa.float64()),  # expected spend in the churn horizon
    ]
)
_ARROW_TYPES = {**ARROW_TYPES, "array<string>": pa.list_(pa.string())}
# The view's extra columns as Arrow types, from their one definition in schemas.tables.
VIEW_EXTRA = pa.schema([(n, _ARROW_TYPES[t]) for n, t in VIEW_EXTRA_COLUMNS.items()])


@dataclass(frozen=True)
class ModelOutputs:
    """The CURRENT model outputs; any part may be missing (None).

    ``segments``: ``SEGMENT_TABLE`` (the retrain's assignments). ``segmenter``: the
    segmentation version's scorer, for customers the table does not hold. ``churn``:
    the churn version's scorer. ``recommendations``: ``RECS_TABLE``; ``popular``: the
    list given to customers absent from it.
    """

    segments: pa.Table | None = None
    segmenter: SegmentScorer | None = None
    segments_version: str | None = None
    churn: ChurnScorer | None = None
    churn_version: str | None = None
    recommendations: pa.Table | None = None
    popular: tuple[str, ...] | None = None
    recs_version: str | None = None

    def versions(self) -> dict[str, str | None]:
        """The version of each model in use (None: none yet)."""
        return {
            "segments": self.segments_version,
            "churn": self.churn_version,
            "recommendations": self.recs_version,
        }

    def scorers(self) -> dict[str, dict[str, Any] | None]:
        """The scorers as plain values (what the online store's meta carries)."""
        return {
            "churn": None if self.churn is None else self.churn.as_dict(),
            "segments": None if self.segmenter is None else self.segmenter.as_dict(),
        }


def scorers_from(values: dict[str, Any] | None) -> dict[str, Any]:
    """``ModelOutputs.scorers()`` values -> the ``churn`` and ``segmenter`` fields."""
    values = values or {}
    churn, segments = values.get("churn"), values.get("segments")
    return {
        "churn": None if churn is None else ChurnScorer.from_dict(churn),
        "segmenter": None if segments is None else SegmentScorer.from_dict(segments),
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


# --- Scoring (NumPy, the versions' exported scorers) ------------------------------------------


def score(features: pa.Table, models: ModelOutputs) -> pa.Table:
    """Live features (Arrow) -> ``SCORED``: churn, expected value and the model's segment,
    in ``features`` order, as of the features' own ``as_of`` (``churn_as_of``).

    The CURRENT churn and segmentation versions, evaluated in NumPy from their exported
    numbers (``scoring``): no Spark. Without a model (or for a version that has no
    ``scorer.json``) the columns are null. A customer with no purchase day (only
    returns) has no churn probability and no expected value: the churn model is defined
    for buyers only (its label is "no purchase in H after buying"), so the answer is null.
    """
    n = features.num_rows
    columns: dict[str, Any] = {"customer_id": features["customer_id"]}
    churn, segmenter = models.churn, models.segmenter
    if n and churn is not None:
        probability, value = churn.score(features)
        buyer = pc.fill_null(features["frequency"], 0).to_numpy(zero_copy_only=False) > 0
        columns["churn_probability"] = pa.array(probability, mask=~buyer)
        columns["expected_value"] = pa.array(value, mask=~buyer)
        columns["churn_as_of"] = features["as_of"]
        columns["churn_model_version"] = pa.array([churn.version] * n, pa.string())
    if n and segmenter is not None:
        ids, names = segmenter.assign(features)
        columns["segment_id"] = pa.array(ids, pa.int32())
        columns["segment_name"] = pa.array(names, pa.string())
        columns["segments_model_version"] = pa.array([segmenter.version] * n, pa.string())
    return pa.table([_column(columns.get(f.name), n, f.type) for f in SCORED], schema=SCORED)


def _align(ids: pa.ChunkedArray | pa.Array, table: pa.Table) -> pa.Table:
    """An optional output's rows in the order of ``ids``: null rows for customers it does
    not hold (the segments table and the recommendation lists cover the customers of
    their retrain only)."""
    return table.take(pc.index_in(ids, value_set=table["customer_id"]))


def _column(values: Any, n: int, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    return pa.nulls(n, type_) if values is None else values.cast(type_)


def by_id(ids: pa.ChunkedArray | pa.Array, table: pa.Table) -> pa.Table:
    """``table``'s rows in the order of ``ids``, which must be exactly its customer ids.

    How two per-customer tables are combined: by id, never by position. Refuses tables
    whose ids differ (a missing, extra or repeated customer), with the first few named.
    """
    index = pc.index_in(ids, value_set=table["customer_id"])
    missing = pc.is_null(index)
    if table.num_rows != len(ids) or pc.any(missing).as_py():
        lacking = pc.filter(ids, missing).to_pylist()[:3]
        raise ValueError(
            f"per-customer tables differ: {len(ids):,} ids against {table.num_rows:,} rows"
            + (f" (no row for {lacking})" if lacking else " (repeated ids)")
        )
    if pc.count_distinct(index).as_py() != len(ids):
        raise ValueError("per-customer tables differ: repeated customer ids")
    return table.take(index)


# --- Assembly (Arrow) --------------------------------------------------------------------------


def assemble(features: pa.Table, scores: pa.Table, models: ModelOutputs) -> pa.Table:
    """Live features + their scores + the keyed outputs -> view rows, in ``features`` order.

    Segments: the table's row where it has one, else the model's assignment in
    ``scores``. Recommendations: the table's list, else the popularity list.
    """
    ids = features["customer_id"]
    n = features.num_rows
    live = by_id(ids, scores)
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


def publish_view(settings: Settings, view: pa.Table) -> UPath:
    """Write the whole view as one atomic Parquet snapshot under ``settings.serving_dir``."""
    return snapshots.publish(
        settings.serving_dir, lambda tmp: _write_parquet(view.sort_by("customer_id"), tmp)
    )


def _write_parquet(table: pa.Table, directory: UPath) -> None:
    write_parquet(table, directory / "part-00000.parquet", row_group_size=256_000)


# --- Registry access ---------------------------------------------------------------------------
# The registry (storage/registry.py) is owned by the batch layer; serving only reads it, on
# a disk or in an object store (``UPath``). A file that is missing or malformed is so for
# good: the part is served as None, with a warning. A file that cannot be read *now* (an
# object store unreachable, a disk error) raises instead, and ``ModelCache`` keeps serving
# the version it holds and tries again at its next call.


def _load_segments(settings: Settings, version: str) -> dict[str, Any]:
    """The segments table, plus the version's scorer when it has one (older versions: the
    table only)."""
    parts: dict[str, Any] = {}
    table = _read_table(registry.output_path(settings, "segments", version))
    if table is not None:
        parts["segments"] = table.select(SEGMENT_TABLE.names).cast(SEGMENT_TABLE)
    scorer = _read_scorer(settings, "segments", version, SegmentScorer.from_dict)
    if scorer is not None:
        parts["segmenter"] = scorer
    return parts


def _load_churn(settings: Settings, version: str) -> dict[str, Any]:
    return {"churn": _read_scorer(settings, "churn", version, ChurnScorer.from_dict)}


def _read_scorer(settings: Settings, name: str, version: str, parse: Callable[..., Any]) -> Any:
    """A version's scorer; None (with a warning) when it has none or it is malformed: a
    version trained before scorers were exported serves no scores until the next retrain.
    An error reading it now (OSError, an object store's client error) is raised."""
    try:
        data = registry.read_scorer(settings, name, version)
        if data is None:
            log.warning("serving: %s %s has no %s: retrain to serve its scores", name, version,
                        registry.SCORER_FILE)  # fmt: skip
            return None
        return parse(data)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("serving: cannot read the %s scorer of %s: %s", name, version, exc)
        return None


def _load_recommendations(settings: Settings, version: str) -> dict[str, Any]:
    """The recommendation lists, plus the popularity list when the version has one."""
    parts: dict[str, Any] = {}
    table = _read_table(registry.output_path(settings, "recommendations", version))
    if table is not None:
        parts["recommendations"] = recommendation_lists(table)
    popular_file = registry.model_dir(settings, "recommendations", version) / registry.POPULAR_FILE
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
    changed in the last ``current()`` call (the stream logs and stores them). When the
    registry cannot be read now (its object store unreachable for a moment), a model's
    version already loaded goes on being served, and the next call tries again: an
    outage never drops the scores until the next retrain.
    """

    def __init__(self) -> None:
        # model name -> (its version directory, the version, its loaded parts)
        self._held: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self.loaded_now: list[str] = []

    def current(self, settings: Settings) -> ModelOutputs:
        """The CURRENT outputs of every model (None where there is no version yet)."""
        parts: dict[str, Any] = {}
        self.loaded_now = []
        for name, (version_field, loader) in MODEL_LOADERS.items():
            held = self._held.get(name)
            try:
                version = registry.current_version(settings, name)
                if version is None:
                    continue
                key = str(registry.model_dir(settings, name, version))
                if held is None or held[0] != key:
                    held = (key, version, loader(settings, version))
                    self._held[name] = held  # only the newest version of each kind is kept
                    self.loaded_now.append(name)
            except Exception as exc:  # a disk error, or an object store unreachable now
                log.warning("serving: cannot read the registry's %s now (%s): %s", name,
                            _first_line(exc), "nothing to serve yet" if held is None
                            else f"serving {held[1]} until it can")  # fmt: skip
                if held is None:
                    continue
            _, version, loaded = held
            parts.update(loaded)
            if any(v is not None for v in loaded.values()):
                parts[version_field] = version
        return ModelOutputs(**parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _read_table(path: UPath) -> pa.Table | None:
    """A Parquet directory written by Spark, as Arrow (its _SUCCESS and .crc files skipped);
    None (with a warning) when it is missing or malformed."""
    import pyarrow.dataset as ds

    fs, where = arrow_fs(path)
    try:
        return ds.dataset(
            where, format="parquet", filesystem=fs, exclude_invalid_files=True
        ).to_table()
    except FileNotFoundError as exc:
        log.warning("serving: cannot read %s: %s", path, exc)
        return None
    except OSError:
        raise  # not readable now: the caller tries again
    except (ValueError, pa.ArrowException) as exc:
        log.warning("serving: cannot read %s: %s", path, exc)
        return None


def _read_json(path: UPath) -> Any:
    """A JSON file; None when it is absent (an older version) or malformed (warned)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.warning("serving: cannot read %s: %s", path, exc)
        return None
