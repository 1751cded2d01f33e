"""Feature columns as NumPy arrays, with Spark SQL's ``coalesce`` and ``CAST AS DOUBLE``.

The scorers mirror SQL expressions over the live feature columns; these helpers read a
column of an Arrow table the way those expressions do.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def column(table: pa.Table, name: str) -> np.ndarray:
    """``CAST(name AS DOUBLE)``: floats, NaN for null (booleans as 0/1)."""
    col = table.column(name)
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def coalesce(*values: np.ndarray | float) -> np.ndarray:
    """SQL ``coalesce``: the first non-null (non-NaN) value, left to right."""
    out = np.asarray(values[-1], np.float64)
    for v in reversed(values[:-1]):
        v = np.asarray(v, np.float64)
        out = np.where(np.isnan(v), out, v)
    return np.asarray(out, np.float64)
