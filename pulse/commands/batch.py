"""`pulse ingest`, `pulse retrain`, `pulse report`, `pulse bench batch`."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from types import SimpleNamespace

from pulse.commands.args import batches_read_early, interval_seconds, iso_date, positive_int
from runtime.errors import PulseError
from runtime.settings import Settings


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from producers.adapters import open_source

    source = open_source(args.source)
    # A wrong file fails before the JVM starts (and before Spark is imported); ingest
    # then reads on from the first batch.
    batches = batches_read_early(source)
    from batch.ingest import ingest_source
    from runtime.spark import build_spark

    early = SimpleNamespace(
        iter_batches=lambda: batches,
        customers_path=source.customers_path,
        articles=source.articles,
    )
    spark = build_spark(settings, "pulse-ingest", with_kafka=False)
    start = time.perf_counter()
    result = ingest_source(spark, settings, early)
    stats = source.stats
    print(
        f"ingested {source.name}: {result.staged:,} valid events staged, {result.appended:,} new "
        f"in the lake ({result.staged - result.appended:,} already there), {stats.n_rejected:,} "
        f"rows rejected, {result.customers:,} customers, {result.articles:,} articles; "
        f"{time.perf_counter() - start:.1f}s"
    )
    print(
        f"  rows read {stats.rows_read:,} = accepted {stats.accepted:,}"
        f" + rejected {stats.n_rejected:,}"
    )
    for reason, n in stats.rejected.most_common():
        print(f"  rejected {n:,}: {reason}")
    return 0


def check_lake(settings: Settings, as_of: date | None) -> None:
    """PulseError unless the lake has a day before ``as_of``: from its log, no data read.

    Checked before the Spark session starts, so an empty lake or a cutoff before its
    first day is one line at once instead of after a JVM start.
    """
    from storage.lake import event_dates

    days = event_dates(settings)
    if not days:
        raise PulseError(f"the lake at {settings.lake_dir} is empty: run `pulse ingest SOURCE`")
    if as_of is not None and as_of <= days[0]:
        raise PulseError(f"--as-of {as_of}: no events before it, the lake starts on {days[0]}")


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    check_lake(settings, args.as_of)  # before the imports too: they take seconds
    from batch.params import RecParams
    from batch.retrain import RetrainOptions, StageLog, retrain
    from batch.summary import print_summary
    from runtime.spark import build_spark

    rec = RecParams() if args.ranker else RecParams(ranker=None)
    opts = RetrainOptions(
        as_of=args.as_of, holdout_days=args.holdout_days, models=tuple(args.models), rec=rec
    )
    spark = build_spark(settings, "pulse-retrain", with_kafka=False)
    while True:
        log = StageLog()
        print_summary(retrain(spark, settings, opts, log))
        print("\n## stages")
        print("\n".join(log.table()))
        if args.every is None:
            return 0
        print(f"next retrain in {args.every:.0f}s (Ctrl-C to stop)", file=sys.stderr)
        time.sleep(args.every)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from batch.report import write_report

    path = write_report(settings)
    print(f"report written to {path}")
    return 0


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from batch.params import RecParams
    from pulse.bench.batch import run_bench

    default = RecParams()
    params = RecParams(rank=args.rank or default.rank, max_iter=args.max_iter or default.max_iter)
    run_bench(
        settings, args.sizes, params, as_json=args.json,
        stream_batches=args.stream_batches or 0, object_store=args.object_store,
    )  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ingest, retrain and report."""
    from storage.registry import MODELS

    p = sub.add_parser("ingest", help="backfill the lake from files (no Kafka), deduplicated")
    p.add_argument(
        "source", help="hm:DIR | online_retail:FILE | synthetic:DIR | amazon:DIR | a bare path"
    )
    p.set_defaults(handler=_ingest)

    p = sub.add_parser("retrain", help="train, evaluate and register the three batch models")
    p.add_argument(
        "--as-of",
        type=iso_date,
        default=None,
        help="retrain as if it were DATE: nothing at or after it is read",
    )
    p.add_argument(
        "--every",
        type=interval_seconds,
        default=None,
        help="repeat every INTERVAL (e.g. 6h) until interrupted",
    )
    p.add_argument(
        "--holdout-days",
        type=positive_int,
        default=7,
        help="recommendation hold-out: the last N days before the cutoff",
    )
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument(
        "--ranker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the learned recommendation ranker (batch.ranker; served when it wins "
        "on the hold-out, like every strategy); --no-ranker leaves it out",
    )
    p.set_defaults(handler=_retrain)

    p = sub.add_parser("report", help="write data_root/reports/report.md with PNG plots")
    p.set_defaults(handler=_report)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse bench batch`."""
    p = bench_sub.add_parser("batch", help="retrain wall time, peak memory, ALS vs implicit")
    p.add_argument(
        "--sizes",
        type=positive_int,
        nargs="+",
        default=[1_000_000],
        help="generated transactions per run",
    )
    p.add_argument("--rank", type=positive_int, default=None, help="ALS rank (the retrain's)")
    p.add_argument(
        "--max-iter", type=positive_int, default=None, help="ALS iterations (the retrain's)"
    )
    p.add_argument(
        "--stream-batches",
        type=positive_int,
        default=None,
        help="then write N micro-batches through the stream's lake writer and compact",
    )
    p.add_argument(
        "--object-store", action="store_true",
        help="also ingest and retrain into a data root in a local SeaweedFS (needs `pulse "
        "setup` with Go); print the times and their ratios to the local run",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object, not tables")
    p.set_defaults(handler=_bench)
