"""Segmentation: K-Means on scaled log RFM, k by silhouette, names from centroids.

Each run also measures its stability against the CURRENT segments version (before this
run can replace it): the adjusted Rand index on the customers in both, and how many
customers moved from which segment to which (``meta["stability"]``).

The saved PipelineModel starts from ``features_as_of`` columns (log transform
inside it), so serving can assign live customers with ``transform`` and map
``prediction`` to a name with ``names.json`` saved next to the model.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import (
    SQLTransformer,
    StandardScaler,
    StandardScalerModel,
    VectorAssembler,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch.frames import id_sample, in_fixed_order
from batch.publish import finish, gate, write_output
from scoring.segments import RFM_COLUMNS, RFM_SQL, SegmentScorer
from storage import registry
from storage.objects import spark_path

if TYPE_CHECKING:
    from batch.context import RetrainContext


def build_pipeline(k: int, seed: int = 42) -> Pipeline:
    """log RFM -> assemble -> standard-scale -> KMeans(k)."""
    return Pipeline(
        stages=[
            SQLTransformer(statement=RFM_SQL),
            VectorAssembler(inputCols=list(RFM_COLUMNS), outputCol="seg_raw"),
            StandardScaler(inputCol="seg_raw", outputCol="seg_vec", withMean=True, withStd=True),
            KMeans(k=k, seed=seed, featuresCol="seg_vec", predictionCol="prediction", maxIter=30),
        ]
    )


def export(model: PipelineModel, names: dict[int, str], version: str) -> dict[str, Any]:
    """The fitted pipeline's numbers for ``scoring.segments.SegmentScorer`` (``scorer.json``)."""
    scaler = cast(StandardScalerModel, model.stages[2])
    kmeans = cast(KMeansModel, model.stages[3])
    return SegmentScorer(
        version=version,
        mean=[float(v) for v in scaler.mean.toArray()],
        std=[float(v) for v in scaler.std.toArray()],
        centers=[[float(v) for v in c] for c in kmeans.clusterCenters()],
        names=dict(names),
    ).as_dict()


def choose_k(
    features: DataFrame, k_range: range = range(3, 9), sample_rows: int = 50_000, seed: int = 42
) -> tuple[int, dict[int, float]]:
    """Silhouette for each k (on a sample of about ``sample_rows``); the best k."""
    sample = id_sample(features, features.count(), sample_rows, seed).cache()
    scores: dict[int, float] = {}
    evaluator = ClusteringEvaluator(featuresCol="seg_vec", predictionCol="prediction")
    for k in k_range:
        if k >= sample.count():
            break
        model = build_pipeline(k, seed).fit(sample)
        scores[k] = float(evaluator.evaluate(model.transform(sample)))
    sample.unpersist()
    if not scores:
        raise ValueError("too few customers to segment")
    return max(scores, key=lambda k: scores[k]), scores


def name_segments(profile: list[dict]) -> dict[int, str]:
    """Name clusters from their mean recency, frequency and monetary value.

    Each cluster gets a recency score (lower recency is better) and a value score
    (frequency and monetary), as ranks in [0, 1] across clusters; recent+valuable
    = Champions/Loyal, recent+low value = New / Promising, lapsed+valuable = At
    risk, lapsed+low value = Hibernating (the most lapsed: Lost). Repeated names
    get a numeric suffix.
    """
    n = len(profile)

    def ranks(key: str, reverse: bool) -> dict[int, float]:
        order = sorted(profile, key=lambda p: p[key], reverse=reverse)
        return {p["segment_id"]: (i / (n - 1) if n > 1 else 1.0) for i, p in enumerate(order)}

    r = ranks("recency_days", reverse=True)  # most recent gets 1.0
    f = ranks("frequency", reverse=False)
    m = ranks("monetary", reverse=False)
    value = {s: (f[s] + m[s]) / 2 for s in r}
    best = max(r, key=lambda s: r[s] + value[s])
    worst = min(r, key=lambda s: r[s])
    names: dict[int, str] = {}
    used: dict[str, int] = {}
    for s in sorted(r, key=lambda s: -(r[s] + value[s])):
        if s == best:
            name = "Champions"
        elif r[s] >= 0.5:
            name = "Loyal" if value[s] >= 0.5 else "New / Promising"
        elif value[s] >= 0.5:
            name = "At risk"
        else:
            name = "Lost" if s == worst else "Hibernating"
        used[name] = used.get(name, 0) + 1
        names[s] = name if used[name] == 1 else f"{name} {used[name]}"
    return names


def profile(assigned: DataFrame) -> list[dict]:
    """Per segment: size and mean recency, frequency, monetary (original units)."""
    rows = (
        assigned.groupBy(F.col("prediction").alias("segment_id"))
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg("recency_days").alias("recency_days"),
            F.avg("frequency").alias("frequency"),
            F.avg("monetary").alias("monetary"),
        )
        .orderBy("segment_id")
        .collect()
    )
    return [
        {k: (float(v) if isinstance(v, float) else v) for k, v in r.asDict().items()} for r in rows
    ]


def adjusted_rand_index(counts: list[tuple[Any, Any, int]]) -> float | None:
    """ARI of two labellings from their contingency table ((label a, label b, customers)).

    ARI = (sum_ij C(n_ij, 2) - E) / (mean(sum_i C(a_i, 2), sum_j C(b_j, 2)) - E), with
    E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2): 1 for the same partition, about 0 for
    unrelated ones. None for fewer than two customers; 1.0 when both put everyone together.
    """

    def pairs(v: float) -> float:
        return v * (v - 1) / 2

    rows: dict[Any, float] = {}
    cols: dict[Any, float] = {}
    for a, b, n in counts:
        rows[a] = rows.get(a, 0) + n
        cols[b] = cols.get(b, 0) + n
    total = sum(rows.values())
    if total < 2:
        return None
    index = sum(pairs(n) for _, _, n in counts)
    sum_a, sum_b = sum(map(pairs, rows.values())), sum(map(pairs, cols.values()))
    expected = sum_a * sum_b / pairs(total)
    top = (sum_a + sum_b) / 2 - expected
    return 1.0 if top == 0 else float((index - expected) / top)


def stability(ctx: RetrainContext, assigned: DataFrame) -> dict[str, Any] | None:
    """This run's segments against the CURRENT version's, on the customers in both: the
    adjusted Rand index and the migration table (from segment -> to segment, customers).
    None when there is no CURRENT version (or its table is gone)."""
    previous = registry.current_version(ctx.settings, "segments")
    if previous is None:
        return None
    path = registry.output_path(ctx.settings, "segments", previous)
    if not path.is_dir():
        return None
    before = ctx.spark.read.parquet(spark_path(path)).select(
        "customer_id", F.col("segment_id").alias("from_id"), F.col("segment_name").alias("from")
    )
    moved = (
        before.join(assigned, "customer_id")
        .groupBy("from_id", "from", "to_id", "to")
        .agg(F.count(F.lit(1)).alias("customers"))
        .orderBy("from_id", "to_id")
        .collect()
    )
    counts = [(r["from_id"], r["to_id"], int(r["customers"])) for r in moved]
    both = sum(n for _, _, n in counts)
    same_name = sum(int(r["customers"]) for r in moved if r["from"] == r["to"])
    return {
        "previous_version": previous,
        "customers_in_both": both,
        "adjusted_rand_index": adjusted_rand_index(counts),
        "same_segment_name_share": same_name / both if both else None,
        "migration": [
            {"from": r["from"], "to": r["to"], "customers": int(r["customers"])} for r in moved
        ],
    }


def retrain(ctx: RetrainContext) -> dict[str, Any]:
    """K-Means on log RFM as of the cutoff; k by silhouette; named from centroids."""
    settings, opts, version = ctx.settings, ctx.opts, ctx.version
    feats = in_fixed_order(ctx.features_at(ctx.cutoff))
    with ctx.stage("segments: choose k by silhouette"):
        k, scores = choose_k(feats, range(opts.k_min, opts.k_max + 1))
    with ctx.stage(f"segments: fit k = {k} on all customers") as st:
        model = build_pipeline(k).fit(feats)
        assigned = model.transform(feats).cache()
        rows = profile(assigned)
        names = name_segments(rows)
        for row in rows:
            row["segment_name"] = names[row["segment_id"]]
        st.rows = sum(int(r["customers"]) for r in rows)
        model_path = registry.model_path(settings, "segments", version)
        model.write().overwrite().save(spark_path(model_path))
        names_path = registry.model_dir(settings, "segments", version) / registry.SEGMENT_NAMES_FILE
        names_path.write_text(json.dumps({str(k_): v for k_, v in names.items()}, indent=2))
        registry.write_scorer(settings, "segments", version, export(model, names, version))
        mapping = ctx.spark.createDataFrame(
            list(names.items()), "segment_id int, segment_name string"
        )
        out = (
            assigned.select("customer_id", F.col("prediction").cast("int").alias("segment_id"))
            .join(F.broadcast(mapping), "segment_id")
            .select("customer_id", "segment_id", "segment_name")
        )
        write_output(out, settings, "segments", version)
    with ctx.stage("segments: stability against the CURRENT version") as st:
        moves = stability(
            ctx,
            out.select(
                "customer_id", F.col("segment_id").alias("to_id"), F.col("segment_name").alias("to")
            ),
        )
        st.rows = moves["customers_in_both"] if moves else 0
    meta = {
        "model": "segments",
        "version": version,
        "params": {
            "k": k,
            "k_range": [opts.k_min, opts.k_max],
            "features": ["log1p recency", "log1p frequency", "log1p monetary"],
        },
        "window": ctx.window,
        "metrics": {
            "silhouette": scores[k],
            "silhouette_by_k": {str(a): b for a, b in scores.items()},
        },
        "profile": rows,
        "stability": moves,
        "names": {str(a): b for a, b in names.items()},
        "output": str(registry.output_path(settings, "segments", version)),
        "model_path": str(registry.model_path(settings, "segments", version)),
        # a clustering no better than random (silhouette <= 0) is not served
        "gate": gate(settings, "segments", "silhouette", scores[k], 0.0, opts.regression_tolerance),
    }
    assigned.unpersist()
    feats.unpersist()
    return finish(settings, "segments", version, meta)
