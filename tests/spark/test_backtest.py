"""`pulse backtest` on the tiny shop: each figure against what the retrain at the same cutoff
serves, scored in plain Python on the days after it."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import date, timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest
from batch_shop import START, TableSource, events_table, shop_rows
from sklearn.metrics import roc_auc_score

from batch.backtest import BacktestOptions, backtest
from batch.ingest import ingest_source
from batch.params import ChurnParams, RankerParams, RecParams
from batch.retrain import RetrainOptions, retrain
from runtime.errors import PulseError
from storage import registry

K = 12
CUTOFF = date(2020, 4, 1)  # day 91 of the shop's 120
WINDOW = 14
SMALL = RetrainOptions(
    holdout_days=WINDOW,
    rec=RecParams(rank=4, max_iter=3, ranker=RankerParams(max_iter=3)),
    churn=ChurnParams(max_iter=3, max_depth=3),
    progress=False,
)


def _day(d: date) -> int:
    return (d - START.date()).days


def _ap(ranked: list[str], bought: set[str]) -> float:
    """Kaggle AP@12, written out again here."""
    hits, total = 0, 0.0
    for i, article in enumerate(ranked[:K], start=1):
        if article in bought:
            hits += 1
            total += hits / i
    return total / min(K, len(bought))


def _popular(rows: list[tuple[int, str, str]], cutoff: int, days: int = 7) -> list[str]:
    counts = Counter(a for d, _, a in rows if cutoff - days <= d < cutoff)
    return [a for a, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))][:K]


def _repurchase(rows: list[tuple[int, str, str]], cutoff: int, customer: str) -> list[str]:
    """The customer's articles by recency-weighted count; ties (bought on the same days) go
    to the article everyone bought most in the 30 days before the cutoff, then the id."""
    weight: dict[str, float] = defaultdict(float)
    for d, c, a in rows:
        if c == customer and d < cutoff:
            weight[a] += math.exp(-math.log(2) * (cutoff - d) / 30.0)
    recent = Counter(a for d, _, a in rows if cutoff - 30 <= d < cutoff)
    return sorted(weight, key=lambda a: (-round(weight[a], 9), -recent[a], a))[:K]


def _fill(first: list[str], popular: list[str]) -> list[str]:
    return (first + [a for a in popular if a not in first])[:K]


@pytest.fixture
def shop(spark, settings):
    settings = settings.model_copy(update={"churn_horizon_days": WINDOW})
    ingest_source(spark, settings, TableSource([events_table(shop_rows())]), progress=False)
    return settings


def test_backtest_scores_what_the_retrain_serves(spark, shop):
    settings, rows = shop, shop_rows()
    opts = BacktestOptions(
        cutoffs=(CUTOFF,), window_days=WINDOW, bootstrap=200, retrain=SMALL, progress=False
    )
    result = backtest(spark, settings, opts)
    assert registry.current_version(settings, "recommendations") is None  # nothing served

    c, end = _day(CUTOFF), _day(CUTOFF) + WINDOW
    bought: dict[str, set[str]] = defaultdict(set)
    for d, customer, article in rows:
        if c <= d < end:
            bought[customer].add(article)
    rec = result["recommendations"]["per_cutoff"][0]
    assert rec["buyers"] == len(bought) == 20  # the loyal half

    # The baselines, built and scored in plain Python from the shop's rows
    popular = _popular(rows, c)
    pop_map = np.mean([_ap(popular, b) for b in bought.values()])
    rep_map = np.mean(
        [_ap(_fill(_repurchase(rows, c, cu), popular), b) for cu, b in bought.items()]
    )
    figures = rec["strategies"]
    assert figures["popularity"]["map@12"] == pytest.approx(pop_map, abs=1e-12)
    assert figures["repurchase"]["map@12"] == pytest.approx(rep_map, abs=1e-12)

    # The served lists are what `pulse retrain --as-of CUTOFF` serves, customer by customer
    models = ("recommendations", "churn")
    served = retrain(
        spark, settings, RetrainOptions(**(vars(SMALL) | {"as_of": CUTOFF, "models": models}))
    )
    table = pq.read_table(
        registry.output_path(settings, "recommendations", served["recommendations"]["version"])
    ).to_pylist()
    lists: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in table:
        lists[r["customer_id"]].append((r["rank"], r["article_id"]))
    served_map = np.mean([_ap([a for _, a in sorted(lists[cu])], b) for cu, b in bought.items()])
    assert rec["served_strategy"] == served["recommendations"]["served"]
    assert figures["served"]["map@12"] == pytest.approx(served_map, abs=1e-12)
    best = max(pop_map, rep_map)
    assert rec["ratio"] == pytest.approx(served_map / best)
    lo, hi = rec["ratio_interval"]
    assert lo <= rec["ratio"] <= hi

    # Churn: the served model's AUC is the AUC of the retrain's churn scores at the cutoff
    # against "no purchase in the 14 days after it", labels from the rows
    scores = pq.read_table(
        registry.output_path(settings, "churn_scores", served["churn"]["version"])
    ).to_pylist()
    active = {cu for d, cu, _ in rows if c <= d < end}
    known = sorted(r["customer_id"] for r in scores)
    assert known == sorted({cu for d, cu, _ in rows if d < c})
    by_id = {r["customer_id"]: r["churn_probability"] for r in scores}
    y = [0.0 if cu in active else 1.0 for cu in known]
    expected_auc = roc_auc_score(y, [by_id[cu] for cu in known])
    churn = result["churn"]["per_cutoff"][0]
    assert churn["customers"] == len(known)
    assert churn["churn_rate"] == pytest.approx(np.mean(y))
    assert churn["models"]["served"]["auc_roc"] == pytest.approx(expected_auc, abs=1e-9)
    assert churn["auc_gain"] == pytest.approx(
        churn["models"]["served"]["auc_roc"] - churn["models"]["bgnbd"]["auc_roc"]
    )


def test_a_window_past_the_lake_is_refused(spark, shop):
    late = START.date() + timedelta(days=119 - WINDOW + 2)  # its window ends after day 119
    with pytest.raises(PulseError, match="runs past the lake's last event"):
        backtest(spark, shop, BacktestOptions(cutoffs=(late,), window_days=WINDOW))
