"""What the fault tests share besides fixtures: a case's context as they run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pulse.chaos import cases


def fault_context(settings: Any, spark: Any, root: Path, events: int, seed: int) -> cases.Context:
    """A case's context as the fault tests run it: one kill, the session's Spark for the
    recompute, 60 days of lateness (sparse data: see Context.lateness_days)."""
    context = cases.Context(
        base=settings, root=root, events=events, seed=seed, log=lambda _: None, kills=1,
        lateness_days=60,
    )  # fmt: skip
    context._spark = spark
    return context
