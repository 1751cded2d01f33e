"""Read the published customer view without Spark (pyarrow), for `pulse view`.

The reader resolves ``settings.serving_dir/CURRENT`` once and reads that snapshot
directory only, so it always sees one complete version of the view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds

from runtime.errors import PulseError
from runtime.settings import Settings
from storage import snapshots


def current_snapshot(settings: Settings) -> Path:
    """The current view snapshot directory; PulseError if none was published yet."""
    path = snapshots.current(settings.serving_dir)
    if path is None:
        raise PulseError(
            f"no customer view published yet under {settings.serving_dir} "
            "(run `pulse stream` with a retrained model, or `pulse demo`)"
        )
    return path


def _dataset(path: Path) -> ds.Dataset:
    # Spark writes _SUCCESS and .crc files next to the Parquet parts: read Parquet only.
    return ds.dataset(str(path), format="parquet", exclude_invalid_files=True)


def customer(settings: Settings, customer_id: str) -> dict[str, Any]:
    """One customer's view row as a plain dict; PulseError if the customer is unknown."""
    path = current_snapshot(settings)
    table = _dataset(path).to_table(filter=pc.field("customer_id") == customer_id)
    if table.num_rows == 0:
        raise PulseError(f"unknown customer {customer_id!r} (not in the view {path.name})")
    return table.slice(0, 1).to_pylist()[0]


def at_risk(settings: Settings, n: int) -> list[dict[str, Any]]:
    """The ``n`` customers with the highest churn probability (nulls last), as dicts."""
    columns = [
        "customer_id",
        "churn_probability",
        "recency_days",
        "frequency",
        "monetary",
        "segment_name",
        "at_risk",
        "as_of",
    ]
    table = _dataset(current_snapshot(settings)).to_table(columns=columns)
    table = table.filter(pc.is_valid(table["churn_probability"]))
    order = pc.sort_indices(
        table, sort_keys=[("churn_probability", "descending"), ("customer_id", "ascending")]
    )
    return table.take(order).slice(0, n).to_pylist()
