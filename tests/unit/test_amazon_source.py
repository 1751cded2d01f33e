"""The ``amazon:`` source on small hand-written files, one per release (2014, 2018, 2023):
what each line becomes, what is rejected and why, the order, the ids, the articles."""

from __future__ import annotations

import gzip
import random
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producers.adapters import ARROW_SCHEMA, open_source
from producers.amazon import write_reviews_before
from producers.amazon_generator import write_amazon_layout
from producers.source_base import ARTICLES_SCHEMA
from runtime.errors import PulseError
from schemas.transaction import make_event_id, validate
from storage.lake import ARTICLE_COLUMNS

D1 = 1577836800  # 2020-01-01 00:00:00 UTC, in seconds
DAY = 86_400

# 2018: reviews sorted by product as Amazon's are, not by time. One line per case.
REVIEWS_2018 = [
    f'{{"reviewerID": "c1", "asin": "A1", "overall": 5.0, "unixReviewTime": {D1 + 2 * DAY}}}',
    f'{{"reviewerID": "c2", "asin": "A1", "verified": true, "unixReviewTime": {D1}}}',
    "{broken",  # line: malformed JSON
    "[1, 2]",  # line: not a JSON object
    f'{{"asin": "A1", "unixReviewTime": {D1}}}',  # reviewerID: missing
    f'{{"reviewerID": "c3", "unixReviewTime": {D1}}}',  # asin: missing
    '{"reviewerID": "c3", "asin": "A1", "unixReviewTime": "soon"}',  # not a time
    '{"reviewerID": "c3", "asin": "A1", "reviewTime": "01 5, 2020"}',  # day text: accepted
    f'{{"reviewerID": "c2", "asin": "A2", "unixReviewTime": {D1 + DAY}}}',
    f'{{"reviewerID": "c2", "asin": "A3", "unixReviewTime": {D1}}}',  # price ""
    f'{{"reviewerID": "c2", "asin": "A4", "unixReviewTime": {D1}}}',  # price is a range
    f'{{"reviewerID": "c2", "asin": "A9", "unixReviewTime": {D1}}}',  # not in metadata
    f'{{"reviewerID": "c2", "asin": "A1", "unixReviewTime": {D1}, "overall": 1.0}}',  # duplicate
    f'{{"reviewerID": "c2", "asin": "A1", "unixReviewTime": {D1 + 4 * DAY}}}',  # again, later
    f'{{"reviewerID": "c1", "asin": "A5", "unixReviewTime": {D1 + 3 * DAY}}}',
    "   ",  # a blank line is no record
    f'{{"reviewerID": "", "asin": "A1", "unixReviewTime": {D1}}}',  # customer_id: is empty
    f'{{"reviewerID": "c4", "asin": "A6", "unixReviewTime": {D1}}}',  # price: is negative
]
META_2018 = [
    '{"asin": "A1", "title": "Kettle &amp; Co", "price": "$12.99", "brand": "Brew",'
    ' "category": ["Home &amp; Kitchen", "Kettles"], "main_cat": "Amazon Home"}',
    '{"asin": "A2", "title": "Laptop", "price": "$1,299.00", "brand": "", "category": [],'
    ' "main_cat": "Computers"}',
    '{"asin": "A3", "title": "Mug", "price": ""}',
    '{"asin": "A4", "title": "Socks", "price": "$5.99 - $9.99"}',
    '{"asin": "A5", "title": "Lamp", "price": ""}',
    '{"asin": "A5", "title": "Lamp (again)", "price": "$3.00"}',  # repeated: the priced one wins
    "{oops",  # skipped: no article
    '{"asin": "A6", "price": -1}',
]


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def rows(source) -> list[tuple]:  # type: ignore[no-untyped-def]
    """(customer, article, event_time, unit_price) of each event, in the order given."""
    return [
        (e["customer_id"], e["article_id"], e["event_time"], e["unit_price"])
        for e in source.events()
    ]


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def shop_2018(folder: Path) -> Path:
    write(folder / "Shop_5.json.gz", REVIEWS_2018)
    write(folder / "meta_Shop.json.gz", META_2018)
    return folder


def test_2018_reviews_become_events_rejected_with_reasons(tmp_path: Path) -> None:
    source = open_source(f"amazon:{shop_2018(tmp_path / 'shop')}")
    assert source.name == "amazon" and source.path.name == "Shop_5.json.gz"
    assert source.articles_path == tmp_path / "shop" / "meta_Shop.json.gz"
    assert source.customers_path is None
    events = list(source.events())
    # in event-time order; a tie is ordered by reviewer, then article
    assert rows(source) == [
        ("c2", "A1", at(D1), 12.99),
        ("c2", "A2", at(D1 + DAY), 1299.0),
        ("c1", "A1", at(D1 + 2 * DAY), 12.99),
        ("c1", "A5", at(D1 + 3 * DAY), 3.0),
        ("c2", "A1", at(D1 + 4 * DAY), 12.99),  # the same article again, another day: kept
        ("c3", "A1", at(D1 + 4 * DAY), 12.99),  # "01 5, 2020" read when unixReviewTime is absent
    ]
    assert source.stats.rows_read == 17  # 18 lines, one blank
    assert source.stats.accepted == 6
    assert dict(source.stats.rejected) == {
        "line: malformed JSON": 1,
        "line: not a JSON object": 1,
        "reviewerID: missing": 1,
        "asin: missing": 1,
        "unixReviewTime: not a time": 1,
        "price: missing in metadata": 2,  # an empty price and a range
        "price: asin not in metadata": 1,
        "duplicate review": 1,
        "customer_id: is empty": 1,
        "unit_price: is negative": 1,
    }
    assert source.stats.accepted + source.stats.n_rejected == source.stats.rows_read
    for e in events:
        assert e["quantity"] == 1 and e["sales_channel_id"] is None and e["source"] == "amazon"
        assert e["produced_at"] is None
        us = int(e["event_time"].timestamp()) * 1_000_000
        key = f"{e['customer_id']}\x1f{e['article_id']}\x1f{us}"
        assert e["event_id"] == make_event_id("amazon", key, 0)
        wire = {k: v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, datetime) else v
                for k, v in e.items() if k != "produced_at"}  # fmt: skip
        assert validate({**wire, "produced_at": "2026-01-01T00:00:00Z"}) is None
    assert source.articles().to_pylist() == [
        {"article_id": "A1", "name": "Kettle & Co", "category": "Home & Kitchen > Kettles",
         "brand": "Brew", "price": 12.99},
        {"article_id": "A2", "name": "Laptop", "category": "Computers", "brand": None,
         "price": 1299.0},
        {"article_id": "A3", "name": "Mug", "category": None, "brand": None, "price": None},
        {"article_id": "A4", "name": "Socks", "category": None, "brand": None, "price": None},
        {"article_id": "A5", "name": "Lamp (again)", "category": None, "brand": None,
         "price": 3.0},
        {"article_id": "A6", "name": None, "category": None, "brand": None, "price": -1.0},
    ]  # fmt: skip


def test_order_ids_and_batches_do_not_depend_on_the_file_order(tmp_path: Path) -> None:
    whole = open_source(f"amazon:{shop_2018(tmp_path / 'a')}")
    batches = list(whole.iter_batches(batch_rows=4))
    assert [b.num_rows for b in batches] == [4, 2]
    assert all(b.schema == ARROW_SCHEMA for b in batches)
    shuffled = REVIEWS_2018[:]
    random.Random(3).shuffle(shuffled)
    # the first duplicate in file order is kept: the rejected copy differs only in rating
    write(tmp_path / "b" / "Shop_5.json", shuffled)
    write(tmp_path / "b" / "meta_Shop.json", META_2018)
    other = open_source(f"amazon:{tmp_path / 'b'}")
    assert list(other.events()) == list(whole.events())
    assert other.stats.rejected == whole.stats.rejected


def test_2014_single_quoted_metadata_and_a_reviews_file_given_directly(tmp_path: Path) -> None:
    reviews = write(
        tmp_path / "reviews_Books_5.json.gz",
        [
            '{"reviewerID": "R1", "asin": "0000000116", "overall": 4.0, '
            '"unixReviewTime": 1252800000, "reviewTime": "09 13, 2009"}',
            '{"reviewerID": "R2", "asin": "0000000116", "unixReviewTime": 1252713600}',
            '{"reviewerID": "R1", "asin": "0000000868", "unixReviewTime": 1252800000}',
            '{"reviewerID": "R2", "asin": "0000013714", "unixReviewTime": 1252800000}',
        ],
    )
    write(
        tmp_path / "meta_Books.json.gz",
        [
            "{'asin': '0000000116', 'title': \"Rock'n Roll\", 'price': 7.5, 'brand': 'Penguin',"
            " 'categories': [['Books', 'Literature & Fiction'], ['Kindle Store']],"
            " 'salesRank': {'Books': 3}, 'related': {'also_bought': ['0000000868']}}",
            "{'asin': '0000000868', 'title': 'Unpriced', 'categories': [['Books']]}",
        ],
    )
    write(tmp_path / "meta_Music.json.gz", ["{'asin': 'M1', 'price': 1.0}"])  # not this one
    source = open_source(f"amazon:{reviews}")
    assert source.articles_path == tmp_path / "meta_Books.json.gz"  # named after the reviews
    assert rows(source) == [
        ("R2", "0000000116", at(1252713600), 7.5),
        ("R1", "0000000116", at(1252800000), 7.5),
    ]
    assert dict(source.stats.rejected) == {
        "price: missing in metadata": 1,
        "price: asin not in metadata": 1,
    }
    assert source.articles().to_pylist() == [
        {"article_id": "0000000116", "name": "Rock'n Roll",
         "category": "Books > Literature & Fiction", "brand": "Penguin", "price": 7.5},
        {"article_id": "0000000868", "name": "Unpriced", "category": "Books", "brand": None,
         "price": None},
    ]  # fmt: skip


REVIEWS_2023 = [
    # one review listed under two variants of P1: one event
    '{"rating": 5.0, "asin": "V1", "parent_asin": "P1", "user_id": "U1",'
    ' "timestamp": 1588687728923, "verified_purchase": true}',
    '{"rating": 5.0, "asin": "V2", "parent_asin": "P1", "user_id": "U1",'
    ' "timestamp": 1588687728923, "verified_purchase": true}',
    '{"rating": 3.0, "asin": "V2", "parent_asin": "P1", "user_id": "U2",'
    ' "timestamp": 1588600000000, "verified_purchase": false}',
    '{"asin": "P2", "parent_asin": "P2", "user_id": "U2", "timestamp": 1588600000001}',  # null
    '{"asin": "P3", "parent_asin": "P3", "user_id": "U3", "timestamp": 1588600000002}',  # "None"
    '{"asin": "P4", "parent_asin": "P4", "user_id": "U3", "timestamp": 1588500000000}',
    '{"asin": "P4", "parent_asin": "P4", "user_id": "U4", "timestamp": 1588500000000.5}',
    '{"asin": "P4", "user_id": "U4", "timestamp": 1588500000000}',  # parent_asin: missing
]
META_2023 = [
    '{"main_category": "All Beauty", "title": "Soap", "price": 4.5, "store": "Suds",'
    ' "categories": ["Beauty", "Bath"], "parent_asin": "P1"}',
    '{"main_category": "All Beauty", "title": "Lotion", "price": null, "parent_asin": "P2"}',
    '{"main_category": "Toys", "title": "Kite", "price": "None", "parent_asin": "P3"}',
    '{"main_category": "Garden", "title": "Hose", "price": 19.5, "store": "Acme",'
    ' "categories": [], "parent_asin": "P4"}',
]


def test_2023_parent_asin_milliseconds_and_variants(tmp_path: Path) -> None:
    write(tmp_path / "All_Beauty.jsonl", REVIEWS_2023)
    write(tmp_path / "meta_All_Beauty.jsonl", META_2023)
    source = open_source(f"amazon:{tmp_path}")
    assert source.layout is not None and source.layout.name == "2023"
    events = list(source.events())
    assert rows(source) == [
        ("U3", "P4", datetime(2020, 5, 3, 10, 0, tzinfo=UTC), 19.5),
        ("U2", "P1", datetime(2020, 5, 4, 13, 46, 40, tzinfo=UTC), 4.5),
        ("U1", "P1", datetime(2020, 5, 5, 14, 8, 48, 923000, tzinfo=UTC), 4.5),
    ]
    assert events[2]["event_id"] == make_event_id("amazon", "U1\x1fP1\x1f1588687728923000", 0)
    assert source.stats.rows_read == 8
    assert dict(source.stats.rejected) == {
        "duplicate review": 1,
        "price: missing in metadata": 2,
        "timestamp: not a time": 1,
        "parent_asin: missing": 1,
    }
    articles = {r["article_id"]: r for r in source.articles().to_pylist()}
    assert articles["P1"] == {"article_id": "P1", "name": "Soap", "category": "Beauty > Bath",
                              "brand": "Suds", "price": 4.5}  # fmt: skip
    assert articles["P4"]["category"] == "Garden"  # no path: the main category
    assert (articles["P2"]["price"], articles["P3"]["price"]) == (None, None)


def test_window_skips_reviews_outside_it_and_counts_the_rest(tmp_path: Path) -> None:
    shop = shop_2018(tmp_path / "shop")
    source = open_source(f"amazon:{shop}", start=date(2020, 1, 2), end=date(2020, 1, 4))
    assert [(c, a) for c, a, _, _ in rows(source)] == [("c2", "A2"), ("c1", "A1"), ("c1", "A5")]
    # dated 01-01 or 01-05: skipped; no time at all: read and rejected
    assert source.stats.skipped == 11
    assert source.stats.rows_read == 6
    assert dict(source.stats.rejected) == {
        "line: malformed JSON": 1,
        "line: not a JSON object": 1,
        "unixReviewTime: not a time": 1,
    }


def test_without_metadata_every_review_is_rejected_for_its_price(tmp_path: Path) -> None:
    write(tmp_path / "Shop.json", REVIEWS_2018[:2])
    source = open_source(f"amazon:{tmp_path}")
    assert source.articles_path is None and source.articles() is None
    assert list(source.events()) == []
    assert dict(source.stats.rejected) == {"price: no metadata file": 2}


def test_a_backfill_cut_at_a_date_gives_the_same_events(tmp_path: Path) -> None:
    shop = shop_2018(tmp_path / "shop")
    out = write_reviews_before(shop, tmp_path / "backfill", date(2020, 1, 3))
    assert (out / "meta_Shop.json.gz").resolve() == (shop / "meta_Shop.json.gz").resolve()
    before = list(open_source(f"amazon:{out}").events())
    whole = list(open_source(f"amazon:{shop}").events())
    assert before == [e for e in whole if e["event_time"] < datetime(2020, 1, 3, tzinfo=UTC)]
    assert len(before) == 2


@pytest.mark.parametrize(
    ("files", "spec", "message"),
    [
        ({}, "{dir}", "no Amazon reviews file in this folder"),
        ({"a.json": REVIEWS_2018, "b.jsonl": REVIEWS_2018}, "{dir}", "2 reviews files (a.json"),
        ({"meta_x.json": META_2018}, "{dir}/meta_x.json", "is a metadata file"),
        (
            {"r.json": REVIEWS_2018, "meta_a.json": META_2018, "meta_b.json": META_2018},
            "{dir}",
            "2 metadata files (meta_a.json, meta_b.json), none named after r.json",
        ),
        ({"r.json": ['{"a": 1}']}, "{dir}", "not an Amazon reviews file, its first record has"),
        ({"r.json": ["not json"]}, "{dir}", "not JSON lines"),
        ({"r.json": []}, "{dir}", "r.json: the file is empty"),
        ({"r.json": REVIEWS_2023}, "{dir}/nope.json", "source not found"),
    ],
)
def test_bad_paths_and_files_are_clear_errors(
    tmp_path: Path, files: dict[str, list[str]], spec: str, message: str
) -> None:
    for name, lines in files.items():
        if lines:
            write(tmp_path / name, lines)
        else:
            (tmp_path / name).write_text("\n")
    with pytest.raises(PulseError, match=re.escape(message)):
        open_source(f"amazon:{spec.format(dir=tmp_path)}")


def test_metadata_of_another_release_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "Shop.jsonl", REVIEWS_2023)
    write(tmp_path / "meta_Shop.json", META_2018)
    with pytest.raises(PulseError, match="metadata keyed by asin but the reviews are the 2023"):
        list(open_source(f"amazon:{tmp_path}").iter_batches())


def test_articles_have_the_lake_dimension_columns() -> None:
    types = {"string": "string", "double": "double"}
    assert [(f.name, str(f.type)) for f in ARTICLES_SCHEMA] == [
        (name, types[kind]) for name, kind in ARTICLE_COLUMNS.items()
    ]


@pytest.mark.parametrize("release", ["2018", "2023"])
def test_generated_layout_reads_back_with_its_planted_rejections(
    tmp_path: Path, release: str
) -> None:
    result = write_amazon_layout(tmp_path / "gen", 300, 120, date(2020, 1, 1), 120, 5, release)
    again = write_amazon_layout(tmp_path / "again", 300, 120, date(2020, 1, 1), 120, 5, release)
    assert result.reviews_path.read_bytes() == again.reviews_path.read_bytes()  # same seed
    suffix = ".jsonl.gz" if release == "2023" else ".json.gz"
    assert result.reviews_path.name == f"Pulse_Shop{suffix}"
    source = open_source(f"amazon:{tmp_path / 'gen'}")
    events = list(source.events())
    stats = source.stats
    assert stats.rows_read == result.reviews
    assert set(stats.rejected) == {"price: missing in metadata", "duplicate review"}
    assert stats.accepted == len(events) > 0.9 * result.reviews
    times = [e["event_time"] for e in events]
    assert times == sorted(times)
    assert len({(e["customer_id"], e["article_id"]) for e in events}) == len(events)  # once each
    articles = source.articles()
    assert articles.num_rows == 120 and articles.column("category").null_count == 0
    assert Counter(e["source"] for e in events) == {"amazon": len(events)}


def test_ingest_writes_the_articles_and_new_rows_win(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from batch.ingest import ingest_articles
    from storage.lake import articles_dir

    shop = shop_2018(tmp_path / "shop")
    assert ingest_articles(settings, open_source(f"amazon:{shop}").articles()) == 6
    write(tmp_path / "v2" / "Shop.json", REVIEWS_2018[:1])
    write(tmp_path / "v2" / "meta_Shop.json", ['{"asin": "A1", "title": "Kettle 2", "price": 14}',
                                               '{"asin": "B7", "title": "New"}'])  # fmt: skip
    assert ingest_articles(settings, open_source(f"amazon:{tmp_path / 'v2'}").articles()) == 7
    files = sorted(Path(str(articles_dir(settings))).glob("*.parquet"))
    assert len(files) == 1  # the older file removed
    table = pq.read_table(files[0])
    assert table.column_names == list(ARTICLE_COLUMNS)
    got = {r["article_id"]: r for r in table.to_pylist()}
    assert sorted(got) == ["A1", "A2", "A3", "A4", "A5", "A6", "B7"]
    assert (got["A1"]["name"], got["A1"]["price"], got["A1"]["category"]) == (
        "Kettle 2",
        14.0,
        None,
    )
    assert got["A2"]["name"] == "Laptop"  # only in the first: kept


def test_ingest_writes_the_articles_in_an_object_store(s3_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from batch.ingest import ingest_articles
    from storage.lake import articles_dir
    from storage.objects import read_parquet_file

    articles = open_source(f"amazon:{shop_2018(tmp_path / 'shop')}").articles()
    assert ingest_articles(s3_settings, articles) == 6
    renamed = articles.slice(0, 1).set_column(1, "name", pa.array(["Kettle 2"]))
    assert ingest_articles(s3_settings, renamed) == 6
    files = list(articles_dir(s3_settings).glob("*.parquet"))
    assert len(files) == 1  # the older file removed from the bucket
    got = read_parquet_file(files[0])
    assert got.column("name").to_pylist()[:2] == ["Kettle 2", "Laptop"]
    assert got.slice(1).to_pylist() == articles.slice(1).to_pylist()


def test_hm_and_online_retail_articles(tmp_path: Path) -> None:
    hm = tmp_path / "hm"
    hm.mkdir()
    (hm / "transactions_train.csv").write_text(
        "t_dat,customer_id,article_id,price,sales_channel_id\n2020-09-20,c1,0108775015,0.05,2\n"
    )
    (hm / "articles.csv").write_text(
        "article_id,prod_name,product_type_name,product_group_name,index_group_name,detail_desc\n"
        "0108775015,Strap top,Vest top,Garment Upper body,Ladieswear,x\n"
        "0108775044,Strap top (1),,Garment Upper body,Ladieswear,y\n"
    )
    assert open_source(f"hm:{hm}").articles().to_pylist() == [
        {"article_id": "0108775015", "name": "Strap top",
         "category": "Ladieswear > Garment Upper body > Vest top", "brand": None, "price": None},
        {"article_id": "0108775044", "name": "Strap top (1)",
         "category": "Ladieswear > Garment Upper body", "brand": None, "price": None},
    ]  # fmt: skip
    retail = tmp_path / "retail.csv"
    retail.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536366,22633,HAND WARMER,6,12/2/2010 8:28,1.85,17850,United Kingdom\n"
        "536365,22633,HAND WARMER UNION JACK,6,12/1/2010 8:26,2.55,17850,United Kingdom\n"
        "536367,22633,,6,12/3/2010 8:26,2.55,17850,United Kingdom\n"
        "536368,85123A,,6,12/3/2010 8:26,2.55,17850,United Kingdom\n"
    )
    assert open_source(str(retail)).articles().to_pylist() == [
        {"article_id": "22633", "name": "HAND WARMER", "category": None, "brand": None,
         "price": None},  # the latest non-empty description
        {"article_id": "85123A", "name": None, "category": None, "brand": None, "price": None},
    ]  # fmt: skip


def test_the_demo_splits_an_amazon_folder_into_a_backfill_and_a_replay(tmp_path: Path) -> None:
    from pulse.demo import _date_range, _source, write_backfill

    write_amazon_layout(tmp_path / "gen", 200, 60, date(2020, 1, 1), 60, 3)
    kind, path = _source(f"amazon:{tmp_path / 'gen'}")
    first, last = _date_range(path, kind)
    split = last - timedelta(days=9)
    backfill = write_backfill(path, tmp_path / "backfill", before=split, kind=kind)
    assert _date_range(backfill, kind)[1] < split

    def ids(spec: str, start: date | None = None) -> list[str]:
        return [e["event_id"] for e in open_source(spec, start=start).events()]

    # what the demo ingests, then replays from the split: every event once, same ids
    before, after = ids(f"amazon:{backfill}"), ids(f"amazon:{path}", start=split)
    assert before and after and before + after == ids(f"amazon:{path}")
