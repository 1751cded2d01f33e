"""Ranking metrics at K (``schemas.tables.N_RECOMMENDATIONS``, 12), in plain Python so a
reader can check them by hand.

``recs``: customer -> ordered list of recommended article ids (best first).
``actual``: customer -> set of articles the customer bought in the hold-out.
Every metric averages over the customers in ``actual`` (those who bought in the
hold-out); a customer with no list scores 0.

- MAP@K as Kaggle defines it: AP@K = sum_k P(k) * rel(k) / min(K, |actual|).
- precision@K = hits / K; recall@K = hits / |actual|.
- NDCG@K with binary relevance: DCG / ideal DCG of min(K, |actual|) hits.
- coverage = distinct recommended articles / catalogue size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from schemas.tables import N_RECOMMENDATIONS


def average_precision(rec: Sequence[str], actual: set[str], k: int = N_RECOMMENDATIONS) -> float:
    """Kaggle AP@k of one ranked list against the set of relevant items."""
    if not actual:
        return 0.0
    hits, score, seen = 0, 0.0, set()
    for i, item in enumerate(rec[:k], start=1):
        if item in actual and item not in seen:
            hits += 1
            score += hits / i
        seen.add(item)
    return score / min(k, len(actual))


def ndcg(rec: Sequence[str], actual: set[str], k: int = N_RECOMMENDATIONS) -> float:
    """Binary-relevance NDCG@k."""
    if not actual:
        return 0.0
    dcg = sum(1 / math.log2(i + 1) for i, item in enumerate(rec[:k], 1) if item in actual)
    ideal = sum(1 / math.log2(i + 1) for i in range(1, min(k, len(actual)) + 1))
    return dcg / ideal


def ranking_metrics(
    recs: Mapping[str, Sequence[str]],
    actual: Mapping[str, set[str]],
    catalogue: Iterable[str] | int,
    k: int = N_RECOMMENDATIONS,
) -> dict[str, float]:
    """MAP@k, precision@k, recall@k, NDCG@k over ``actual``'s customers, and coverage."""
    n = len(actual)
    ap = prec = rec_ = nd = 0.0
    recommended: set[str] = set()
    for customer, bought in actual.items():
        ranked = list(recs.get(customer, ()))[:k]
        recommended.update(ranked)
        hits = len(set(ranked) & bought)
        ap += average_precision(ranked, bought, k)
        prec += hits / k
        rec_ += hits / len(bought)
        nd += ndcg(ranked, bought, k)
    size = catalogue if isinstance(catalogue, int) else len(set(catalogue))
    return {
        f"map@{k}": ap / n if n else 0.0,
        f"precision@{k}": prec / n if n else 0.0,
        f"recall@{k}": rec_ / n if n else 0.0,
        f"ndcg@{k}": nd / n if n else 0.0,
        "coverage": len(recommended) / size if size else 0.0,
        "customers": n,
    }
