"""`pulse`: one program, one subcommand per job.

Each module in ``pulse.commands`` registers its own subcommands (and benchmarks
under ``pulse bench``), so the jobs stay separate and this file stays small.
Heavy imports (Spark, Kafka) happen inside the handlers, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from runtime.errors import PulseError, error_line
from runtime.settings import describe_settings, load_settings

COMMAND_MODULES = [
    "pulse.commands.infra",  # setup, broker, topics
    "pulse.commands.data",  # data generate, data profile
    "pulse.commands.produce",  # produce, bench producer
    "pulse.commands.stream",  # stream, bench stream
    "pulse.commands.batch",  # ingest, retrain, report, bench batch
    "pulse.commands.serve",  # view, demo
    "pulse.commands.chaos",  # chaos (the fault campaign)
    "pulse.commands.sql",  # sql (named tables over the lake and the outputs)
    "pulse.commands.backtest",  # backtest (walk-forward evaluation of the models)
]

# CLI flags that override a setting (flag -> settings field).
GLOBAL_FLAGS = {
    "--bootstrap": "kafka_bootstrap",
    "--data-root": "data_root",
    "--spark-master": "spark_master",
    "--topic": "topic_transactions",
    "--broker-port": "broker_port",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other Pulse error.

    argparse prints the whole usage block before the error; in a terminal or a log the
    problem is then the last of several lines. The subcommand parsers inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` and where the usage is, then exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser: global setting flags, then each module's subcommands."""
    parser = OneLineParser(
        prog="pulse",
        description="Pulse: lambda-architecture customer intelligence (Kafka + Spark).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (environment variables; flags above override):\n" + describe_settings(),
    )
    for flag, field in GLOBAL_FLAGS.items():
        parser.add_argument(flag, dest=field, default=None, help=f"overrides PULSE_{field.upper()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmarks that print figures and ratios")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a job not built yet
                continue
            raise
        module.register(sub)
        if hasattr(module, "register_bench"):
            module.register_bench(bench_sub)
    return parser


# The commands whose stores all work in an object store (docs/storage.md); the others
# stop with one line when PULSE_DATA_ROOT is s3://.
ON_OBJECT_STORE = {"setup", "broker", "topics", "data", "compact", "ingest", "stream", "retrain",
                   "produce", "view", "serve", "report", "sql"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, build settings once, run the handler; errors are one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO chatter is not ours
    if args.verbose:
        logging.getLogger("pulse.librdkafka").setLevel(logging.DEBUG)
        # runtime.spark.VERBOSE_ENV (not imported: that would load pyspark for every
        # command): Spark's default JVM logging; inherited by the demo's child commands.
        os.environ["PULSE_JVM_VERBOSE"] = "1"
    try:
        settings = load_settings(**{f: getattr(args, f) for f in GLOBAL_FLAGS.values()})
        if settings.on_object_store:  # a wrong endpoint, key or bucket: one line, now
            from storage.objects import check_reachable

            if args.command not in ON_OBJECT_STORE:
                raise PulseError(
                    f"`pulse {args.command}` does not run on an object-store data root yet "
                    f"(PULSE_DATA_ROOT={settings.data_root}): see docs/storage.md"
                )
            check_reachable(settings)
        return int(args.handler(args, settings) or 0)
    except PulseError as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pulse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
