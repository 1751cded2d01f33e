"""Table schemas: dimensions (Kaggle columns), the lake, live features, model outputs, the view.

The event contract lives in ``schemas.transaction``; this module names every *table*
the system writes or reads, as Spark ``StructType`` builders (pyspark is imported
lazily, so the producer side can import the column lists without a JVM).

Tests (tests/spark/test_tables.py) prove that the code which writes these tables
(``features.customer``, ``serving.view``) produces exactly these columns and types.
"""

from __future__ import annotations

from typing import Any

#: Kaggle ``customers.csv`` columns, in file order, with their Spark type names.
#: FN/Active are 1.0 or null, age is a float like "21.0" in the file.
CUSTOMER_COLUMNS: dict[str, str] = {
    "customer_id": "string",
    "FN": "double",
    "Active": "double",
    "club_member_status": "string",
    "fashion_news_frequency": "string",
    "age": "double",
    "postal_code": "string",
}

#: The customer attributes the churn model takes, with their types (a subset of
#: ``CUSTOMER_COLUMNS``). The batch layer trains on them and serving scores live customers
#: with them, so both must join the same ones; all nullable, imputed inside the pipeline.
CUSTOMER_ATTRIBUTES: dict[str, str] = {
    name: CUSTOMER_COLUMNS[name]
    for name in ("FN", "Active", "club_member_status", "fashion_news_frequency", "age")
}

#: Kaggle ``articles.csv`` columns, in file order. ``article_id`` stays a 10-char
#: string (leading zero); codes are ints, names and descriptions strings.
ARTICLE_COLUMNS: dict[str, str] = {
    "article_id": "string",
    "product_code": "int",
    "prod_name": "string",
    "product_type_no": "int",
    "product_type_name": "string",
    "product_group_name": "string",
    "graphical_appearance_no": "int",
    "graphical_appearance_name": "string",
    "colour_group_code": "int",
    "colour_group_name": "string",
    "perceived_colour_value_id": "int",
    "perceived_colour_value_name": "string",
    "perceived_colour_master_id": "int",
    "perceived_colour_master_name": "string",
    "department_no": "int",
    "department_name": "string",
    "index_code": "string",
    "index_name": "string",
    "index_group_no": "int",
    "index_group_name": "string",
    "section_no": "int",
    "section_name": "string",
    "garment_group_no": "int",
    "garment_group_name": "string",
    "detail_desc": "string",
}

#: The lake's partition column, added to the contract fields.
LAKE_PARTITION = "event_date"

#: ``features.customer.features_as_of`` output, one row per customer.
LIVE_FEATURE_COLUMNS: dict[str, str] = {
    "customer_id": "string",
    "as_of": "timestamp",
    "first_purchase_date": "date",
    "last_purchase_date": "date",
    "recency_days": "int",
    "tenure_days": "int",
    "frequency": "bigint",
    "n_events": "bigint",
    "monetary": "double",
    "spend_per_purchase_day": "double",
    "n_events_7d": "bigint",
    "spend_7d": "double",
    "n_events_30d": "bigint",
    "spend_30d": "double",
    "n_events_90d": "bigint",
    "spend_90d": "double",
    "mean_days_between": "double",
    "online_share": "double",
    "days_overdue": "double",
    "activity_trend_30d": "double",
    "at_risk": "boolean",
}

#: Recommendations served per customer (the K of MAP@K and the other ranking metrics).
N_RECOMMENDATIONS = 12

#: Model output tables at ``outputs/<table>/<version>/`` (interface 4).
OUTPUT_COLUMNS: dict[str, dict[str, str]] = {
    "recommendations": {
        "customer_id": "string",
        "rank": "int",  # 1..N_RECOMMENDATIONS
        "article_id": "string",
        "score": "double",
        "source": "string",  # which recommender filled the slot (als, popularity, ...)
    },
    "churn_scores": {
        "customer_id": "string",
        "as_of": "timestamp",
        "churn_probability": "double",
    },
    "value": {  # BG/NBD and Gamma-Gamma per customer, as of the churn cutoff
        "customer_id": "string",
        "as_of": "timestamp",
        "expected_purchases": "double",
        "expected_spend": "double",
        "p_alive": "double",
    },
    "segments": {
        "customer_id": "string",
        "segment_id": "int",
        "segment_name": "string",
    },
}

#: Columns the serving view adds after the live feature columns (interface 5).
VIEW_EXTRA_COLUMNS: dict[str, str] = {
    "segment_id": "int",
    "segment_name": "string",
    "segments_model_version": "string",
    "churn_probability": "double",
    "churn_as_of": "timestamp",  # the stream clock the churn score was computed at
    "churn_model_version": "string",
    "recommendations": "array<string>",
    "recs_model_version": "string",
}


def _spark_type(kind: str) -> Any:
    from pyspark.sql import types as T

    if kind.startswith("array<") and kind.endswith(">"):
        return T.ArrayType(_spark_type(kind[6:-1]))
    simple = {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "bigint": T.LongType(),
        "double": T.DoubleType(),
        "boolean": T.BooleanType(),
        "date": T.DateType(),
        "timestamp": T.TimestampType(),
    }
    return simple[kind]


def _struct(columns: dict[str, str]) -> Any:
    from pyspark.sql import types as T

    return T.StructType([T.StructField(name, _spark_type(kind)) for name, kind in columns.items()])


def lake_schema() -> Any:
    """The lake's columns: the contract's typed fields + ``event_date`` (partition)."""
    from pyspark.sql import types as T

    from schemas.transaction import spark_schema

    return T.StructType([*spark_schema().fields, T.StructField(LAKE_PARTITION, T.DateType())])


def live_features_schema() -> Any:
    """The live feature snapshot (``features_as_of`` output)."""
    return _struct(LIVE_FEATURE_COLUMNS)


def output_schema(table: str) -> Any:
    """One model output table: ``recommendations``, ``churn_scores``, ``value`` or
    ``segments`` (``batch.publish.write_output`` checks every write against it)."""
    if table not in OUTPUT_COLUMNS:
        raise KeyError(f"unknown output table {table!r} (one of {', '.join(OUTPUT_COLUMNS)})")
    return _struct(OUTPUT_COLUMNS[table])


def serving_view_schema() -> Any:
    """The serving view: live feature columns, then segment, churn and recommendations."""
    return _struct({**LIVE_FEATURE_COLUMNS, **VIEW_EXTRA_COLUMNS})
