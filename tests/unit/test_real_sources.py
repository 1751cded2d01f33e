"""The real H&M sample and the full Online Retail set load with reconciled counts.

Expected figures are the README's facts (../shared/data/README.md), re-derived here
from the raw files with plain pandas so the adapter's counts are checked against an
independent reading, not against themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from producers.adapters import open_source

pytestmark = pytest.mark.realdata


def test_hm_sample_loads_every_row_with_distinct_ids(real_data: Path) -> None:
    source = open_source(f"hm:{real_data / 'hm_sample'}")
    ids: set[str] = set()
    customers: set[str] = set()
    articles: set[str] = set()
    first = last = None
    for batch in source.iter_batches(batch_rows=7_000):  # batch edges cut through days
        ids.update(batch["event_id"].to_pylist())
        customers.update(batch["customer_id"].to_pylist())
        articles.update(batch["article_id"].to_pylist())
        first = first or batch["event_time"][0].as_py()
        last = batch["event_time"][-1].as_py()
    stats = source.stats
    assert stats.rows_read == 31_662
    assert stats.accepted + stats.n_rejected == stats.rows_read
    assert stats.accepted == 31_662  # the sample is clean
    assert len(ids) == 31_662  # includes the 2,894 exact duplicate rows
    assert len(customers) == 1_364
    assert len(articles) == 17_033
    assert all(len(a) == 10 and a.isdigit() for a in articles)
    assert (first, last) == (datetime(2018, 9, 20, tzinfo=UTC), datetime(2020, 9, 22, tzinfo=UTC))
    assert source.customers_path is not None and source.customers_path.name.startswith("customers")
    assert source.articles_path is not None and source.articles_path.name.startswith("articles")

    raw = pd.read_csv(real_data / "hm_sample" / "transactions_train.csv.gz", dtype=str)
    assert int(raw.duplicated().sum()) == 2_894


def test_online_retail_rejections_reconcile_with_the_readme(real_data: Path) -> None:
    path = real_data / "online_retail" / "online_retail.csv.gz"
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    no_customer = raw["CustomerID"].str.strip() == ""
    price = raw["UnitPrice"].astype(float)
    quantity = raw["Quantity"].astype(int)
    cancelled = raw["InvoiceNo"].str.startswith("C")
    # The README's facts about the raw file.
    assert len(raw) == 541_909
    assert int(no_customer.sum()) == 135_080
    assert int(cancelled.sum()) == 9_288
    assert int((quantity <= 0).sum()) == 10_624
    assert int((price <= 0).sum()) == 2_517
    # The contract asks unit_price >= 0: the 2,515 zero prices are valid, and only a
    # negative price is rejected. Both negative prices are on lines without a customer id,
    # which is checked first (contract field order), so no line is rejected for its price.
    assert int((price == 0).sum()) == 2_515
    assert int((price < 0).sum()) == 2 == int((no_customer & (price < 0)).sum())
    returns_kept = int((~no_customer & (price >= 0) & (quantity < 0)).sum())
    assert returns_kept == 8_905  # every such line is a 'C' cancellation
    assert int((~no_customer & (quantity < 0) & ~cancelled).sum()) == 0
    assert int((quantity == 0).sum()) == 0
    valid = ~no_customer & (price >= 0) & (quantity != 0)

    source = open_source(str(path))
    n_returns = 0
    customers: set[str] = set()
    ids: set[str] = set()
    for batch in source.iter_batches():
        n_returns += sum(q < 0 for q in batch["quantity"].to_pylist())
        customers.update(batch["customer_id"].to_pylist())
        ids.update(batch["event_id"].to_pylist())
    stats = source.stats
    assert stats.rows_read == 541_909
    assert dict(stats.rejected) == {"customer_id: is empty": 135_080}
    assert stats.accepted == int(valid.sum()) == 541_909 - 135_080 == 406_829
    assert stats.accepted + stats.n_rejected == stats.rows_read
    assert n_returns == returns_kept
    assert len(ids) == stats.accepted
    # All 4,372 customers of the README (one of them only has zero-price lines).
    assert len(customers) == 4_372 == raw.loc[valid, "CustomerID"].nunique()
    assert raw.loc[~no_customer & (price > 0), "CustomerID"].nunique() == 4_371


def test_dimension_columns_match_the_real_kaggle_files(real_data: Path) -> None:
    from producers.generator import ARTICLE_COLUMNS, CUSTOMER_COLUMNS
    from schemas.tables import ARTICLE_COLUMNS as ARTICLES
    from schemas.tables import CUSTOMER_COLUMNS as CUSTOMERS

    customers = pd.read_csv(real_data / "hm_sample" / "customers.csv.gz", nrows=5, dtype=str)
    articles = pd.read_csv(real_data / "hm_articles" / "articles.csv.gz", nrows=5, dtype=str)
    assert tuple(customers.columns) == tuple(CUSTOMERS) == CUSTOMER_COLUMNS
    assert tuple(articles.columns) == tuple(ARTICLES) == ARTICLE_COLUMNS
