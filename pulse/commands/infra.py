"""`pulse setup`, `pulse broker start|stop|status`, `pulse topics create`."""

from __future__ import annotations

import argparse

from runtime.settings import Settings


def _setup(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.local import s3
    from runtime.jvm import setup

    setup(settings)
    s3.build(settings)  # the local S3 server for the object-store tests (needs Go)
    return 0


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.local import broker

    if args.action == "start":
        broker.start(settings)
    elif args.action == "stop":
        broker.stop(settings)
    else:
        pid = broker.status(settings)
        if pid is None:
            print("broker not running")
            return 1
        print(f"broker running (pid {pid}) on 127.0.0.1:{settings.broker_port}")
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.kafka_admin import create_topics

    create_topics(settings)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the infrastructure subcommands."""
    p = sub.add_parser(
        "setup", help="resolve JVM dependencies (Kafka broker, Spark connector); build SeaweedFS"
    )
    p.set_defaults(handler=_setup)

    p = sub.add_parser("broker", help="local single-node KRaft broker from the Maven jars")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(handler=_broker)

    p = sub.add_parser("topics", help="create the transactions topic (idempotent)")
    p.add_argument("action", choices=["create"])
    p.set_defaults(handler=_topics)
