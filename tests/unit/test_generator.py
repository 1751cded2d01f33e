"""The synthetic generator: Kaggle formats, determinism, adapter round trip, calibration."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest

from producers.adapters import GENERATED_MARKER, open_source
from producers.generator import ARTICLE_COLUMNS, CUSTOMER_COLUMNS, generate, price_text
from producers.profile import README_FACTS, TOLERANCE, profile, within_tolerance
from pulse.cli import main

FILES = ("transactions_train.csv", "customers.csv", "articles.csv", GENERATED_MARKER)


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "a"
    generate(out, 400, 800, date(2020, 1, 1), 90, seed=7, progress=False)
    return out


def test_same_seed_gives_byte_identical_files(small: Path, tmp_path: Path) -> None:
    generate(tmp_path / "b", 400, 800, date(2020, 1, 1), 90, seed=7, progress=False)
    generate(tmp_path / "c", 400, 800, date(2020, 1, 1), 90, seed=8, progress=False)
    assert digests(tmp_path / "b") == digests(small)
    other = digests(tmp_path / "c")
    assert other["transactions_train.csv"] != digests(small)["transactions_train.csv"]


def test_files_have_the_kaggle_columns_and_formats(small: Path) -> None:
    with (small / "transactions_train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
    assert [r["t_dat"] for r in rows] == sorted(r["t_dat"] for r in rows)
    assert rows[0]["t_dat"] >= "2020-01-01" and rows[-1]["t_dat"] <= "2020-03-30"
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["customer_id"]) for r in rows)
    assert all(re.fullmatch(r"0\d{9}", r["article_id"]) for r in rows)
    assert {r["sales_channel_id"] for r in rows} == {"1", "2"}
    for r in rows[:2000]:
        units = round(float(r["price"]) * 59_000)
        assert 0 < units < 59_000
        assert r["price"] == price_text_of(units)
    with (small / "customers.csv").open() as f:
        customers = list(csv.DictReader(f))
    assert tuple(customers[0]) == CUSTOMER_COLUMNS
    assert len(customers) == 400
    assert len({c["customer_id"] for c in customers}) == 400
    assert {c["club_member_status"] for c in customers} <= {"ACTIVE", "PRE-CREATE", "LEFT_CLUB", ""}
    assert {c["FN"] for c in customers} <= {"1.0", ""}
    assert all(re.fullmatch(r"\d+\.0|", c["age"]) for c in customers)
    assert all(re.fullmatch(r"[0-9a-f]{64}", c["postal_code"]) for c in customers)
    assert {r["customer_id"] for r in rows} <= {c["customer_id"] for c in customers}
    with (small / "articles.csv").open() as f:
        articles = list(csv.DictReader(f))
    assert tuple(articles[0]) == ARTICLE_COLUMNS
    assert {r["article_id"] for r in rows} <= {a["article_id"] for a in articles}
    marker = json.loads((small / GENERATED_MARKER).read_text())
    assert marker["transactions"] == len(rows) and marker["seed"] == 7


def price_text_of(units: int) -> str:
    """Kaggle's rendering, computed independently with exact fractions."""
    value = Fraction(units, 59_000)
    digits = str(int(value * 10**16)).rjust(16, "0").rstrip("0")
    return f"0.{digits}"


def test_price_text_truncates_like_kaggle() -> None:
    import numpy as np

    # Values seen in the real file: 1999/59000 and 2999/59000, truncated at 16 decimals.
    assert list(price_text(np.array([1999, 2999, 2950]))) == [
        "0.0338813559322033",
        "0.0508305084745762",
        "0.05",
    ]


def test_behaviour_shows_in_the_data(small: Path) -> None:
    with (small / "transactions_train.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = [tuple(r.values()) for r in rows]
    assert len(set(keys)) < len(keys)  # exact duplicate rows (one row per unit)
    per_day = {(r["customer_id"], r["t_dat"]) for r in rows}
    assert len(per_day) < len(rows)  # baskets of several rows
    online = sum(r["sales_channel_id"] == "2" for r in rows) / len(rows)
    assert 0.6 < online < 0.8


def test_adapter_reads_the_output_as_synthetic(small: Path) -> None:
    source = open_source(str(small))
    assert source.name == "synthetic"
    assert source.customers_path == small / "customers.csv"
    assert source.articles_path == small / "articles.csv"
    ids = [
        i for batch in source.iter_batches(batch_rows=500) for i in batch["event_id"].to_pylist()
    ]
    assert source.stats.rejected == {}
    assert source.stats.accepted == source.stats.rows_read == len(ids) == len(set(ids))


def test_cli_generate_and_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["data", "generate", "--customers", "50", "--articles", "100", "--days", "20"]
    assert main([*argv, "--seed", "1", "--start", "2020-01-01", "--out", str(out)]) == 0
    assert "transactions, 50 customers, 100 articles" in capsys.readouterr().out
    assert main(["data", "profile", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "channel2_share" in printed and "0.71" in printed


def test_bad_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "generate", "--customers", "5", "--out", str(tmp_path / "x")]
    assert main([*argv, "--articles", str(tmp_path / "missing.csv")]) != 0
    assert "articles file not found" in capsys.readouterr().err
    assert main(["data", "profile", str(tmp_path)]) != 0
    assert "no transactions_train.csv" in capsys.readouterr().err


def test_default_behaviour_is_within_the_stated_tolerance(tmp_path: Path) -> None:
    # The real sample's span (734 days); 4,000 customers keep the quartiles stable.
    generate(tmp_path / "cal", 4_000, 8_000, date(2018, 9, 20), 734, seed=3, progress=False)
    facts = profile(tmp_path / "cal").facts
    misses = {
        name: (round(facts[name], 4), README_FACTS[name])
        for name in TOLERANCE
        if not within_tolerance(name, facts[name], README_FACTS[name])
    }
    assert misses == {}


def test_bench_data_runs_and_reconciles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "data", "--customers", "30", "--articles", "50"]) == 0
    out = capsys.readouterr().out
    assert "rows/s" in out and "rejected 0" in out
