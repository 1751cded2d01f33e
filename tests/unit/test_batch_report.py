"""`pulse report` renders tables and PNGs from registry metadata alone (no Spark)."""

from __future__ import annotations

import pytest

from batch.report import write_report
from runtime.errors import PulseError
from storage import registry

WINDOW = {"events": 1000, "first_event_date": "2020-01-01", "cutoff_exclusive": "2020-04-01"}
M = {
    "map@12": 0.1,
    "precision@12": 0.05,
    "recall@12": 0.2,
    "ndcg@12": 0.15,
    "coverage": 0.3,
    "customers": 10,
}
GATE = {"metric": "x", "value": 0.5, "reasons": [], "passed": True}


def test_report_renders(settings):
    with pytest.raises(PulseError, match="pulse retrain"):
        write_report(settings)
    registry.write_meta(
        settings,
        "recommendations",
        "v1",
        {
            "version": "v1",
            "window": WINDOW | {"train_end": "2020-03-25", "holdout": ["2020-03-25", "2020-04-01"]},
            "metrics": {"popularity": M, "blend": M | {"map@12": 0.2}},
            "served": "blend",
            "params": {"rank": 4, "max_iter": 3, "alpha": 10.0},
            "gate": GATE,
            "promoted": True,
        },
    )
    registry.promote(settings, "recommendations", "v1")
    cm = {"auc_roc": 0.8, "pr_auc": 0.7, "brier": 0.2}
    registry.write_meta(
        settings,
        "churn",
        "v1",
        {
            "version": "v1",
            "window": WINDOW | {"train_cutoff": "2020-02-01", "eval_cutoff": "2020-03-02"},
            "params": {"horizon_days": 30},
            "rows": {"train": 5, "eval": 6, "eval_churn_rate": 0.5},
            "metrics": {"gbt": cm, "recency": cm | {"auc_roc": 0.7}},
            "roc": {
                "gbt": {"fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1]},
                "recency": {"fpr": [0, 1], "tpr": [0, 1]},
            },
            "feature_importances": {"recency_days": 0.6, "frequency": 0.4},
            "gate": GATE | {"passed": False, "reasons": ["worse"]},
            "promoted": False,
        },
    )
    path = write_report(settings)
    text = path.read_text()
    assert "| blend (served) | 0.2000 |" in text
    assert "| gbt | 0.8000 | 0.7000 | 0.2000 |" in text
    assert "FAIL, CURRENT unchanged (worse)" in text  # churn v1 never passed: latest shown
    for png in ("recommendations.png", "churn_roc.png", "churn_importance.png"):
        assert (path.parent / png).stat().st_size > 1000
