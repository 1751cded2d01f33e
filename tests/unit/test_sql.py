"""`pulse sql` over the catalog (storage.catalog, storage.sql): each answer equals an
independent pyarrow/pandas computation on the inputs as written, combined by id; a
write, an unknown table or a syntax error is one line and changes nothing.

The data root (tests/sql_catalog.py) is written once per module, with the stores' own
writers: a Delta lake, the dimensions, two registry versions, the two snapshots.
"""

from __future__ import annotations

import io
import json
import os
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import sql_catalog as shop
from sql_catalog import V1, V2

from pulse.cli import main
from runtime.errors import PulseError
from runtime.settings import Settings
from storage import catalog, lake
from storage.objects import write_parquet
from storage.sql import query_table, with_versions

if TYPE_CHECKING:
    from pulse.local.s3 import S3Endpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, base_settings: Settings) -> Path:
    path = tmp_path_factory.mktemp("sql-root")
    shop.build(base_settings.model_copy(update={"data_root": path}))
    return path


@pytest.fixture
def on(root: Path, base_settings: Settings) -> Settings:
    return base_settings.model_copy(update={"data_root": root})


def rows_by(table: pa.Table, *key: str) -> dict[tuple[object, ...], dict[str, object]]:
    """Rows keyed by their id columns (never by position); a repeated key fails."""
    out: dict[tuple[object, ...], dict[str, object]] = {}
    for row in table.to_pylist():
        k = tuple(row[c] for c in key)
        assert k not in out, f"{k} twice"
        out[k] = row
    return out


def frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas()


# -- answers -------------------------------------------------------------------------


def test_events_and_spend_by_utc_day_from_the_lake(on: Settings) -> None:
    got = query_table(
        on,
        "SELECT event_time::date AS day, count(*) AS events, sum(quantity * unit_price) AS spend "
        "FROM transactions GROUP BY 1",
    )
    events = frame(shop.events())
    events["day"] = events["event_time"].dt.tz_convert("UTC").dt.date
    events["spend"] = events["quantity"] * events["unit_price"]
    expected = events.groupby("day").agg(events=("event_id", "size"), spend=("spend", "sum"))
    got_by_day = rows_by(got, "day")
    assert set(got_by_day) == {(d,) for d in expected.index}
    for day, row in expected.iterrows():
        assert got_by_day[(day,)]["events"] == row["events"]
        assert got_by_day[(day,)]["spend"] == pytest.approx(row["spend"])


def test_transactions_is_every_event_once_with_its_partition(on: Settings) -> None:
    got = rows_by(query_table(on, "SELECT * FROM transactions"), "event_id")
    written = rows_by(shop.events(), "event_id")
    assert set(got) == set(written)
    for key, row in written.items():
        assert {k: got[key][k] for k in row} == row
        assert got[key]["event_date"] == row["event_time"].date()  # type: ignore[attr-defined]


def test_the_lake_is_a_lazy_dataset_over_exactly_its_live_files(on: Settings) -> None:
    source = catalog.arrow_source(on, catalog.resolve(on, "transactions"))
    assert isinstance(source, ds.FileSystemDataset)
    assert sorted(source.files) == sorted(lake.live_files(on))
    # a filter on the partition column leaves the other days' files out of the scan
    day2 = source.get_fragments(filter=ds.field("event_date") == pa.scalar(shop._at(2, 0).date()))
    assert {Path(f.path).parent.name for f in day2} == {"event_date=2024-01-02"}


def test_current_churn_scores_joined_with_customers(on: Settings) -> None:
    got = query_table(
        on,
        "SELECT s.customer_id, s.churn_probability, c.age, c.club_member_status "
        "FROM churn_scores s JOIN customers c USING (customer_id)",
    )
    expected = frame(shop.churn_scores(V2)).merge(frame(shop.CUSTOMERS), on="customer_id")
    got_by_id = rows_by(got, "customer_id")
    assert set(got_by_id) == {(c,) for c in expected["customer_id"]}
    for _, row in expected.iterrows():
        mine = got_by_id[(row["customer_id"],)]
        assert mine["churn_probability"] == row["churn_probability"]
        assert mine["club_member_status"] == (row["club_member_status"] or None)
        assert mine["age"] == (None if pd.isna(row["age"]) else row["age"])


def test_recommendations_with_article_names(on: Settings) -> None:
    got = query_table(
        on,
        "SELECT r.customer_id, r.rank, a.name, a.category FROM recommendations r "
        "JOIN articles a USING (article_id)",
    )
    expected = frame(shop.recommendations(V2)).merge(frame(shop.ARTICLES), on="article_id")
    got_by_key = rows_by(got, "customer_id", "rank")
    assert len(got_by_key) == len(expected) == 6
    for _, row in expected.iterrows():
        mine = got_by_key[(row["customer_id"], row["rank"])]
        assert (mine["name"], mine["category"]) == (row["name"], row["category"])


def test_the_view_keeps_its_recommendation_lists(on: Settings) -> None:
    got = rows_by(query_table(on, "SELECT customer_id, recommendations FROM customer_view"),
                  "customer_id")  # fmt: skip
    written = shop.view().select(["customer_id", "recommendations"])
    assert got == rows_by(written, "customer_id")
    flat = query_table(
        on, "SELECT customer_id, unnest(recommendations) AS article_id FROM customer_view"
    )
    assert sorted(flat.to_pylist(), key=str) == [
        {"customer_id": "c1", "article_id": "a2"},
        {"customer_id": "c1", "article_id": "a3"},
    ]


def test_value_at_risk_by_segment(on: Settings) -> None:
    got = query_table(
        on,
        "SELECT g.segment_name, sum(s.churn_probability * v.expected_spend) AS at_risk "
        "FROM churn_scores s JOIN customer_value v USING (customer_id) "
        "JOIN segments g USING (customer_id) GROUP BY 1",
    )
    joined = (
        frame(shop.churn_scores(V2))
        .merge(frame(shop.value(V2)), on="customer_id")
        .merge(frame(shop.segments(V2)), on="customer_id")
    )
    joined["at_risk"] = joined["churn_probability"] * joined["expected_spend"]
    expected = joined.groupby("segment_name")["at_risk"].sum()
    got_by = rows_by(got, "segment_name")
    assert set(got_by) == {(s,) for s in expected.index}
    for name, total in expected.items():
        assert got_by[(name,)]["at_risk"] == pytest.approx(total)


@pytest.mark.parametrize(
    "spelling",
    [
        f"churn_scores@{V1}",
        f'"churn_scores@{V1}"',
        f"`churn_scores@{V1}`",
        f"CHURN_SCORES@{V1.lower()}",
    ],  # fmt: skip
)
def test_a_version_by_name_is_that_version_not_current(on: Settings, spelling: str) -> None:
    old = rows_by(query_table(on, f"SELECT customer_id, churn_probability FROM {spelling}"),
                  "customer_id")  # fmt: skip
    assert old == rows_by(shop.churn_scores(V1).select(["customer_id", "churn_probability"]),
                          "customer_id")  # fmt: skip
    current = rows_by(query_table(on, "SELECT customer_id, churn_probability FROM churn_scores"),
                      "customer_id")  # fmt: skip
    assert current != old


def test_comparing_two_versions(on: Settings) -> None:
    got = query_table(
        on,
        f"SELECT customer_id, o.churn_probability AS before, n.churn_probability AS after "
        f"FROM churn_scores@{V1} o FULL JOIN churn_scores@{V2} n USING (customer_id)",
    )
    before = {r["customer_id"]: r["churn_probability"] for r in shop.churn_scores(V1).to_pylist()}
    after = {r["customer_id"]: r["churn_probability"] for r in shop.churn_scores(V2).to_pylist()}
    assert rows_by(got, "customer_id") == {
        (c,): {"customer_id": c, "before": before.get(c), "after": after.get(c)}
        for c in before.keys() | after.keys()
    }


def test_model_metrics_one_row_per_model_version_and_metric(on: Settings) -> None:
    got = rows_by(query_table(on, "SELECT * FROM model_metrics"),
                  "model", "version", "candidate", "metric")  # fmt: skip
    expected = {}
    for model in shop.OUTPUTS:
        for version in (V1, V2):
            meta = shop.meta(model, version)
            for first, inner in meta["metrics"].items():
                leaves = inner.items() if isinstance(inner, dict) else [(None, inner)]
                for name, number in leaves:
                    key = (model, version, first if name else None, name or first)
                    cutoff = date.fromisoformat(meta["window"]["cutoff_exclusive"])
                    expected[key] = {
                        "model": model, "version": version, "current": version == V2,
                        "promoted": True, "cutoff": cutoff, "candidate": key[2],
                        "metric": key[3], "value": float(number),
                    }  # fmt: skip
    assert got == expected


def test_customers_while_ingest_replaces_their_file_are_the_newest_file(
    on: Settings, tmp_path: Path
) -> None:
    # Ingest writes the merged dimension (old rows + new, the new winning) as a new file,
    # then removes the old one; in between a reader sees both, and the newest is whole.
    settings = on.model_copy(update={"data_root": tmp_path})
    folder = Path(str(lake.customers_dir(settings)))
    old = shop.CUSTOMERS.slice(0, 3)
    merged = shop.CUSTOMERS.set_column(5, "age", pa.array([32.0, 45.0, None, 22.0]))
    write_parquet(old, folder / "customers-ffff.parquet")  # names sort the other way
    write_parquet(merged, folder / "customers-0000.parquet")
    os.utime(folder / "customers-ffff.parquet", (1_700_000_000, 1_700_000_000))
    got = rows_by(query_table(settings, "SELECT * FROM customers"), "customer_id")
    assert got == rows_by(merged, "customer_id")
    assert rows_by(catalog.listing(settings), "table")[("customers",)]["rows"] == 4


def test_a_folder_is_its_parquet_files_not_what_writers_leave_beside(tmp_path: Path) -> None:
    from upath import UPath

    for name in ["part-00000-x.snappy.parquet", "part-00001-x.snappy.parquet", "_SUCCESS",
                 ".part-00000-x.snappy.parquet.crc", "._SUCCESS.crc",
                 ".customers-1.parquet.1a2b3c4d.tmp", "_committed_1", "notes.txt"]:  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    assert catalog.parquet_files(UPath(tmp_path)) == tuple(
        str(tmp_path / f"part-0000{i}-x.snappy.parquet") for i in (0, 1)
    )
    assert catalog.parquet_files(UPath(tmp_path / "absent")) == ()


def test_explain_prints_the_plan_with_the_filter_in_the_scan(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = "EXPLAIN SELECT count(*) FROM transactions WHERE event_date = DATE '2024-01-02'"
    assert main(pulse_sql(root, sql)) == 0
    plan = capsys.readouterr().out
    assert "ARROW_SCAN" in plan and "event_date='2024-01-02'" in plan


def test_a_pivot_with_its_values_named_reads(on: Settings) -> None:
    got = query_table(
        on,
        f"PIVOT (SELECT version, candidate, value FROM model_metrics WHERE metric = 'auc_roc') "
        f"ON version IN ('{V1}', '{V2}') USING max(value)",
    )
    assert rows_by(got, "candidate") == {
        ("stack",): {"candidate": "stack", V1: 0.70, V2: 0.75},
        ("bgnbd",): {"candidate": "bgnbd", V1: 0.68, V2: 0.68},
    }


def test_show_and_describe_see_the_catalog(on: Settings) -> None:
    names = set(query_table(on, "SHOW TABLES").column("name").to_pylist())
    assert {*catalog.TABLES, f"churn_scores@{V1}", f"segments@{V2}"} <= names
    columns = query_table(on, "DESCRIBE articles").column("column_name").to_pylist()
    assert columns == list(lake.ARTICLE_COLUMNS)


def test_listing_counts_rows_and_says_what_is_absent(on: Settings, tmp_path: Path) -> None:
    listed = rows_by(catalog.listing(on), "table")
    assert listed[("transactions",)]["rows"] == len(shop.EVENTS)
    assert listed[("recommendations",)]["rows"] == shop.recommendations(V2).num_rows
    assert listed[(f"churn_scores@{V1}",)]["rows"] == shop.churn_scores(V1).num_rows
    empty = rows_by(catalog.listing(on.model_copy(update={"data_root": tmp_path})), "table")
    assert set(empty) == {(n,) for n in catalog.TABLES}
    assert all(row["rows"] is None for row in empty.values())
    assert "`pulse retrain` creates it" in str(empty[("churn_scores",)]["source"])


# -- with_versions ---------------------------------------------------------------------


def test_versions_are_quoted_outside_strings_and_comments_only() -> None:
    text = (
        f"SELECT 'churn_scores@{V1}' AS s, x FROM churn_scores@{V1} -- churn_scores@{V2}\n"
        f'JOIN "segments@{V2}" USING (customer_id) /* segments@x */ JOIN `recommendations@{V2}`'
    )
    assert with_versions(text) == (
        f"SELECT 'churn_scores@{V1}' AS s, x FROM \"churn_scores@{V1}\" -- churn_scores@{V2}\n"
        f'JOIN "segments@{V2}" USING (customer_id) /* segments@x */ JOIN "recommendations@{V2}"'
    )
    assert with_versions("SELECT a@b FROM customers") == "SELECT a@b FROM customers"


# -- bad input: one line, nothing changed ---------------------------------------------


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT * FROM nowhere", "unknown table 'nowhere': the tables are transactions, cust"),
        ("SELEC * FROM customers", 'SQL syntax error: syntax error at or near "SELEC"'),
        ("SELECT * FROM customers WHERE", "SQL syntax error"),
        ("SELECT nope FROM customers", 'Referenced column "nope" not found'),
        (
            "SELECT * FROM churn_scores@20990101T000000000Z-ffffff",
            "unknown version '20990101T000000000Z-ffffff' of churn_scores",
        ),
        ("SELECT * FROM model_metrics@x", "unknown table 'model_metrics@x'"),
        ("DROP TABLE transactions", "DROP is not allowed"),
        ("DROP VIEW customers", "DROP is not allowed"),
        ("INSERT INTO customers VALUES ('c9')", "INSERT is not allowed"),
        ("DELETE FROM customers", "DELETE is not allowed"),
        ("UPDATE customers SET age = 1", "UPDATE is not allowed"),
        ("CREATE TABLE t AS SELECT * FROM customers", "CREATE is not allowed"),
        ("COPY (SELECT * FROM customers) TO '{root}/copied.csv'", "COPY is not allowed"),
        ("COPY customers TO '{root}/copied.parquet' (FORMAT parquet)", "COPY is not allowed"),
        ("EXPORT DATABASE '{root}/exported'", "EXPORT is not allowed"),
        ("ATTACH '{root}/other.db' AS other", "ATTACH is not allowed"),
        ("PRAGMA version", "PRAGMA is not allowed"),
        ("SET threads = 1", "SET is not allowed"),
        ("INSTALL httpfs", "INSTALL is not allowed"),
        ("LOAD httpfs", "LOAD is not allowed"),
        ("CALL pragma_version()", "CALL is not allowed"),
        ("SELECT 1; DROP TABLE customers", "one statement at a time: this SQL has 2"),
        ("PIVOT model_metrics ON model USING count(*)", "a PIVOT without an IN list"),
        ("EXPLAIN ANALYZE DELETE FROM customers", "EXPLAIN [ANALYZE] of a SELECT only"),
        ("EXPLAIN (FORMAT json) SELECT 1", "EXPLAIN [ANALYZE] of a SELECT only"),
        ("/* a comment */ -- and another\n DROP TABLE customers", "DROP is not allowed"),
        (
            "SELECT * FROM read_parquet('{root}/lake/customers/*.parquet')",
            "file system operations are disabled",
        ),
        ("SELECT * FROM read_text('/etc/hostname')", "file system operations are disabled"),
        ("   ", "no SQL given"),
    ],  # fmt: skip
)
def test_bad_sql_is_one_line_and_changes_nothing(
    on: Settings, root: Path, sql: str, fragment: str
) -> None:
    before = shop.listing(root)
    with pytest.raises(PulseError) as caught:
        query_table(on, sql.format(root=root))
    message = str(caught.value)
    assert "\n" not in message and fragment in message, message
    assert shop.listing(root) == before


def test_an_absent_table_names_what_creates_it_when_used(on: Settings, tmp_path: Path) -> None:
    fresh = on.model_copy(update={"data_root": tmp_path})
    assert query_table(fresh, "SELECT 42 AS answer").to_pylist() == [{"answer": 42}]
    expected = {
        "transactions": "the lake at", "customers": "`pulse ingest SOURCE` with a customers",
        "articles": "`pulse ingest SOURCE` with an articles", "features_live": "`pulse stream`",
        "customer_view": "`pulse stream`", "churn_scores": "no CURRENT churn model yet",
        "customer_value": "no CURRENT churn model yet",
        "recommendations": "no CURRENT recommendations model yet",
        "segments": "`pulse retrain` creates it", "model_metrics": "`pulse retrain` creates it",
    }  # fmt: skip
    assert set(expected) == set(catalog.TABLES)
    for name, fragment in expected.items():
        with pytest.raises(PulseError, match="absent") as caught:
            query_table(fresh, f"SELECT count(*) FROM {name}")
        assert fragment in str(caught.value), str(caught.value)


def test_a_query_using_only_present_tables_runs_when_others_are_absent(
    on: Settings, tmp_path: Path
) -> None:
    partial = on.model_copy(update={"data_root": tmp_path})
    lake.write_events(partial, shop.events(), "test", 0)
    assert query_table(partial, "SELECT count(*) AS n FROM transactions").to_pylist() == [
        {"n": len(shop.EVENTS)}
    ]


# -- the command line ------------------------------------------------------------------


def pulse_sql(root: Path, *argv: str) -> list[str]:
    return ["--data-root", str(root), "sql", *argv]


def test_cli_csv(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT customer_id, churn_probability, as_of FROM churn_scores ORDER BY customer_id"
    assert main(pulse_sql(root, "--format", "csv", sql)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "customer_id,churn_probability,as_of"
    expected = {r["customer_id"]: r for r in shop.churn_scores(V2).to_pylist()}
    assert len(lines) == 1 + len(expected)
    for line in lines[1:]:
        customer, probability, as_of = line.split(",")
        assert float(probability) == expected[customer]["churn_probability"]
        assert as_of == expected[customer]["as_of"].isoformat()


def test_cli_json_is_one_array_of_objects(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT customer_id, as_of, recommendations, churn_probability FROM customer_view"
    assert main(pulse_sql(root, "--format", "json", sql)) == 0
    got = {r["customer_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert got == {
        "c1": {"customer_id": "c1", "as_of": "2024-01-03T12:00:00Z",
               "recommendations": ["a3", "a2"], "churn_probability": 0.2},
        "c2": {"customer_id": "c2", "as_of": "2024-01-03T12:00:00Z",
               "recommendations": [], "churn_probability": None},
    }  # fmt: skip
    assert main(pulse_sql(root, "--format", "json", "SELECT 1 AS x WHERE false")) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_table_from_stdin(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "SELECT a.name, count(*) AS bought FROM transactions t JOIN articles a "
        "USING (article_id) GROUP BY 1 ORDER BY 2 DESC, 1"
    ))  # fmt: skip
    assert main(pulse_sql(root, "-")) == 0
    assert capsys.readouterr().out.splitlines() == [
        "name   bought",
        "-----  ------",
        "Tee         4",
        "Jeans       3",
        "Scarf       3",
        "(3 rows)",
    ]


def test_cli_table_stops_at_max_rows(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(pulse_sql(root, "--max-rows", "2", "SELECT * FROM transactions")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 2 + 1 and lines[-1].startswith("(2 rows shown, there are more")


def test_cli_tables(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(pulse_sql(root, "--tables", "--format", "json")) == 0
    listed = {r["table"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["customers"]["rows"] == 4 and listed[f"segments@{V1}"]["rows"] == 3


def test_cli_tables_says_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(pulse_sql(tmp_path, "--tables")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["table", "rows", "about", "source"]
    churn = next(line for line in lines if line.startswith("churn_scores "))
    assert churn.split()[1] == "absent" and churn.endswith("`pulse retrain` creates it")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["SELECT * FROM nowhere"], "unknown table 'nowhere'"),
        (["SELEC 1"], "SQL syntax error"),
        (["DROP TABLE transactions"], "DROP is not allowed"),
        (["INSERT INTO customers VALUES ('x')"], "INSERT is not allowed"),
        ([], "give a query"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(
    root: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    before = shop.listing(root)
    assert main(pulse_sql(root, *argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("pulse: error: ")
    assert fragment in captured.err
    assert shop.listing(root) == before


# -- in an object store ----------------------------------------------------------------


def test_the_same_answers_from_a_data_root_in_an_object_store(
    on: Settings,
    s3_settings: Settings,
    s3_endpoint: S3Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shop.build(s3_settings)
    queries = {
        "SELECT event_date, count(*) AS n, sum(quantity * unit_price) AS spend FROM transactions "
        "WHERE event_date >= DATE '2024-01-02' GROUP BY 1": ("event_date",),
        "SELECT customer_id, churn_probability, age FROM churn_scores "
        "JOIN customers USING (customer_id)": ("customer_id",),
        "SELECT customer_id, rank, name FROM recommendations JOIN articles USING (article_id)": (
            "customer_id",
            "rank",
        ),
        f"SELECT * FROM churn_scores@{V1}": ("customer_id",),
        "SELECT customer_id, recommendations FROM customer_view": ("customer_id",),
        "SELECT customer_id, monetary FROM features_live": ("customer_id",),
        "SELECT * FROM model_metrics": ("model", "version", "candidate", "metric"),
    }
    for sql, key in queries.items():
        in_store = rows_by(query_table(s3_settings, sql), *key)
        assert in_store, sql
        assert in_store == rows_by(query_table(on, sql), *key), sql
    assert rows_by(catalog.listing(s3_settings).drop_columns("source"), "table") == rows_by(
        catalog.listing(on).drop_columns("source"), "table"
    )
    # and the command, which runs on an object-store data root (pulse.cli.ON_OBJECT_STORE)
    for field, value in s3_endpoint.settings().items():
        if field != "data_root":
            monkeypatch.setenv(f"PULSE_{field.upper()}", value)
    sql = "SELECT customer_id, churn_probability FROM churn_scores ORDER BY customer_id"
    assert main(["--data-root", str(s3_settings.data_root), "sql", "--format", "csv", sql]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "customer_id,churn_probability",
        *(f"{r['customer_id']},{r['churn_probability']!r}"
          for r in sorted(shop.churn_scores(V2).to_pylist(), key=lambda r: r["customer_id"])),
    ]  # fmt: skip
