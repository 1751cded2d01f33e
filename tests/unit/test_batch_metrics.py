"""Ranking metrics and the registry on inputs small enough to check by hand."""

from __future__ import annotations

import math

import pytest

from batch.evaluate import average_precision, ndcg, ranking_metrics
from batch.segments import name_segments
from storage import registry


def test_average_precision_kaggle_definition():
    # hits at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / min(12, 2)
    assert average_precision(["a", "x", "b"], {"a", "b"}) == pytest.approx((1 + 2 / 3) / 2)
    # 1 relevant item at rank 2: (1/2) / 1
    assert average_precision(["x", "a"], {"a"}) == pytest.approx(0.5)
    # more relevant items than K: divide by 12, not by 13
    actual = {f"i{j}" for j in range(13)}
    assert average_precision([f"i{j}" for j in range(12)], actual) == pytest.approx(1.0)
    # a repeated hit counts once
    assert average_precision(["a", "a"], {"a", "b"}) == pytest.approx(0.5)
    assert average_precision([], {"a"}) == 0.0


def test_ndcg_binary():
    assert ndcg(["a", "b"], {"a", "b"}) == pytest.approx(1.0)
    # one hit at rank 2 of one relevant: (1/log2 3) / 1
    assert ndcg(["x", "a"], {"a"}) == pytest.approx(1 / math.log2(3))


def test_ranking_metrics_average_over_buyers_only():
    recs = {"u1": ["a", "b"] + [f"z{i}" for i in range(10)], "u3": ["q"]}
    actual = {"u1": {"a"}, "u2": {"b"}}  # u2 has no list -> scores 0; u3 did not buy -> ignored
    m = ranking_metrics(recs, actual, catalogue=["a", "b", "c", "d"] + [f"z{i}" for i in range(16)])
    assert m["map@12"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["precision@12"] == pytest.approx((1 / 12) / 2)
    assert m["recall@12"] == pytest.approx(0.5)
    assert m["ndcg@12"] == pytest.approx(0.5)
    assert m["coverage"] == pytest.approx(12 / 20)  # u1's 12 distinct articles of 20
    assert m["customers"] == 2


def test_segment_names_from_centroids():
    profile = [
        {"segment_id": 0, "recency_days": 5, "frequency": 20, "monetary": 900},
        {"segment_id": 1, "recency_days": 200, "frequency": 1, "monetary": 10},
        {"segment_id": 2, "recency_days": 120, "frequency": 12, "monetary": 600},
        {"segment_id": 3, "recency_days": 10, "frequency": 1, "monetary": 20},
    ]
    assert name_segments(profile) == {0: "Champions", 1: "Lost", 2: "At risk", 3: "New / Promising"}


def test_registry_pointer(settings):
    assert registry.current_version(settings, "churn") is None
    registry.write_meta(settings, "churn", "v1", {"gate": {"passed": True}})
    registry.write_meta(settings, "churn", "v2", {"gate": {"passed": False}})
    registry.promote(settings, "churn", "v1")
    assert registry.current_version(settings, "churn") == "v1"
    assert registry.versions(settings, "churn") == ["v1", "v2"]
    assert registry.model_path(settings, "churn", "v1") == settings.models_dir / "churn/v1/model"
    assert registry.read_meta(settings, "churn", "v2") == {"gate": {"passed": False}}
