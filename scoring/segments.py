"""The served segmentation model without Spark: log RFM, standard scaling, nearest centre.

The model a retrain saves (``batch.segments``) is a Spark ``PipelineModel``: ``RFM_SQL``
(log recency, frequency and monetary value), a ``VectorAssembler``, a
``StandardScalerModel`` (with mean and std) and a ``KMeansModel``. ``SegmentScorer``
holds its numbers and the segment names, and assigns live customers in NumPy the way
Spark does: (x - mean) x (1 / std) per column (0 where std is 0), then the nearest
centre by squared Euclidean distance (the first on a tie).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.columns import coalesce, column

RFM_SQL = (
    "SELECT *, log1p(CAST(coalesce(recency_days, 0) AS DOUBLE)) AS seg_r, "
    "log1p(CAST(coalesce(frequency, 0) AS DOUBLE)) AS seg_f, "
    "log1p(greatest(CAST(coalesce(monetary, 0) AS DOUBLE), 0.0)) AS seg_m FROM __THIS__"
)
RFM_COLUMNS = ("seg_r", "seg_f", "seg_m")


def rfm(features: pa.Table) -> np.ndarray:
    """``RFM_SQL``'s three columns, one row per customer."""
    return np.column_stack(
        [
            np.log1p(coalesce(column(features, "recency_days"), 0.0)),
            np.log1p(coalesce(column(features, "frequency"), 0.0)),
            np.log1p(np.maximum(coalesce(column(features, "monetary"), 0.0), 0.0)),
        ]
    )


@dataclass(frozen=True)
class SegmentScorer:
    """One segmentation version: scaler, centres (scaled space) and segment id -> name."""

    version: str
    mean: list[float]
    std: list[float]
    centers: list[list[float]]
    names: dict[int, str]

    def assign(self, features: pa.Table) -> tuple[np.ndarray, list[str | None]]:
        """Live features -> (segment id, segment name) per row."""
        scale = np.array([1.0 / s if s != 0 else 0.0 for s in self.std])
        x = (rfm(features) - np.asarray(self.mean)) * scale
        centers = np.asarray(self.centers, np.float64)
        distance = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        ids = np.argmin(distance, axis=1) if len(x) else np.zeros(0, np.int64)
        return ids.astype(np.int32), [self.names.get(int(i)) for i in ids]

    def as_dict(self) -> dict[str, Any]:
        """Plain values for ``scorer.json`` (JSON keys are strings)."""
        data = asdict(self)
        data["names"] = {str(k): v for k, v in self.names.items()}
        return data | {"model": "segments"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentScorer:
        """Inverse of ``as_dict``."""
        return cls(
            version=str(data["version"]),
            mean=[float(v) for v in data["mean"]],
            std=[float(v) for v in data["std"]],
            centers=[[float(v) for v in c] for c in data["centers"]],
            names={int(k): str(v) for k, v in data["names"].items()},
        )
