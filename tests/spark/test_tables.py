"""schemas.tables agrees with the code that writes each table (features, serving view)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyspark.testing import assertSchemaEqual

from features.customer import compute_features
from schemas import tables
from schemas.transaction import spark_schema

pytestmark = pytest.mark.spark


def test_live_features_schema_matches_compute_features(spark) -> None:  # type: ignore[no-untyped-def]
    t = datetime(2020, 9, 20, tzinfo=UTC)
    row = ("e1", t, "c1", "0108775015", 1, 0.05, 2, "hm", t)
    events = spark.createDataFrame([row], spark_schema())
    features = compute_features(events, "2020-09-22")
    assertSchemaEqual(features.schema, tables.live_features_schema(), ignoreNullable=True)


def test_lake_schema_is_the_contract_plus_event_date() -> None:
    lake = tables.lake_schema()
    assert lake.fieldNames() == [*spark_schema().fieldNames(), "event_date"]
    assert lake["event_date"].dataType.simpleString() == "date"


def test_output_schemas() -> None:
    recs = tables.output_schema("recommendations")
    assert recs.simpleString() == (
        "struct<customer_id:string,rank:int,article_id:string,score:double,source:string>"
    )
    assert tables.output_schema("segments").fieldNames() == [
        "customer_id",
        "segment_id",
        "segment_name",
    ]
    with pytest.raises(KeyError, match="unknown output table"):
        tables.output_schema("nope")
