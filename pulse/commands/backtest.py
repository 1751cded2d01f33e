"""`pulse backtest`: retrain and judge the models at every cutoff of a schedule."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date, timedelta

from pulse.commands.args import iso_date, positive_int
from runtime.errors import PulseError
from runtime.settings import Settings

EVERY = re.compile(r"month|(\d+)d")
MODELS = ("recommendations", "churn")  # batch.backtest.MODELS (not imported: it loads Spark)


def every(text: str) -> str:
    """``month`` or ``<N>d``; anything else is a usage error."""
    if not EVERY.fullmatch(text) or text == "0d":
        raise argparse.ArgumentTypeError(f"not a step (month, or days like 7d): {text!r}")
    return text


def schedule(args: argparse.Namespace, last_event: date, span: int) -> list[date]:
    """The cutoffs: ``--from``..``--to`` by ``--every``; without them, the last ``--cutoffs``
    steps whose window (``span`` days) ends by the day after the lake's last event."""
    from batch.backtest import every_n_days, monthly_cutoffs

    latest = last_event + timedelta(days=1 - span)
    step = args.every
    if args.start is None or args.end is None:
        if args.start is not None or args.end is not None:
            raise PulseError("give both --from and --to, or neither (the last --cutoffs steps)")
        if step == "month":
            end = latest.replace(day=1)
            start = end
            for _ in range(args.cutoffs - 1):
                start = (start - timedelta(days=1)).replace(day=1)
        else:
            days = int(step[:-1])
            end, start = latest, latest - timedelta(days=days * (args.cutoffs - 1))
    else:
        start, end = args.start, args.end
    if step == "month":
        return monthly_cutoffs(start, end)
    return every_n_days(start, end, int(step[:-1]))


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.commands.batch import check_lake
    from storage.lake import last_event_date

    check_lake(settings, None)
    from batch.backtest import BacktestOptions, backtest, check_schedule, span_days, tables

    span = span_days(settings, args.window_days, args.models)
    cutoffs = schedule(args, last_event_date(settings), span)
    check_lake(settings, cutoffs[0])
    from batch.params import ChurnParams, RankerParams, RecParams
    from batch.retrain import RetrainOptions
    from runtime.spark import build_spark

    ranker = RankerParams(train_cutoffs=args.ranker_windows)
    retrain = RetrainOptions(
        holdout_days=args.holdout_days or args.window_days,
        rec=RecParams(ranker=ranker if args.ranker else None),
        churn=ChurnParams(train_cutoffs=args.churn_cutoffs),
        progress=False,
    )
    opts = BacktestOptions(
        cutoffs=tuple(cutoffs),
        window_days=args.window_days,
        models=tuple(args.models),
        bootstrap=args.bootstrap,
        retrain=retrain,
        progress=not args.json,
    )
    check_schedule(settings, opts)  # a window past the lake: one line, before Spark starts
    print(
        f"backtest at {len(cutoffs)} cutoffs ({cutoffs[0]} .. {cutoffs[-1]}), "
        f"{args.window_days}-day windows",
        file=sys.stderr,
    )
    spark = build_spark(settings, "pulse-backtest", with_kafka=False)
    result = backtest(spark, settings, opts)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print("\n".join(tables(result)))
        print(f"\n{result['seconds']:.0f}s in all")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse backtest`."""
    from batch.params import ChurnParams, RankerParams

    p = sub.add_parser(
        "backtest",
        help="walk-forward: retrain at every cutoff of a schedule, judge what it would "
        "have served on the days after it",
    )
    p.add_argument("--from", dest="start", type=iso_date, default=None, help="first cutoff")
    p.add_argument("--to", dest="end", type=iso_date, default=None, help="last cutoff")
    p.add_argument(
        "--every", type=every, default="month", help="month (the 1st of each) or Nd (N days)"
    )
    p.add_argument(
        "--cutoffs",
        type=positive_int,
        default=6,
        help="without --from/--to: the last N cutoffs whose window the lake covers",
    )
    p.add_argument(
        "--window-days",
        type=positive_int,
        default=30,
        help="the recommendations are judged on the N days after each cutoff",
    )
    p.add_argument(
        "--holdout-days",
        type=positive_int,
        default=None,
        help="the retrain's own hold-out before each cutoff (default: the window's length)",
    )
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument(
        "--bootstrap", type=positive_int, default=1000, help="resamples of the customers"
    )
    p.add_argument(
        "--ranker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the learned ranker (as `pulse retrain` does)",
    )
    p.add_argument(
        "--ranker-windows",
        type=positive_int,
        default=RankerParams().train_cutoffs,
        help="the ranker learns from this many windows before the hold-out "
        "(RankerParams.train_cutoffs)",
    )
    p.add_argument(
        "--churn-cutoffs",
        type=positive_int,
        default=ChurnParams().train_cutoffs,
        help="the churn stack learns from this many labelled cutoffs (ChurnParams.train_cutoffs)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, not tables")
    p.set_defaults(handler=_backtest)
