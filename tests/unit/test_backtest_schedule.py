"""`pulse backtest`'s schedule and its bootstrap arithmetic (no JVM; its bad input is in
tests/bad_input.py)."""

from __future__ import annotations

import argparse
from datetime import date

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from batch import backtest as bt
from pulse.commands import backtest as command
from runtime.errors import PulseError


def test_monthly_cutoffs_are_the_firsts_of_each_month():
    got = bt.monthly_cutoffs(date(2011, 6, 1), date(2011, 11, 1))
    assert got == [date(2011, m, 1) for m in range(6, 12)]
    assert bt.monthly_cutoffs(date(2011, 11, 1), date(2012, 2, 1))[-2:] == [
        date(2012, 1, 1),
        date(2012, 2, 1),
    ]
    with pytest.raises(PulseError, match="start on the 1st"):
        bt.monthly_cutoffs(date(2011, 6, 2), date(2011, 11, 1))


def test_without_dates_the_schedule_is_the_last_cutoffs_the_lake_covers():
    args = argparse.Namespace(start=None, end=None, every="month", cutoffs=3)
    # last event 2011-12-09, 30-day windows: the last window must end by 2011-12-10
    assert command.schedule(args, date(2011, 12, 9), 30) == [
        date(2011, 9, 1),
        date(2011, 10, 1),
        date(2011, 11, 1),
    ]
    args = argparse.Namespace(start=None, end=None, every="7d", cutoffs=2)
    assert command.schedule(args, date(2020, 1, 31), 7) == [date(2020, 1, 18), date(2020, 1, 25)]


def test_the_command_and_the_job_know_the_same_models():
    assert command.MODELS == bt.MODELS


def test_weighted_auc_is_the_auc_of_the_resampled_customers():
    rng = np.random.default_rng(7)
    n = 300
    y = (rng.random(n) < 0.4).astype(float)
    scores = np.round(rng.random(n) * 0.5 + 0.3 * y, 2)  # rounded: ties, counted one half
    weights = bt.resample_weights(rng, n, 5)
    assert weights.shape == (5, n) and (weights.sum(axis=1) == n).all()
    got = bt.weighted_auc(scores, y, weights)
    for row, auc in zip(weights, got, strict=True):
        drawn = np.repeat(np.arange(n), row.astype(int))  # the resample, row by row
        assert auc == pytest.approx(roc_auc_score(y[drawn], scores[drawn]), abs=1e-12)
    ones = bt.weighted_auc(scores, y, np.ones((1, n)))
    assert ones[0] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
