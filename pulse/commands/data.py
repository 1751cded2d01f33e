"""`pulse data generate|profile|inspect`, `pulse compact`: synthetic data (H&M or Amazon
layout), calibration, the lake."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from pulse.commands.args import iso_date
from runtime.errors import PulseError
from runtime.settings import Settings


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from producers.generator import generate

    # --articles takes a count or a real articles.csv path (the two spellings).
    count, articles_csv = None, args.articles_csv
    for value in args.articles:
        if value.isdigit():
            count = int(value)
        else:
            articles_csv = value
    if articles_csv is not None and not Path(articles_csv).is_file():
        raise PulseError(f"articles file not found: {articles_csv}")
    if count is None and articles_csv is None:
        raise PulseError("--articles: give a number of articles or a real articles.csv path")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PulseError(f"--out {out}: a file is there; give a folder (it is created)")
    if args.layout == "amazon":
        return _generate_amazon(args, out, count, articles_csv)
    if args.release is not None:
        raise PulseError("--release is for --layout amazon")
    result = generate(
        out,
        customers=args.customers,
        articles=count,
        start=args.start,
        days=args.days,
        seed=args.seed,
        articles_csv=Path(articles_csv) if articles_csv else None,
    )
    rate = result.transactions / max(result.seconds, 1e-9)
    print(
        f"wrote {result.out_dir}: {result.transactions:,} transactions, "
        f"{result.customers:,} customers, {result.articles:,} articles "
        f"in {result.seconds:,.1f} s ({rate:,.0f} rows/s)"
    )
    return 0


def _generate_amazon(
    args: argparse.Namespace, out: Path, count: int | None, articles_csv: str | None
) -> int:
    from producers.amazon_generator import write_amazon_layout

    if articles_csv is not None or count is None:
        raise PulseError("--layout amazon: --articles takes a number of products, not a file")
    result = write_amazon_layout(
        out,
        customers=args.customers,
        articles=count,
        start=args.start,
        days=args.days,
        seed=args.seed,
        layout=args.release or "2018",
    )
    print(
        f"wrote {result.out_dir}: {result.reviews:,} reviews ({result.reviews_path.name}), "
        f"{result.customers:,} customers, {result.articles:,} products "
        f"({result.metadata_path.name}) in {result.seconds:,.1f} s; "
        f"read it as amazon:{result.out_dir}"
    )
    return 0


def _profile(args: argparse.Namespace, settings: Settings) -> int:
    from producers.profile import README_FACTS, compare, profile

    generated = profile(Path(args.dir))
    if args.real is not None:
        real = profile(Path(args.real))
        print(compare(generated, real.facts, real.source))
    else:
        print(compare(generated, README_FACTS, "README facts of ../shared/data/hm_sample"))
    return 0


def _inspect(args: argparse.Namespace, settings: Settings) -> int:
    from producers.adapters import open_source

    source = open_source(args.source, start=args.start, end=args.end)
    customers: set[str] = set()
    first = last = None
    for batch in source.iter_batches():
        customers.update(batch.column("customer_id").to_pylist())
        first = first or batch.column("event_time")[0].as_py()
        last = batch.column("event_time")[-1].as_py()
    print(f"{source.name} {source.path}")
    print(source.stats.summary())
    print(f"{len(customers):,} customers; event time {first} .. {last}")
    print(f"customers: {source.customers_path}; articles: {source.articles_path}")
    return 0


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    """Generate ``--customers`` over 734 days, then read it back through the adapter."""
    import resource
    import tempfile
    import time

    from producers.adapters import open_source
    from producers.generator import generate

    with tempfile.TemporaryDirectory(prefix="pulse-bench-data-") as tmp:
        result = generate(
            Path(tmp), args.customers, args.articles, date(2018, 9, 20), 734, 42, progress=False
        )
        gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        began = time.perf_counter()
        source = open_source(tmp)
        for _ in source.iter_batches():
            pass
        read_s = time.perf_counter() - began
    rows = result.transactions
    print(
        f"generate: {rows:,} rows in {result.seconds:.1f} s = {rows / result.seconds:,.0f} rows/s"
    )
    print(f"          peak RSS so far {gen_rss:,.0f} MiB")
    print(
        f"adapter:  {source.stats.rows_read:,} rows in {read_s:.1f} s = {rows / read_s:,.0f} rows/s"
    )
    print(f"          {source.stats.summary()}")
    return 0


def _compact(args: argparse.Namespace, settings: Settings) -> int:
    """Compact the lake's small files per event date, then vacuum what no reader needs."""
    import time

    from storage.lake import compact, event_dates, file_count, lake_exists, vacuum

    if not lake_exists(settings):
        raise PulseError(f"the lake at {settings.lake_dir} is empty: run `pulse ingest SOURCE`")
    before = file_count(settings)
    began = time.perf_counter()
    result = compact(settings, min_files=args.min_files)
    seconds = time.perf_counter() - began
    deleted = vacuum(settings, args.retention_hours) if args.retention_hours is not None else 0
    print(
        f"compacted {result.dates:,} event dates in {seconds:,.1f} s: "
        f"{before:,} -> {file_count(settings):,} live files over {len(event_dates(settings)):,} "
        f"dates ({result.rows:,} rows rewritten, {result.dropped:,} repeated ids dropped)"
    )
    if args.retention_hours is not None:
        print(f"vacuum: deleted {deleted:,} files unreferenced for {args.retention_hours} h")
    return 0


def register_bench(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse bench data`."""
    p = bench_sub.add_parser("data", help="generator and adapter throughput (rows/s, peak RSS)")
    p.add_argument("--customers", type=int, default=40_000, help="~24 rows per customer")
    p.add_argument("--articles", type=int, default=20_000)
    p.set_defaults(handler=_bench)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse data generate` and `pulse data profile`."""
    data = sub.add_parser("data", help="synthetic data generator and calibration profile")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = data_sub.add_parser(
        "generate",
        help="write a synthetic H&M Kaggle layout (transactions_train/customers/articles.csv), "
        "or Amazon reviews with --layout amazon",
    )
    p.add_argument(
        "--layout",
        choices=("hm", "amazon"),
        default="hm",
        help="hm: H&M Kaggle files (default); amazon: a reviews file and its meta_ file, "
        "gzipped JSON lines (producers/amazon_generator.py), read as amazon:OUT",
    )
    p.add_argument(
        "--release",
        choices=("2018", "2023"),
        default=None,
        help="with --layout amazon: the release whose fields are written (default 2018)",
    )
    p.add_argument("--customers", type=int, required=True, help="number of customers")
    p.add_argument(
        "--articles",
        action="append",
        required=True,
        metavar="M|PATH",
        help="number of articles, and/or a real articles.csv[.gz] to draw them from "
        "(all its rows when no number is given); may be given twice",
    )
    p.add_argument("--start", type=iso_date, default=date(2018, 9, 20), help="first day (UTC)")
    p.add_argument("--days", type=int, default=734, help="number of days")
    p.add_argument("--seed", type=int, default=42, help="same seed -> identical files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--articles-csv",
        dest="articles_csv",
        default=None,
        help="same as --articles PATH (e.g. ../shared/data/hm_articles/articles.csv.gz)",
    )
    p.set_defaults(handler=_generate)

    p = data_sub.add_parser(
        "profile", help="calibration facts of an H&M-layout folder, next to the real sample's"
    )
    p.add_argument("dir", help="folder with transactions_train.csv[.gz]")
    p.add_argument(
        "--real",
        default=None,
        help="compute the real side from this folder (default: the README's facts)",
    )
    p.set_defaults(handler=_profile)

    p = data_sub.add_parser(
        "inspect", help="read a source through its adapter: rows read = accepted + rejected"
    )
    p.add_argument(
        "source", help="hm:DIR, online_retail:FILE, synthetic:DIR, amazon:DIR or a bare path"
    )
    p.add_argument("--start", type=iso_date, default=None, help="first event date (inclusive)")
    p.add_argument("--end", type=iso_date, default=None, help="last event date (inclusive)")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser(
        "compact",
        help="rewrite the lake's small files into one per event date (safe while reading)",
    )
    p.add_argument(
        "--min-files",
        type=int,
        default=2,
        help="compact an event date once it has this many files (default 2)",
    )
    p.add_argument(
        "--vacuum",
        dest="retention_hours",
        type=int,
        default=None,
        metavar="HOURS",
        help="then delete files removed (or never committed) more than HOURS ago; "
        "a read older than that may fail, so keep it above the longest read",
    )
    p.set_defaults(handler=_compact)
