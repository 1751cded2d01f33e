"""Registering a model version: the quality gate, meta.json, output tables, CURRENT.

Shared by every model's ``retrain`` (``batch.recommend``, ``batch.churn``,
``batch.segments``): a version is written whole, then ``CURRENT`` moves to it only when
its gate passed.
"""

from __future__ import annotations

import math
from typing import Any

from pyspark.sql import DataFrame
from upath import UPath

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.tables import output_schema
from storage import registry
from storage.objects import spark_path


def gate(
    settings: Settings, name: str, key: str, value: float, baseline: float | None, tol: float
) -> dict[str, Any]:
    """Pass when ``value`` (higher is better) is >= the baseline and not much below CURRENT."""
    reasons = []
    if value is None or math.isnan(value):
        reasons.append(f"{key} is undefined")
    elif baseline is not None and not math.isnan(baseline) and value < baseline:
        reasons.append(f"{key} {value:.4f} < baseline {baseline:.4f}")
    current = registry.current_version(settings, name)
    current_value = None
    if current is not None:
        current_value = registry.read_meta(settings, name, current).get("gate", {}).get("value")
        if current_value is not None and value is not None and not math.isnan(value):
            floor = current_value * (1 - tol) if current_value > 0 else current_value - tol
            if value < floor:
                reasons.append(
                    f"{key} {value:.4f} < current {current} {current_value:.4f} - {tol:.0%}"
                )
    return {
        "metric": key,
        "value": value,
        "baseline": baseline,
        "current_version": current,
        "current_value": current_value,
        "passed": not reasons,
        "reasons": reasons,
    }


def finish(settings: Settings, name: str, version: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write meta.json, then move CURRENT if the gate passed."""
    meta["promoted"] = bool(meta["gate"]["passed"])
    registry.write_meta(settings, name, version, meta)
    if meta["promoted"]:
        registry.promote(settings, name, version)
    return meta


def write_output(df: DataFrame, settings: Settings, table: str, version: str) -> UPath:
    """Output ``table`` of run ``version`` as a few Parquet files (served tables are read
    whole), after checking its columns and types against ``schemas.tables``' declaration
    (readers rely on it); returns its path."""
    declared = [(f.name, f.dataType.simpleString()) for f in output_schema(table).fields]
    written = [(f.name, f.dataType.simpleString()) for f in df.schema.fields]
    if written != declared:
        raise PulseError(f"output {table!r} would be written as {written}, "
                         f"but schemas.tables declares {declared}")  # fmt: skip
    path = registry.output_path(settings, table, version)
    df.coalesce(2).write.mode("overwrite").parquet(spark_path(path))
    return path
