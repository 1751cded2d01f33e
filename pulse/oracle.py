"""Served = batch: what a customer is served, against an independent computation.

The oracle recomputes, with Spark and nothing of the serving code, what every customer
should be served as of the online store's stream clock:

- the features: ``compute_features`` over the lake (every event up to the clock);
- ``churn_probability`` and ``expected_value``: the models the store serves, loaded as
  Spark ML ``PipelineModel``s from the registry and applied with ``transform`` (null for
  a customer with no purchase day: the churn model is defined for buyers only);
  ``value_at_risk`` = their product;
- the segment: the segments table's row, else the saved K-Means pipeline's prediction
  named with the version's ``names.json``;
- the recommendations: the table's list in rank order, else the popularity list;
- the at-risk lists (by value at risk and by probability, ties by id).

``served_equals_batch`` then reads every customer through ``serving.read.lookup`` and
the lists through ``serving.read.at_risk``, and compares them field by field, joined by
customer id. The served model versions must be the registry's CURRENT ones. The
integration test (tests/integration/test_served_oracle.py) and ``pulse chaos`` use it.

The data root may be in an object store: Spark then reads the lake, the models and
their outputs through ``s3a`` (``reach_store`` points the session at the store).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runtime.settings import Settings
from schemas.tables import N_RECOMMENDATIONS

REL = 1e-9  # floats: relative (and absolute, below 1) tolerance
FEATURES_IGNORED = ("as_of",)  # compared separately: the clock


@dataclass
class Verdict:
    """The comparison: equal or not, what differed (first few), what was compared."""

    customers: int = 0
    clock: datetime | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    scored: int = 0  # customers with a churn probability

    @property
    def equal(self) -> bool:
        """True when nothing differed."""
        return not self.differences

    def note(self) -> str:
        """One line for a table or a log."""
        if self.equal:
            return (
                f"{self.customers:,} customers served = batch as of {self.clock} "
                f"({self.scored:,} scored; models {self.versions})"
            )
        return f"{len(self.differences)} differences, first: {self.differences[0]}"


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= REL * max(1.0, abs(b))
    return bool(a == b)


def reach_store(spark: Any, settings: Settings) -> None:
    """Point ``spark``'s ``s3a`` at ``settings``' object store (nothing for a local root).

    The session's options reach DataFrame reads, the context's Hadoop configuration
    Spark ML's loads; and a cached ``s3a`` client of the bucket made for another server
    (an earlier store with a bucket of the same name) is closed, so the next read makes
    one for this server (Hadoop caches a file system per scheme and bucket).
    """
    if not settings.on_object_store:
        return
    from runtime.spark import s3a_options, use_object_store

    use_object_store(spark, settings)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in s3a_options(settings).items():
        hadoop.set(key.removeprefix("spark.hadoop."), value)
    bucket = str(settings.data_root).split("://", 1)[1].split("/", 1)[0]
    jvm = spark.sparkContext._jvm
    cached = jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI(f"s3a://{bucket}/"), hadoop)
    if (cached.getConf().get("fs.s3a.endpoint") or None) != settings.s3_endpoint:
        cached.close()  # drops it from Hadoop's cache


def expected_rows(spark: Any, settings: Settings, clock: datetime, versions: dict[str, Any],
                  exclude_ids: Any = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every customer's expected view row (with expected_value, value_at_risk), by id."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from features.customer import compute_features
    from storage import registry
    from storage.lake import read_lake
    from storage.objects import spark_path

    reach_store(spark, settings)
    events = read_lake(spark, settings)
    if exclude_ids is not None and len(exclude_ids):
        skip = spark.createDataFrame([(i,) for i in exclude_ids.to_pylist()], "event_id string")
        events = events.join(F.broadcast(skip), "event_id", "left_anti")
    features = compute_features(events, clock).cache()
    rows = {r["customer_id"]: _utc(r.asDict()) for r in features.collect()}

    churn_v = versions.get("churn")
    for row in rows.values():
        row |= {"churn_probability": None, "expected_value": None, "churn_model_version": None,
                "churn_as_of": None, "segment_id": None, "segment_name": None,
                "segments_model_version": versions.get("segments"), "recommendations": None,
                "recs_model_version": versions.get("recommendations")}  # fmt: skip
    if churn_v is not None:
        model = PipelineModel.load(spark_path(registry.model_path(settings, "churn", churn_v)))
        scored = model.transform(features).select(
            "customer_id", vector_to_array(F.col("probability"))[1].alias("p"), "expected_spend"
        )
        for r in scored.collect():
            row = rows[r["customer_id"]]
            buyer = (row["frequency"] or 0) > 0
            row |= {
                "churn_probability": r["p"] if buyer else None,
                "expected_value": r["expected_spend"] if buyer else None,
                "churn_model_version": churn_v,
                "churn_as_of": row["as_of"],
            }
    seg_v = versions.get("segments")
    if seg_v is not None:
        names_file = registry.model_dir(settings, "segments", seg_v) / registry.SEGMENT_NAMES_FILE
        names = {int(k): v for k, v in json.loads(names_file.read_text()).items()}
        model = PipelineModel.load(spark_path(registry.model_path(settings, "segments", seg_v)))
        for r in model.transform(features).select("customer_id", "prediction").collect():
            sid = int(r["prediction"])
            rows[r["customer_id"]] |= {"segment_id": sid, "segment_name": names[sid]}
        table = spark.read.parquet(spark_path(registry.output_path(settings, "segments", seg_v)))
        for r in table.select("customer_id", "segment_id", "segment_name").collect():
            if r["customer_id"] in rows:
                rows[r["customer_id"]] |= {"segment_id": r["segment_id"],
                                           "segment_name": r["segment_name"]}  # fmt: skip
    recs_v = versions.get("recommendations")
    if recs_v is not None:
        popular_file = (
            registry.model_dir(settings, "recommendations", recs_v) / registry.POPULAR_FILE
        )
        popular = json.loads(popular_file.read_text())["articles"][:N_RECOMMENDATIONS]
        for row in rows.values():
            row["recommendations"] = list(popular)
        table = spark.read.parquet(
            spark_path(registry.output_path(settings, "recommendations", recs_v))
        )
        lists = table.groupBy("customer_id").agg(
            F.sort_array(F.collect_list(F.struct("rank", "article_id"))).alias("ranked")
        )
        for r in lists.collect():
            if r["customer_id"] in rows:
                ranked = [x["article_id"] for x in r["ranked"]]
                rows[r["customer_id"]]["recommendations"] = ranked[:N_RECOMMENDATIONS]
    features.unpersist()
    for row in rows.values():
        p, value = row["churn_probability"], row["expected_value"]
        row["value_at_risk"] = None if p is None or value is None else p * value
    return rows


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """Spark returns timestamps as naive datetimes in the session's zone (UTC here)."""
    return {
        k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
        for k, v in row.items()
    }


def ranking(rows: dict[str, dict[str, Any]], key: str, n: int) -> list[tuple[str, float]]:
    """The ``n`` customers with the highest ``key`` (ties by id), with their values."""
    have = [(cid, r[key]) for cid, r in rows.items() if r[key] is not None]
    return sorted(have, key=lambda kv: (-kv[1], kv[0]))[:n]


def served_equals_batch(
    spark: Any,
    settings: Settings,
    top: int = 20,
    exclude_ids: Any = None,
    require_current: bool = True,
    api: Callable[[str], Any] | None = None,
) -> Verdict:
    """Every customer's look-up and both at-risk lists against ``expected_rows``.

    ``exclude_ids``: lake events the stream rightly did not count (beyond its allowed
    lateness). ``require_current``: the served versions must be the registry's CURRENT
    ones (False where a retrain ran after the stream stopped: the stream picks up a
    version, so a stopped one serves the last it saw). ``api``: read the answers from
    `pulse serve` instead (a GET of a path -> its JSON body), compared in its JSON form.
    """
    from serving import read
    from storage import registry

    def lookup(cid: str, store: Any) -> dict[str, Any]:
        if api is None:
            return read.lookup(settings, cid, store=store, with_value=True)
        return dict(api(f"/customers/{cid}"))

    def at_risk(n: int, by_probability: bool) -> list[dict[str, Any]]:
        if api is None:
            return read.at_risk(settings, n, by_probability=by_probability)
        return list(
            api(f"/at-risk?n={n}&order={'probability' if by_probability else 'value'}")["rows"]
        )

    form = read.jsonable if api is not None else (lambda row: row)
    verdict = Verdict()
    reader = read.open_reader(settings)
    try:
        meta = reader.meta()
        if "clock_us" not in meta:
            verdict.differences.append("the online store has no stream clock")
            return verdict
        clock = datetime.fromtimestamp(meta["clock_us"] / 1e6, UTC)
        versions = meta.get("versions") or {}
        verdict.clock, verdict.versions = clock, versions
        for name in registry.MODELS if require_current else ():
            current = registry.current_version(settings, name)
            if versions.get(name) != current:
                verdict.differences.append(
                    f"{name}: the store serves {versions.get(name)}, CURRENT is {current}"
                )
        expected = expected_rows(spark, settings, clock, versions, exclude_ids)
        served_ids = {r[0] for chunk in reader.records() for r in chunk}
        if served_ids != set(expected):
            only = sorted(served_ids ^ set(expected))[:3]
            verdict.differences.append(
                f"customers: {len(served_ids):,} served, {len(expected):,} in the lake ({only})"
            )
        verdict.customers = len(expected)
        for cid in sorted(served_ids & set(expected)):
            got = lookup(cid, reader)
            want = form(expected[cid])
            for key, value in want.items():
                if key in FEATURES_IGNORED:
                    continue
                if not _close(got.get(key), value):
                    verdict.differences.append(f"{cid} {key}: served {got.get(key)!r}, "
                                               f"batch {value!r}")  # fmt: skip
            if got["as_of"] != form({"t": clock})["t"]:
                verdict.differences.append(f"{cid} as_of: served {got['as_of']}, clock {clock}")
            verdict.scored += got["churn_probability"] is not None
    finally:
        reader.close()
    for by_probability, key in ((False, "value_at_risk"), (True, "churn_probability")):
        served = at_risk(top, by_probability)
        wanted = ranking(expected, key, top)
        if len(served) != len(wanted):
            verdict.differences.append(f"at-risk by {key}: {len(served)} rows, batch {len(wanted)}")
        for rank, (row, (cid, value)) in enumerate(zip(served, wanted, strict=False), 1):
            # the same value at each rank, and each row's own value the batch's (two
            # customers whose values tie within REL may swap: that is not a difference)
            if not _close(row[key], value) or not _close(
                row[key], expected[row["customer_id"]][key]
            ):
                verdict.differences.append(
                    f"at-risk by {key} #{rank}: served {row['customer_id']} {row[key]!r}, "
                    f"batch {cid} {value!r}"
                )
    return verdict
