"""`pulse stream [--until-idle] [--seed-from-lake]` (the speed layer) and `pulse bench stream`."""

from __future__ import annotations

import argparse

from pulse.commands.args import positive_int
from runtime.errors import PulseError
from runtime.settings import Settings


def check_topic(settings: Settings) -> None:
    """Raise PulseError unless the broker answers and the transactions topic exists."""
    from runtime.kafka_admin import admin_client

    topics = admin_client(settings).list_topics(timeout=10).topics
    if settings.topic_transactions not in topics:
        raise PulseError(
            f"topic {settings.topic_transactions!r} does not exist on {settings.kafka_bootstrap} "
            "(run `pulse topics create`)"
        )


def _stream(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.spark import build_spark
    from serving.console import ConsoleSink, Fanout
    from serving.live import LiveView
    from serving.online import open_store
    from streaming.job import run
    from streaming.output import Sink

    check_topic(settings)
    open_store(settings).close()  # an unreachable Redis is one line here, before Spark starts
    spark = build_spark(settings, app_name="pulse-stream")
    try:
        # The live view is wired here, not in streaming/, so the speed layer does not
        # depend on serving: it keeps the online store and the view snapshot current.
        live = LiveView(settings)
        sink: Sink = Fanout(live, ConsoleSink(settings)) if args.console else live
        try:
            run(spark, settings, until_idle=args.until_idle, sink=sink, seed=args.seed_from_lake)
        finally:
            live.close()
    finally:
        spark.stop()
    return 0


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.bench.stream import bench_stream

    bench_stream(
        settings,
        events=args.events,
        customers=args.customers,
        rate=args.rate,
        latency_seconds=args.seconds,
        as_json=args.json,
        object_store=args.object_store,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse stream`."""
    p = sub.add_parser(
        "stream", help="Kafka -> quarantine, lake and live features (Spark Structured Streaming)"
    )
    p.add_argument(
        "--until-idle", action="store_true", help="process what is in the topic, then stop"
    )
    p.add_argument(
        "--seed-from-lake",
        action="store_true",
        help="first start only: build the live state from the lake (after `pulse ingest`) "
        "instead of replaying the history through Kafka",
    )
    p.add_argument(
        "--console", action="store_true",
        help="print each micro-batch's updated customers with their live features and scores "
        "(at most PULSE_CONSOLE_ROWS)",
    )  # fmt: skip
    p.set_defaults(handler=_stream)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse bench stream`."""
    p = bench_sub.add_parser(
        "stream", help="events/s vs a Kafka->Parquet pass-through; latency p50/p95"
    )
    p.add_argument(
        "--events", type=positive_int, default=20_000_000, help="events of the load (H&M density)"
    )
    p.add_argument(
        "--customers",
        type=positive_int,
        default=1_370_000,
        help="customers of the load (H&M: 1.37M)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object of the figures")
    p.add_argument("--rate", type=positive_int, default=2_000, help="events/s for the latency run")
    p.add_argument("--seconds", type=positive_int, default=60, help="length of the latency run")
    p.add_argument(
        "--object-store", action="store_true",
        help="also run the full job into a data root in a local SeaweedFS (needs `pulse setup` "
        "with Go) and print its events/s and ratio to the local run",
    )  # fmt: skip
    p.set_defaults(handler=_bench)
