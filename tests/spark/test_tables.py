"""schemas.tables agrees with the code that writes each table (features, outputs)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyspark.testing import assertSchemaEqual

from features.customer import compute_features
from schemas import tables
from schemas.transaction import spark_schema


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


def test_an_output_is_written_only_with_its_declared_columns(spark, settings) -> None:  # type: ignore[no-untyped-def]
    from batch.publish import write_output
    from runtime.errors import PulseError
    from storage import registry

    row = [("c1", 0, "Champions")]
    good = spark.createDataFrame(row, "customer_id string, segment_id int, segment_name string")
    path = write_output(good, settings, "segments", "v1")
    assert path == registry.output_path(settings, "segments", "v1")
    assert [tuple(r) for r in spark.read.parquet(str(path)).collect()] == row
    wide = spark.createDataFrame(row, "customer_id string, segment_id long, segment_name string")
    with pytest.raises(PulseError, match="segment_id"):
        write_output(wide, settings, "segments", "v2")
    assert not registry.output_path(settings, "segments", "v2").exists()
    with pytest.raises(KeyError, match="unknown output table"):
        tables.output_schema("nope")
