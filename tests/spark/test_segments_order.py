"""Segments do not depend on how the lake's rows happen to be partitioned."""

from __future__ import annotations

import random

from pyspark.sql import functions as F

from batch.frames import in_fixed_order
from batch.segments import build_pipeline, choose_k


def test_same_segments_from_any_partitioning(spark) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(4)
    rows = [
        (f"c{i:04d}", rng.randint(0, 600), rng.randint(1, 40), rng.lognormvariate(3, 1.2))
        for i in range(1500)
    ]
    base = spark.createDataFrame(
        rows, "customer_id string, recency_days int, frequency int, monetary double"
    )
    # the same customers, laid out as two different lakes might give them
    one = base.coalesce(1)
    other = base.repartition(7).orderBy(F.rand(9))
    results = []
    for frame in (one, other):
        feats = in_fixed_order(frame)
        k, scores = choose_k(feats, range(3, 6), sample_rows=1000)
        assigned = build_pipeline(k).fit(feats).transform(feats)
        results.append((k, scores, sorted(assigned.select("customer_id", "prediction").collect())))
    assert results[0] == results[1]
    assert len(set(r["prediction"] for r in results[0][2])) == results[0][0]  # k real segments
