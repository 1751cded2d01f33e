"""The recommendations retrain (``retrain(ctx)``): every strategy of
``batch.candidates.STRATEGIES`` evaluated on the hold-out, the best one refit on all
the data and served as each customer's top K (K = ``schemas.tables.N_RECOMMENDATIONS``,
12), behind the quality gate (MAP@K at least popularity's).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch import ranker as ranking
from batch.candidates import STRATEGIES, als_scope, assemble, candidate_sources
from batch.evaluate import spark_ranking_metrics_by
from batch.publish import finish, gate, write_output
from features.time import cutoff_ts
from runtime.errors import PulseError
from schemas.tables import N_RECOMMENDATIONS
from storage import registry

if TYPE_CHECKING:
    from batch.context import RetrainContext

# The recommendations' quality gate: Kaggle MAP@K (a key of ``ranking_metrics``).
MAP_AT_K = f"map@{N_RECOMMENDATIONS}"


def _everyone(ctx: RetrainContext) -> DataFrame:
    """Every customer the lists are for (cached): those in the run's events and in the
    customer table."""
    everyone = ctx.events.select("customer_id").distinct()
    if ctx.customers is not None:
        everyone = everyone.unionByName(ctx.customers.select("customer_id")).distinct()
    return everyone.cache()


def _ranker_rows(
    ctx: RetrainContext, cuts: list[date], held: DataFrame, everyone: DataFrame
) -> tuple[DataFrame, int]:
    """The ranker's candidates for the whole run, built in one pass (``ranking.candidates``)
    and labelled by what each customer bought in the ``holdout_days`` after each cutoff:

    - at each training cutoff (``cuts`` but the last): at most ``train_customers`` of the
      buyers in the window after it (``ranking.sample``);
    - at train_end (``cuts[-1]``): the hold-out buyers ``held`` whom the ranker would
      score there (``ranking.most_recent``), as it does everyone at the cutoff; trained
      on by the refit only, never for the hold-out's own figures;
    - at the run's cutoff: the customers the served lists are ranked for (label 0.0,
      their window is still to come).

    One pass, not one for evaluation and one for the refit: the two share the costs that
    do not grow with the customers (co-purchase pairs, article statistics; 169 s of the
    refit's 464 s at H&M scale). Cached and counted (eager): returns the rows and their
    count.
    """
    params, horizon, train_end = ctx.opts.rec.ranker, ctx.opts.holdout_days, cuts[-1]
    assert params is not None
    truth = ranking.bought_after(ctx.events, cuts, horizon).cache()
    buyers = truth.select("cutoff", "customer_id").distinct()
    scope = ranking.sample(buyers.where(F.col("cutoff") < F.lit(train_end)), params.train_customers)
    scored, served = ranking.most_recent(ctx.daily, [train_end, ctx.cutoff], params.score_customers)
    if scored is not None:
        held = held.join(scored, "customer_id", "left_semi")
    scope = scope.unionByName(ranking.at(held, train_end)).unionByName(
        ranking.at(everyone if served is None else served, ctx.cutoff)
    )
    rows = ranking.candidates(ctx.events, scope.localCheckpoint(), params, truth).cache()
    n = rows.count()
    truth.unpersist()
    return rows, n


@dataclass
class Selection:
    """What the hold-out decided: every strategy's metrics there, the best one, and the
    ranker's candidate rows (at its training cutoffs, train_end and the run's cutoff) that
    the refit reuses."""

    metrics: dict[str, dict[str, float]]
    best: str
    train_end: date
    left_out: dict[str, str]
    rows: DataFrame | None = None
    cuts: list[date] = field(default_factory=list)

    def release(self) -> None:
        """Unpersist the ranker's rows."""
        if self.rows is not None:
            self.rows.unpersist()


def select(ctx: RetrainContext, everyone: DataFrame) -> Selection:
    """Evaluate every strategy on the hold-out ``[cutoff - holdout_days, cutoff)``, each fit
    on what came before it, and choose the best by MAP@K. ``everyone``: the customers the
    lists will be served to (the ranker's rows at the cutoff are built for them)."""
    p, opts, events, cutoff = ctx.opts.rec, ctx.opts, ctx.events, ctx.cutoff
    train_end = cutoff - timedelta(days=opts.holdout_days)
    train = events.where(F.col("event_time") < F.lit(cutoff_ts(train_end)))
    holdout = events.where(F.col("event_time") >= F.lit(cutoff_ts(train_end))).where(
        F.col("quantity") > 0
    )
    with ctx.stage("recommendations: hold-out buyers") as st:
        # spend per purchased article: the revenue the lists would have caught (revenue@12)
        actual = (
            holdout.groupBy("customer_id", "article_id")
            .agg(F.sum(F.col("quantity") * F.col("unit_price")).alias("spend"))
            .cache()
        )
        hold_customers = actual.select("customer_id").distinct().cache()
        st.rows = hold_customers.count()
        if not st.rows:
            raise PulseError(f"no purchases in the hold-out [{train_end}, {cutoff})")
        catalogue = train.select("article_id").distinct().count()
    with ctx.stage("recommendations: hold-out candidates (ALS fit on the training window)"):
        sources = candidate_sources(train, train_end, p, hold_customers, only_customers=True)
        sources["als"].count()
    selection = Selection(metrics={}, best="", train_end=train_end, left_out={})
    if p.ranker is not None:
        n, horizon = p.ranker.train_cutoffs, opts.holdout_days
        selection.cuts = ranking.training_cutoffs(train_end, horizon, n) + [train_end]
        with ctx.stage(f"recommendations: ranker candidates at {n + 2} cutoffs") as st:
            selection.rows, st.rows = _ranker_rows(ctx, selection.cuts, hold_customers, everyone)
        with ctx.stage(f"recommendations: ranker trained on {n} windows before {train_end}"):
            rows = selection.rows
            try:
                model = ranking.fit(rows.where(F.col("cutoff") < F.lit(train_end)), p.ranker)
            except PulseError as exc:  # too little history: the other strategies still run
                reason = f"{exc} ({n} windows of {horizon} days before {train_end})"
                selection.left_out["ranker"] = reason
                print(f"  ranker left out: {reason}", file=sys.stderr)
            else:
                held = rows.where(F.col("cutoff") == F.lit(train_end))
                sources["ranker"] = ranking.ranked(model, held).cache()
    strategies = {n: o for n, o in STRATEGIES.items() if all(s in sources for s in o)}
    with ctx.stage(f"recommendations: {MAP_AT_K} of {len(strategies)} strategies") as st:
        st.rows = hold_customers.count()
        every = [
            assemble(hold_customers, sources, order).withColumn("strategy", F.lit(name))
            for name, order in strategies.items()
        ]
        recs = reduce(DataFrame.unionByName, every)
        metrics = spark_ranking_metrics_by(recs, actual, catalogue, list(strategies))
        if opts.progress:
            for name, m in metrics.items():
                print(f"  {name:<11} {MAP_AT_K} {m[MAP_AT_K]:.4f}", file=sys.stderr)
        actual.unpersist()
        hold_customers.unpersist()
    selection.metrics = metrics
    selection.best = max(metrics, key=lambda n: metrics[n][MAP_AT_K])
    return selection


def refit(ctx: RetrainContext, selection: Selection, everyone: DataFrame) -> dict[str, DataFrame]:
    """The chosen strategy's candidate sources fit on all the run's data, for ``everyone``:
    ``assemble(everyone, sources, STRATEGIES[selection.best])`` is the served lists. The
    popularity and repurchase sources are always among them (the baselines)."""
    p, cutoff = ctx.opts.rec, ctx.cutoff
    order = STRATEGIES[selection.best]
    full = candidate_sources(ctx.events, cutoff, p, everyone, als_scope(order))
    rows, cuts = selection.rows, selection.cuts
    if "ranker" in order and p.ranker is not None and rows is not None:
        # refit on the newest windows: the hold-out's labels included, the oldest dropped
        newest = rows.where(F.col("cutoff").between(cuts[1], selection.train_end))
        model = ranking.fit(ranking.sample(newest, p.ranker.train_customers), p.ranker)
        full["ranker"] = ranking.ranked(model, rows.where(F.col("cutoff") == F.lit(cutoff)))
    return full


def retrain(ctx: RetrainContext) -> dict[str, Any]:
    """Evaluate every strategy on the hold-out, serve the best one refit on all data."""
    p, opts, settings, cutoff = ctx.opts.rec, ctx.opts, ctx.settings, ctx.cutoff
    everyone = _everyone(ctx)
    selection = select(ctx, everyone)
    metrics, best, train_end = selection.metrics, selection.best, selection.train_end
    with ctx.stage(f"recommendations: refit '{best}', top {N_RECOMMENDATIONS} for everyone") as st:
        full = refit(ctx, selection, everyone)
        write_output(
            assemble(everyone, full, STRATEGIES[best]), settings, "recommendations", ctx.version
        )
        st.rows = everyone.count()
        everyone.unpersist()
        selection.release()
        # Serving gives this list to customers first seen after this run (not in the table).
        popular_ids = [r.article_id for r in full["popularity"].orderBy("pos").collect()]
        version_dir = registry.model_dir(settings, "recommendations", ctx.version)
        popular_path = version_dir / registry.POPULAR_FILE
        popular_path.parent.mkdir(parents=True, exist_ok=True)
        popular_path.write_text(
            json.dumps(
                {"articles": popular_ids, "popular_days": p.popular_days, "cutoff": str(cutoff)},
                indent=2,
            )
        )
    value = metrics[best][MAP_AT_K]
    meta = {
        "model": "recommendations",
        "version": ctx.version,
        "params": asdict(p) | {"holdout_days": opts.holdout_days},
        "window": ctx.window
        | {"train_end": str(train_end), "holdout": [str(train_end), str(cutoff)]},
        "metrics": metrics,
        "left_out": selection.left_out,
        "served": best,
        "output": str(registry.output_path(settings, "recommendations", ctx.version)),
        "popular": str(popular_path),
        "gate": gate(
            settings,
            "recommendations",
            MAP_AT_K,
            value,
            metrics["popularity"][MAP_AT_K],
            opts.regression_tolerance,
        ),
    }
    return finish(settings, "recommendations", ctx.version, meta)
