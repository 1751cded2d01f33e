"""The catalog in Spark (``storage.catalog.register_tables``): the same names give the
same rows as ``pulse sql`` (DuckDB) on the same data root, compared by id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sql_catalog as shop
from sql_catalog import V1

from runtime.settings import Settings
from storage import catalog
from storage.sql import query_table


@pytest.fixture(scope="module")
def on(jvm_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = jvm_settings.model_copy(update={"data_root": tmp_path_factory.mktemp("sql-spark")})
    shop.build(settings)
    return settings


@pytest.fixture(scope="module")
def registered(spark, on: Settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return catalog.register_tables(spark, on)


def by_key(rows: list[dict[str, Any]], *key: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {tuple(r[k] for k in key): r for r in rows}
    assert len(out) == len(rows), "a key twice"
    return out


def test_spark_views_give_the_rows_duckdb_gives(spark, on: Settings, registered) -> None:  # type: ignore[no-untyped-def]
    assert set(registered) == {*catalog.TABLES, *catalog.versioned_names(on)}
    cases = {
        "SELECT event_id, customer_id, article_id, quantity, unit_price, event_date "
        "FROM transactions": ("event_id",),
        "SELECT customer_id, churn_probability FROM churn_scores": ("customer_id",),
        "SELECT customer_id, rank, article_id, score FROM recommendations": ("customer_id", "rank"),
        "SELECT model, version, current, candidate, metric, value FROM model_metrics": (
            "model", "version", "candidate", "metric"),
        "SELECT customer_id, age FROM customers": ("customer_id",),
        "SELECT customer_id, recommendations, churn_probability FROM customer_view": (
            "customer_id",),
    }  # fmt: skip
    for sql, key in cases.items():
        in_spark = [r.asDict() for r in spark.sql(sql).collect()]
        in_duckdb = query_table(on, sql).to_pylist()
        assert in_duckdb, sql
        assert by_key(in_spark, *key) == by_key(in_duckdb, *key), sql


def test_a_version_is_a_backquoted_view(spark, on: Settings, registered) -> None:  # type: ignore[no-untyped-def]
    sql = f"SELECT customer_id, churn_probability FROM `churn_scores@{V1}`"
    in_spark = by_key([r.asDict() for r in spark.sql(sql).collect()], "customer_id")
    assert in_spark == by_key(query_table(on, sql).to_pylist(), "customer_id")
    assert in_spark == by_key(
        shop.churn_scores(V1).select(["customer_id", "churn_probability"]).to_pylist(),
        "customer_id",
    )


def test_absent_tables_are_skipped_and_say_why(spark, on: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = on.model_copy(update={"data_root": tmp_path})
    try:
        registered = catalog.register_tables(spark, empty)
        assert set(registered) == set(catalog.TABLES)
        assert "`pulse retrain` creates it" in registered["churn_scores"]
        assert not spark.catalog.tableExists("churn_scores")  # the earlier call's view is gone
    finally:
        catalog.register_tables(spark, on)
