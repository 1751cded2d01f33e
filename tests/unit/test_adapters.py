"""Adapters on tiny hand-written files: columns, ids, rejections, order, windows."""

from __future__ import annotations

import gzip
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from producers.adapters import ARROW_SCHEMA, GENERATED_MARKER, open_source
from runtime.errors import PulseError
from schemas.transaction import FIELD_NAMES, make_event_id, validate

HM_CSV = """t_dat,customer_id,article_id,price,sales_channel_id
2020-09-20,c1,0108775015,0.0508305084745762,2
2020-09-20,c1,0108775015,0.0508305084745762,2
2020-09-20,c2,0108775044,0.0101525423728814,1
2020-09-21,,0108775015,0.01,2
2020-09-22,c1,0200000001,0.03,2
"""

RETAIL_CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom
536366,22633,WARMER,6,12/1/2010 8:28,1.85,,United Kingdom
C536379,D,Discount,-1,12/1/2010 9:41,27.50,14527.0,United Kingdom
536380,22961,JAM,2,12/1/2010 9:45,0,17850.0,United Kingdom
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_hm_folder_gives_contract_rows_with_distinct_ids_for_duplicates(tmp_path: Path) -> None:
    write(tmp_path / "hm" / "transactions_train.csv.gz", HM_CSV)
    write(tmp_path / "hm" / "customers.csv", "customer_id\nc1\n")
    source = open_source(str(tmp_path / "hm"))
    assert source.name == "hm"
    assert source.customers_path == tmp_path / "hm" / "customers.csv"
    events = list(source.events())
    assert [e["customer_id"] for e in events] == ["c1", "c1", "c2", "c1"]
    assert events[0]["article_id"] == "0108775015"  # leading zero kept
    assert events[0]["event_time"] == datetime(2020, 9, 20, tzinfo=UTC)
    assert events[0]["quantity"] == 1 and events[2]["sales_channel_id"] == 1
    assert events[0]["unit_price"] == pytest.approx(0.0508305084745762)
    assert events[0]["produced_at"] is None
    # Two identical rows: same content, distinct ids by occurrence index.
    key = "2020-09-20\x1fc1\x1f0108775015\x1f0.0508305084745762\x1f2"
    assert events[0]["event_id"] == make_event_id("hm", key, 0)
    assert events[1]["event_id"] == make_event_id("hm", key, 1)
    assert source.stats.rows_read == 5
    assert source.stats.accepted == 4
    assert dict(source.stats.rejected) == {"customer_id: is empty": 1}
    assert "rows read 5 = accepted 4 + rejected 1" in source.stats.summary()
    # Every accepted event passes the contract once given a producer timestamp.
    for e in events:
        assert validate({**_wire(e), "produced_at": "2026-01-01T00:00:00Z"}) is None


def _wire(event: dict) -> dict:
    return {
        k: v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, datetime) else v
        for k, v in event.items()
        if v is not None or k == "sales_channel_id"
    }


def test_batches_have_the_contract_schema_and_ids_are_stable_across_batch_sizes(
    tmp_path: Path,
) -> None:
    write(tmp_path / "hm" / "transactions_train.csv", HM_CSV)
    source = open_source(f"hm:{tmp_path / 'hm'}")
    batches = list(source.iter_batches(batch_rows=1))
    assert all(b.schema == ARROW_SCHEMA for b in batches)
    assert tuple(ARROW_SCHEMA.names) == FIELD_NAMES
    small = [i for b in batches for i in b["event_id"].to_pylist()]
    whole = [i for b in source.iter_batches() for i in b["event_id"].to_pylist()]
    assert small == whole and len(set(whole)) == 4


def test_synthetic_marker_and_window(tmp_path: Path) -> None:
    write(tmp_path / "gen" / "transactions_train.csv", HM_CSV)
    (tmp_path / "gen" / GENERATED_MARKER).write_text("{}")
    source = open_source(str(tmp_path / "gen"), start=date(2020, 9, 21), end=date(2020, 9, 21))
    assert source.name == "synthetic"
    assert list(source.events()) == []
    assert source.stats.rows_read == 1 and source.stats.n_rejected == 1  # the 09-21 row
    source = open_source(str(tmp_path / "gen"), start=date(2020, 9, 22))
    assert [e["article_id"] for e in source.events()] == ["0200000001"]
    assert all(e["source"] == "synthetic" for e in open_source(str(tmp_path / "gen")).events())


def test_online_retail_returns_rejections_and_float_like_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "retail.csv", RETAIL_CSV)
    source = open_source(str(path))
    events = list(source.events())
    assert source.name == "online_retail"
    assert [(e["customer_id"], e["article_id"], e["quantity"]) for e in events] == [
        ("17850", "85123A", 6),
        ("14527", "D", -1),  # a cancellation is kept, as a return
        ("17850", "22961", 2),  # a price of 0 is valid: the contract asks unit_price >= 0
    ]
    assert events[0]["event_time"] == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    assert events[1]["sales_channel_id"] is None
    assert events[2]["unit_price"] == 0.0
    assert dict(source.stats.rejected) == {"customer_id: is empty": 1}
    assert source.stats.rows_read == 4
    for e in events:
        assert validate({**_wire(e), "produced_at": "2026-01-01T00:00:00Z"}) is None


# Each row breaks one rule. The contract's rules give validate()'s reason for the same event;
# source text that is no date or number gets a reason naming the source column.
RETAIL_BAD = [
    ("536400,A1,X,-2,12/1/2010 10:00,-1.5,17850,UK", {"unit_price": -1.5}),
    ("536401,A1,X,0,12/1/2010 10:00,1.5,17850,UK", {"quantity": 0}),
    ("536402,A1,X,3000000000,12/1/2010 10:00,1.5,17850,UK", {"quantity": 3_000_000_000}),
    ("536403,A1,X,1,12/1/2010 10:00,1.5,  ,UK", {"customer_id": "  "}),
    (f"536404,{'A' * 300},X,1,12/1/2010 10:00,1.5,17850,UK", {"article_id": "A" * 300}),
    ("536405,A1,X,1,12/1/2010 10:00,inf,17850,UK", {"unit_price": float("inf")}),
    ("536406,A1,X,0,12/1/2010 10:00,-1,,UK", {"customer_id": "", "quantity": 0}),
    ("536407,A1,X,1.5,12/1/2010 10:00,1.5,17850,UK", "Quantity: not an integer"),
    ("536408,A1,X,1,12/1/2010 10:00,cheap,17850,UK", "UnitPrice: not a number"),
    ("536409,A1,X,1,soon,1.5,17850,UK", "InvoiceDate: not a date"),
]


def _contract_reason(changes: dict) -> str | None:
    event = {
        "event_id": "online_retail-x",
        "event_time": "2010-12-01T10:00:00Z",
        "customer_id": "17850",
        "article_id": "A1",
        "quantity": 1,
        "unit_price": 1.5,
        "sales_channel_id": None,
        "source": "online_retail",
        "produced_at": "2020-01-01T00:00:00Z",
    }
    return validate({**event, **changes})


def test_adapters_reject_with_the_contracts_reasons(tmp_path: Path) -> None:
    header = RETAIL_CSV.splitlines()[0]
    path = write(tmp_path / "bad.csv", "\n".join([header, *(row for row, _ in RETAIL_BAD)]) + "\n")
    source = open_source(str(path))
    assert list(source.events()) == []
    expected = Counter(
        want if isinstance(want, str) else _contract_reason(want) for _, want in RETAIL_BAD
    )
    assert None not in expected
    assert source.stats.rejected == expected
    assert expected["unit_price: is negative"] == 1  # not "not positive": the contract's words
    assert expected["customer_id: is empty"] == 2  # the first failing field, in contract order


def test_hm_rejections_use_the_contracts_reasons(tmp_path: Path) -> None:
    lines = [
        "t_dat,customer_id,article_id,price,sales_channel_id",
        "2020-02-30,c1,0108775015,0.01,2",
        "2020-09-20,c1,0108775015,-0.01,2",
        "2020-09-20,c1,0108775015,0,1",
        "2020-09-20,c1,0108775015,0.01,3",
        "2020-09-20,c1,0108775015,0.01,web",
        "2020-09-20,c1,0108775015,0.01,",
    ]
    write(tmp_path / "hm" / "transactions_train.csv", "\n".join(lines) + "\n")
    source = open_source(str(tmp_path / "hm"))
    events = list(source.events())
    assert [(e["unit_price"], e["sales_channel_id"]) for e in events] == [(0.0, 1), (0.01, None)]
    assert source.stats.rejected == Counter(
        {
            "t_dat: not a date": 1,
            _contract_reason({"unit_price": -0.01}): 1,
            _contract_reason({"sales_channel_id": 3}): 1,
            "sales_channel_id: not a number": 1,
        }
    )


def test_online_retail_ii_column_names(tmp_path: Path) -> None:
    text = RETAIL_CSV.replace("InvoiceNo", "Invoice").replace("UnitPrice", "Price")
    text = text.replace("CustomerID", "Customer ID").replace(
        "12/1/2010 8:26", "2010-12-01 08:26:00"
    )
    path = write(tmp_path / "retail2.csv", text)
    events = list(open_source(f"online_retail:{path}").events())
    assert events[0]["customer_id"] == "17850"
    assert events[0]["event_time"] == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)


def test_unsorted_input_is_refused_with_the_row(tmp_path: Path) -> None:
    lines = HM_CSV.splitlines()
    path = write(tmp_path / "hm" / "transactions_train.csv", "\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(PulseError, match=r"not sorted by event time at row 6; sort it first"):
        list(open_source(str(path.parent)).iter_batches(batch_rows=2))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hm:/nonexistent/folder", "source not found"),
        ("{empty}", "no transactions_train"),
    ],
)
def test_bad_paths_are_clear_errors(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PulseError, match=message):
        open_source(spec.format(empty=tmp_path / "empty"))


def test_wrong_columns_are_clear_errors(tmp_path: Path) -> None:
    write(tmp_path / "hm" / "transactions_train.csv", "t_dat,customer\n2020-01-01,a\n")
    with pytest.raises(PulseError, match="missing column"):
        list(open_source(str(tmp_path / "hm")).iter_batches())
    path = write(tmp_path / "r.csv", "InvoiceNo,Quantity\n1,2\n")
    with pytest.raises(PulseError, match="not an Online Retail file, missing column StockCode"):
        list(open_source(str(path)).iter_batches())


def test_inlined_event_ids_equal_make_event_id() -> None:
    import numpy as np

    from producers.adapters import _event_ids

    keys = np.array(["2020-09-20\x1fc1\x1f0108775015\x1f0.05\x1f2", "x"], dtype=object)
    got = _event_ids("hm", keys, np.array([0, 3]))
    assert got == [make_event_id("hm", keys[0], 0), make_event_id("hm", "x", 3)]


def test_a_parquet_copy_gives_the_same_events(tmp_path: Path) -> None:
    import pandas as pd

    csv_dir = tmp_path / "csv"
    write(csv_dir / "transactions_train.csv", HM_CSV)
    frame = pd.read_csv(csv_dir / "transactions_train.csv", dtype={"article_id": str})
    frame["t_dat"] = pd.to_datetime(frame["t_dat"])  # typed columns, as in Kaggle parquet copies
    (tmp_path / "pq").mkdir()
    frame.to_parquet(tmp_path / "pq" / "transactions_train.parquet")
    from_csv = list(open_source(str(csv_dir)).events())
    source = open_source(str(tmp_path / "pq"))
    assert source.path.suffix == ".parquet"
    assert list(source.events()) == from_csv


def test_cli_inspect_prints_the_reconciliation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pulse.cli import main

    write(tmp_path / "hm" / "transactions_train.csv", HM_CSV)
    assert main(["data", "inspect", f"hm:{tmp_path / 'hm'}"]) == 0
    out = capsys.readouterr().out
    assert "rows read 5 = accepted 4 + rejected 1 (customer_id: is empty: 1)" in out
    assert "2 customers; event time 2020-09-20 00:00:00+00:00 .. 2020-09-22" in out
    assert main(["data", "inspect", str(tmp_path / "nope")]) != 0
    assert "source not found" in capsys.readouterr().err
