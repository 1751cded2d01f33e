"""`pulse produce SOURCE` (replay into Kafka) and `pulse bench producer`."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from pulse.commands.args import batches_read_early, iso_date, positive_int
from runtime.errors import PulseError
from runtime.settings import Settings


def _source_identity(spec: str, name: str, start: date | None, end: date | None) -> dict:
    """What makes two replays "the same" for --resume: the resolved source and the window."""
    from producers.adapters import KINDS

    prefix, _, rest = spec.partition(":")
    path = rest if prefix in KINDS else spec
    return {
        "source": name,
        "path": str(Path(path).resolve()),
        "start": start.isoformat() if start else None,
        "end": end.isoformat() if end else None,
    }


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from producers.adapters import open_source
    from producers.replay import Pacing, ReplayOptions, replay

    pacing = Pacing(speedup=args.speedup, rate=args.rate)  # validates before any I/O
    if args.start and args.end and args.end < args.start:
        raise PulseError(f"--end {args.end} is before --start {args.start}: nothing to replay")
    source = open_source(args.source, start=args.start, end=args.end)
    batches = batches_read_early(source)  # a wrong file fails here, before Kafka is asked
    # --end is an inclusive date: the simulated clock runs to its midnight
    until = datetime.combine(args.end + timedelta(days=1), time(), UTC) if args.end else None
    options = ReplayOptions(
        pacing=pacing,
        limit=args.limit,
        identity=_source_identity(args.source, source.name, args.start, args.end),
        resume=args.resume,
        inject_bad=args.inject_bad,
        seed=args.seed,
        until=until,
    )
    stats = replay(batches, settings, options)  # Arrow tables: each one encoded at once
    print(f"source {source.name}: {source.stats.summary()}")
    print(stats.summary())
    lost = stats.failed or stats.delivered != stats.sent
    return 1 if lost else 0


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.bench.producer import bench_producer

    bench_producer(settings, args.events, as_json=args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse produce`."""
    p = sub.add_parser(
        "produce",
        help="replay a dataset into Kafka in event-time order (paced, resumable)",
        description="Replay SOURCE (hm:PATH, online_retail:PATH, synthetic:PATH, amazon:PATH "
        "or a path) "
        "into the transactions topic, key = customer_id, idempotent, acks=all. "
        "Exit status is non-zero if any record was not delivered.",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="hm:PATH | online_retail:PATH | synthetic:PATH | amazon:PATH",
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speedup", type=float, help="simulated seconds per wall second (86400: a day per second)"
    )
    pace.add_argument("--rate", type=float, help="events per second")
    p.add_argument("--start", type=iso_date, help="first event date (inclusive)")
    p.add_argument("--end", type=iso_date, help="last event date (inclusive)")
    p.add_argument("--limit", type=positive_int, help="replay only the first N source rows")
    p.add_argument(
        "--resume", action="store_true", help="continue after the last confirmed row of this source"
    )
    p.add_argument(
        "--inject-bad",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="mix in malformed records (this fraction of rows gets one) to test quarantine",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --inject-bad (deterministic)")
    p.set_defaults(handler=_produce)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse bench producer`."""
    p = bench_sub.add_parser(
        "producer", help="replay producer vs Kafka's ProducerPerformance (events/s, MB/s)"
    )
    p.add_argument("--events", type=positive_int, default=1_000_000, help="records per producer")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object of the figures on stdout (the table goes to stderr)",
    )
    p.set_defaults(handler=_bench)
