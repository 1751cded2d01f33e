"""`pulse view CUSTOMER_ID [--json]`, `pulse view --at-risk N`, `pulse serve` and `pulse demo`."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime
from typing import Any

from pulse.commands.args import positive_float, positive_int
from runtime.errors import PulseError
from runtime.settings import Settings

# The fields `pulse view` prints, grouped, in reading order.
SHOWN = [
    ("as of", "as_of"),
    ("segment", "segment_name"),
    ("churn probability / as of", ("churn_probability", "churn_as_of")),
    ("expected value (churn horizon)", "expected_value"),
    ("at risk (rule)", "at_risk"),
    ("first / last purchase", ("first_purchase_date", "last_purchase_date")),
    ("recency / tenure (days)", ("recency_days", "tenure_days")),
    ("purchase days / events", ("frequency", "n_events")),
    ("monetary / per purchase day", ("monetary", "spend_per_purchase_day")),
    ("events 7/30/90d", ("n_events_7d", "n_events_30d", "n_events_90d")),
    ("spend 7/30/90d", ("spend_7d", "spend_30d", "spend_90d")),
    ("mean days between", "mean_days_between"),
    ("days overdue", "days_overdue"),
    ("activity trend 30d", "activity_trend_30d"),
    ("online share", "online_share"),
    ("recommendations", "recommendations"),
    ("models (segments/churn/recs)", ("segments_model_version", "churn_model_version",
                                      "recs_model_version")),
]  # fmt: skip


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "-"
    return str(value)


def format_customer(row: dict[str, Any]) -> str:
    """A customer's view row as aligned, readable lines."""
    lines = [f"customer {row['customer_id']}"]
    for label, key in SHOWN:
        keys = key if isinstance(key, tuple) else (key,)
        lines.append(f"  {label:<30} " + " / ".join(_fmt(row.get(k)) for k in keys))
    return "\n".join(lines)


def format_at_risk(rows: list[dict[str, Any]], by_probability: bool = False) -> str:
    """The at-risk customers as a table, with what they are ranked by on top."""
    valued = any(r.get("value_at_risk") is not None for r in rows)
    order = (
        "churn probability"
        if by_probability or not valued
        else "value at risk = churn probability x expected spend in the churn horizon"
    )
    header = (
        f"{'customer_id':<66} {'at risk':>10} {'exp value':>10} {'churn_p':>8} {'recency':>8} "
        f"{'freq':>5} {'monetary':>10}  segment"
    )
    lines = [f"ranked by {order}", header]
    for r in rows:
        lines.append(
            f"{r['customer_id']:<66} {_fmt(r.get('value_at_risk')):>10} "
            f"{_fmt(r.get('expected_value')):>10} {_fmt(r['churn_probability']):>8} "
            f"{_fmt(r['recency_days']):>8} {_fmt(r['frequency']):>5} "
            f"{_fmt(r['monetary']):>10}  {_fmt(r['segment_name'])}"
        )
    return "\n".join(lines)


def _view(args: argparse.Namespace, settings: Settings) -> int:
    from serving import read

    if args.at_risk is not None:
        rows = read.at_risk(settings, args.at_risk, by_probability=args.by_probability)
        if args.json:
            print(json.dumps([read.jsonable(r) for r in rows], indent=2))
        elif not rows:
            print("no churn scores in the view yet (no CURRENT churn model)")
        else:
            print(format_at_risk(rows, args.by_probability))
        return 0
    if not args.customer_id:
        raise PulseError("give a CUSTOMER_ID or --at-risk N")
    row = read.lookup(settings, args.customer_id, with_value=True)
    print(json.dumps(read.jsonable(row), indent=2) if args.json else format_customer(row))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.api import serve

    serve(settings, args.host or settings.api_host, args.port or settings.api_port,
          workers=args.workers)  # fmt: skip
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.demo import DemoOptions, run_demo

    return run_demo(
        settings,
        DemoOptions(
            source=args.source,
            customers=args.customers,
            articles=args.articles,
            days=args.days,
            replay_days=args.replay_days,
            speedup=args.speedup,
            retrain_every=args.retrain_every,
            seed=args.seed,
        ),
    )


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.bench.view import bench_view

    bench_view(settings, args.customers, args.store, lookups=args.lookups, as_json=args.json,
               rate=args.rate, seconds=args.seconds, stream=not args.no_stream)  # fmt: skip
    return 0


def _bench_serve(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.bench.serve_http import bench_serve

    bench_serve(settings, args.customers, args.store, args.clients, seconds=args.seconds,
                requests=args.requests, as_json=args.json, workers=args.workers)  # fmt: skip
    return 0


def register_bench(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse bench view`."""
    p = bench_sub.add_parser("view", help="online-store look-ups at H&M's customer count")
    p.add_argument("--customers", type=positive_int, default=1_370_000, help="records in the store")
    p.add_argument("--store", choices=("sqlite", "redis"), default="sqlite",
                   help="backend (redis: the server at PULSE_REDIS_URL, flushed)")  # fmt: skip
    p.add_argument("--lookups", type=positive_int, default=10_000, help="timed look-ups")
    p.add_argument(
        "--rate",
        type=positive_int,
        default=2_000,
        help="events/s for the event-to-served run (the broker at PULSE_KAFKA_BOOTSTRAP)",
    )
    p.add_argument("--seconds", type=positive_int, default=60, help="length of that run")
    p.add_argument(
        "--no-stream",
        action="store_true",
        help="look-ups only: skip the event-to-served run (no broker needed)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_bench)

    from pulse.bench.serve_http import client_counts, store_list  # stdlib only: cheap

    p = bench_sub.add_parser("serve", help="`pulse serve` over HTTP at H&M's customer count")
    p.add_argument("--store", type=store_list, default=("sqlite", "redis"),
                   help="sqlite, redis or both (sqlite,redis; redis: a redis-server this "
                   "bench starts)")  # fmt: skip
    p.add_argument("--clients", type=client_counts, default=(1, 16),
                   help="comma list of concurrent client counts (default 1,16)")  # fmt: skip
    p.add_argument("--customers", type=positive_int, default=1_370_000, help="records in the store")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--seconds", type=positive_float, default=15.0,
                      help="timed seconds per run (default 15, after a 3 s warm-up)")  # fmt: skip
    span.add_argument("--requests", type=positive_int,
                      help="requests per run, all clients together (not --seconds)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1,
                   help="`pulse serve --workers`: server processes (default 1)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_bench_serve)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse view` and `pulse demo`."""
    p = sub.add_parser("view", help="one customer's live view, or the most likely churners")
    p.add_argument("customer_id", nargs="?", metavar="CUSTOMER_ID")
    p.add_argument(
        "--at-risk", type=positive_int, metavar="N",
        help="the N customers with the most value at risk (churn probability x expected value)",
    )  # fmt: skip
    p.add_argument(
        "--by-probability", action="store_true",
        help="with --at-risk: rank by churn probability alone (the older ordering)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_view)

    p = sub.add_parser("serve", help="the live view over HTTP (an API; OpenAPI at /docs)")
    p.add_argument("--host", help="address to bind (default PULSE_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=positive_int, help="port (default PULSE_API_PORT, 8000)")
    p.add_argument(
        "--workers", type=positive_int, default=1,
        help="server processes on the port (each reads the store; use with Redis)",
    )  # fmt: skip
    p.set_defaults(handler=_serve)

    p = sub.add_parser(
        "demo", help="the whole loop end to end on generated (or H&M, or Amazon) data"
    )
    p.add_argument(
        "--source",
        help="run on a real H&M folder instead (hm:PATH), or Amazon reviews (amazon:PATH: "
        "a folder or reviews file, e.g. from `pulse data generate --layout amazon`)",
    )
    p.add_argument(
        "--customers", type=positive_int, default=50_000, help="generated customers (~1.2M rows)"
    )
    p.add_argument("--articles", type=positive_int, default=5_000, help="generated articles")
    p.add_argument("--days", type=positive_int, default=730, help="generated days of history")
    p.add_argument(
        "--replay-days", type=positive_int, default=90, help="the last N days are streamed"
    )
    p.add_argument(
        "--speedup",
        type=positive_float,
        default=86_400.0,
        help="replay pace (simulated s per wall s)",
    )
    p.add_argument(
        "--retrain-every", type=positive_int, default=60, help="seconds between live retrains"
    )
    p.add_argument("--seed", type=int, default=42, help="generator seed")
    p.set_defaults(handler=_demo)
