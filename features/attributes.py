"""Customer attributes (the Kaggle customers.csv columns) joined onto per-customer features.

The churn model is trained (``batch.churn``) and applied (``serving.view``) on the same
columns, joined the same way: this is the one definition of that join.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from schemas.tables import CUSTOMER_ATTRIBUTES


def with_customer_attributes(features: DataFrame, customers: DataFrame | None) -> DataFrame:
    """Left-join ``CUSTOMER_ATTRIBUTES`` onto ``features`` by customer_id.

    Attributes the customer table lacks (or all of them, without a table) become typed
    nulls, which the churn pipeline imputes.
    """
    out = features
    if customers is not None:
        present = [c for c in CUSTOMER_ATTRIBUTES if c in customers.columns]
        attrs = customers.select(
            "customer_id", *[F.col(c).cast(CUSTOMER_ATTRIBUTES[c]).alias(c) for c in present]
        )
        out = out.join(attrs, "customer_id", "left")
    for name, dtype in CUSTOMER_ATTRIBUTES.items():
        if name not in out.columns:
            out = out.withColumn(name, F.lit(None).cast(dtype))
    return out
