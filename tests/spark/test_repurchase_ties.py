"""The repurchase lists (the baseline, and what every customer the ranker does not score
gets) when articles tie: a customer who orders the same basket twice has equal weights for
all of it, and the lists must put what everyone bought most lately first, not the
smallest id. Checked against the rule written out in Python, customer by customer."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta

from batch.candidates import TIE_DAYS, candidate_sources
from batch.params import RecParams

CUTOFF = date(2021, 3, 1)
K = 12


def _events(seed: int) -> list[tuple[str, str, datetime, int]]:
    """Customers who order whole baskets again (so their articles tie), buying from a
    catalogue where a few articles sell much more than the rest in the last 30 days."""
    rng = random.Random(seed)
    rows = []
    for c in range(60):
        basket = rng.sample(range(40), rng.randint(3, 16))
        for day in rng.sample(range(1, 90), rng.randint(1, 3)):
            when = datetime.combine(CUTOFF - timedelta(days=day), datetime.min.time())
            rows += [(f"c{c:02d}", f"a{a:02d}", when + timedelta(hours=rng.randint(0, 20)), 1)
                     for a in basket]  # fmt: skip
    for n, a in enumerate(rng.sample(range(40), 10)):  # trending: many buyers lately
        for i in range(3 * (n + 1)):
            when = datetime.combine(CUTOFF - timedelta(days=1 + i % 25), datetime.min.time())
            rows.append((f"x{n}{i}", f"a{a:02d}", when, 2))
    rows.append(("c00", "a00", datetime.combine(CUTOFF, datetime.min.time()), 1))  # after
    return rows


def _expected(
    rows: list[tuple[str, str, datetime, int]], by_recent: bool = True
) -> dict[str, list[str]]:
    """Recency-weighted counts (half-life 30 days), ties by purchases of the 30 days
    before the cutoff (``by_recent``), then by id; only purchases before the cutoff."""
    before = [r for r in rows if r[2].date() < CUTOFF]
    recent = Counter(a for _, a, t, _ in before if (CUTOFF - t.date()).days <= TIE_DAYS)
    weight: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for c, a, t, _ in before:
        weight[c][a] += math.exp(-math.log(2) * (CUTOFF - t.date()).days / 30.0)
    return {
        c: sorted(w, key=lambda a: (-round(w[a], 9), -recent[a] * by_recent, a))[:K]
        for c, w in weight.items()
    }


def test_repurchase_ties_go_to_the_recently_popular_article(spark) -> None:  # type: ignore[no-untyped-def]
    rows = _events(7)
    events = spark.createDataFrame(
        rows, "customer_id string, article_id string, event_time timestamp, quantity int"
    ).where(f"event_time < '{CUTOFF}'")
    customers = spark.createDataFrame([(f"c{c:02d}",) for c in range(60)], "customer_id string")
    got: dict[str, list[tuple[int, str]]] = defaultdict(list)
    sources = candidate_sources(
        events, CUTOFF, RecParams(ranker=None), customers, als_for=None, only_customers=True
    )
    for r in sources["repurchase"].collect():
        got[r["customer_id"]].append((r["pos"], r["article_id"]))
    want = {c: a for c, a in _expected(rows).items() if c.startswith("c")}
    assert set(got) == set(want)
    for c, articles in want.items():
        assert [a for _, a in sorted(got[c])] == articles, c
    # the rule bites: ties by id alone would give many of these customers other lists
    by_id = _expected(rows, by_recent=False)
    assert sum(by_id[c] != want[c] for c in want) >= 20
