"""The churn scorer's inputs: spend per purchase day by hand, and a version saved before
it was added still scores with its own eight (no JVM)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from scoring.btyd import BGNBD, GammaGamma
from scoring.churn import STACK_FEATURES, STACK_SQL, STACK_WORDS, ChurnScorer, stack_in_words

# the stack's inputs before spend per purchase day was added (scorer.json of those versions)
BEFORE_SPEND_PER_DAY = [
    "bg_logit_p_no_purchase", "bg_log_expected_purchases", "log_recency",
    "log_recency_per_gap", "one_purchase_day", "log_frequency", "log_spend_30d",
    "log_spend_90d",
]  # fmt: skip

# three customers: (id, recency, tenure, purchase days, monetary, 30d, 90d spend)
ROWS = [
    ("a", 3, 200, 8, 800.0, 100.0, 300.0),
    ("b", 60, 300, 2, 50.0, 0.0, 0.0),
    ("c", 0, 0, 1, 35.0, 35.0, 35.0),
]


def features() -> pa.Table:
    """The live feature columns the scorer reads, for ``ROWS``."""
    cols = list(zip(*ROWS, strict=True))
    freq = np.array(cols[3], float)
    tenure, recency = np.array(cols[2], float), np.array(cols[1], float)
    gap = np.where(freq > 1, (tenure - recency) / np.maximum(freq - 1, 1), np.nan)
    return pa.table({
        "customer_id": list(cols[0]),
        "recency_days": pa.array(cols[1], pa.int32()),
        "tenure_days": pa.array(cols[2], pa.int32()),
        "frequency": pa.array(cols[3], pa.int64()),
        "monetary": pa.array(cols[4]),
        "spend_per_purchase_day": pa.array(np.array(cols[4]) / freq),
        "spend_30d": pa.array(cols[5]),
        "spend_90d": pa.array(cols[6]),
        "mean_days_between": pa.array(gap, mask=np.isnan(gap)),
    })  # fmt: skip


def scorer(names: list[str], weights: dict[str, float]) -> ChurnScorer:
    """A logistic scorer over ``names`` with ``weights`` (0 elsewhere), through its JSON form."""
    coefficients = [weights.get(n, 0.0) for n in names]
    model = ChurnScorer(
        "v", 30, BGNBD(r=0.5, alpha=10.0, a=0.7, b=2.0), GammaGamma(p=2.0, q=3.0, gamma=5.0),
        "logistic", features=names, coefficients=coefficients, intercept=-1.0,
    )  # fmt: skip
    return ChurnScorer.from_dict(model.as_dict())


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_spend_per_purchase_day_by_hand() -> None:
    model = scorer(STACK_FEATURES, {"log_spend_per_purchase_day": 0.5, "log_frequency": -2.0})
    p, _ = model.score(features())
    got = dict(zip([r[0] for r in ROWS], p.tolist(), strict=True))
    for cid, _rec, _ten, days, monetary, _s30, _s90 in ROWS:
        margin = -1.0 + 0.5 * math.log(1 + monetary / days) - 2.0 * math.log(1 + days)
        assert got[cid] == pytest.approx(sigmoid(margin), rel=1e-12), cid


def test_a_version_saved_before_it_scores_with_its_own_inputs() -> None:
    old = scorer(BEFORE_SPEND_PER_DAY, {"log_recency": 3.0, "log_frequency": -1.0})
    p, _ = old.score(features())
    got = dict(zip([r[0] for r in ROWS], p.tolist(), strict=True))
    for cid, rec, _ten, days, *_ in ROWS:
        expected = sigmoid(-1.0 + 3.0 * math.log(1 + rec) - math.log(1 + days))
        assert got[cid] == pytest.approx(expected, rel=1e-12), cid
    # the same weights in today's stack give the same answer: the new input weighs 0
    now = scorer(STACK_FEATURES, {"log_recency": 3.0, "log_frequency": -1.0})
    assert np.allclose(now.score(features())[0], p, rtol=1e-12, atol=0)


def test_a_scorer_naming_an_unknown_input_or_other_coefficients_is_refused() -> None:
    data = scorer(BEFORE_SPEND_PER_DAY, {}).as_dict()
    with pytest.raises(ValueError, match="not this stack's"):
        ChurnScorer.from_dict(data | {"features": [*BEFORE_SPEND_PER_DAY, "log_shoe_size"]})
    with pytest.raises(ValueError, match="other coefficients"):
        ChurnScorer.from_dict(data | {"coefficients": [0.0] * 3})


def test_every_input_is_named_in_the_report_once() -> None:
    assert set(STACK_WORDS) == set(STACK_SQL)
    before = stack_in_words(BEFORE_SPEND_PER_DAY, 30)
    assert before.endswith("frequency and recent spend") and before.count("recent spend") == 1
    assert "in the 30 days" in before
    assert stack_in_words(STACK_FEATURES, 30).endswith("recent spend and spend per purchase day")
