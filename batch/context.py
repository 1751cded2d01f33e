"""What one retrain run shares between its models: the events read once, the customer-day
table, the features as of each cutoff, and a stage table of where the time went.

``batch.retrain.retrain`` builds one :class:`RetrainContext` per run and hands it to each
model's ``retrain`` (``batch.recommend``, ``batch.churn``, ``batch.segments``). A model
asks the context for features as of a date instead of recomputing them from the events,
so the lake is read once and the customer-day aggregation runs once per run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.params import ChurnParams, RecParams
from features.customer import customer_state, features_as_of
from features.time import as_of_for
from runtime.settings import Settings
from storage import registry


@dataclass(frozen=True)
class RetrainOptions:
    """What to train and how; defaults fit a 2-core laptop."""

    as_of: date | None = None
    holdout_days: int = 7
    models: tuple[str, ...] = registry.MODELS
    rec: RecParams = field(default_factory=RecParams)
    churn: ChurnParams = field(default_factory=ChurnParams)
    k_min: int = 3
    k_max: int = 8
    regression_tolerance: float = 0.10  # relative drop vs CURRENT that still passes
    progress: bool = True


@dataclass
class Stage:
    """One timed step of a run: its name, wall seconds and the rows it produced (if counted)."""

    name: str
    seconds: float = 0.0
    rows: int | None = None


@dataclass
class StageLog:
    """The stages of a run in order; ``table()`` renders them for `pulse retrain`."""

    stages: list[Stage] = field(default_factory=list)
    progress: bool = False

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Time the block; the caller may set ``.rows`` on the yielded stage."""
        entry = Stage(name)
        if self.progress:
            print(f"[retrain] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield entry
        finally:
            entry.seconds = time.perf_counter() - start
            self.stages.append(entry)
            if self.progress:
                rows = f", {entry.rows:,} rows" if entry.rows is not None else ""
                print(f"[retrain] {name} done in {entry.seconds:.1f}s{rows}", file=sys.stderr)

    def total(self) -> float:
        """Sum of the stages' seconds."""
        return sum(s.seconds for s in self.stages)

    def table(self) -> list[str]:
        """Markdown rows: stage, seconds, share of the total, rows."""
        total = self.total() or 1.0
        lines = ["| stage | seconds | share | rows |", "|---|---|---|---|"]
        for s in self.stages:
            rows = f"{s.rows:,}" if s.rows is not None else ""
            lines.append(f"| {s.name} | {s.seconds:.1f} | {s.seconds / total:.0%} | {rows} |")
        lines.append(f"| total | {self.total():.1f} | 100% | |")
        return lines

    def as_dict(self) -> list[dict[str, object]]:
        """The stages as plain values (for ``--json`` and meta.json)."""
        return [
            {"stage": s.name, "seconds": round(s.seconds, 3), "rows": s.rows} for s in self.stages
        ]


@dataclass
class RetrainContext:
    """One run's inputs, shared by every model.

    ``events``: the lake strictly before ``cutoff``, cached. ``daily``: its customer-day
    table (``features.customer.daily_activity``), cached; every feature set of the run
    derives from it. ``customers``: the customer attributes, or None.
    """

    spark: SparkSession
    settings: Settings
    opts: RetrainOptions
    events: DataFrame
    daily: DataFrame
    customers: DataFrame | None
    cutoff: date
    first_day: date
    version: str
    window: dict[str, object]
    log: StageLog
    _features: dict[date, DataFrame] = field(default_factory=dict)

    def stage(self, name: str):  # type: ignore[no-untyped-def]
        """A timed stage of this run (see :meth:`StageLog.stage`)."""
        return self.log.stage(name)

    def features_at(self, cutoff: date) -> DataFrame:
        """Features of every customer as of ``as_of_for(cutoff)``, buyers only, cached.

        Equal to ``compute_features(events before cutoff, as_of_for(cutoff))`` with
        ``last_purchase_date`` not null, built from the shared customer-day table.
        """
        if cutoff not in self._features:
            as_of = as_of_for(cutoff)
            state = customer_state(self.daily.where(F.col("day") < F.lit(cutoff)), as_of)
            self._features[cutoff] = (
                features_as_of(state, as_of).where(F.col("last_purchase_date").isNotNull()).cache()
            )
        return self._features[cutoff]

    def release(self) -> None:
        """Unpersist everything the run cached."""
        for frame in self._features.values():
            frame.unpersist()
        self._features.clear()
        self.daily.unpersist()
        self.events.unpersist()
