"""`pulse chaos`: the fault campaign (faults, bad input and scale-out on real parts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pulse.commands.args import positive_int
from runtime.settings import Settings

DEFAULT_CASES = "1,5,4,2,3,7,6,8,9"


def case_list(text: str) -> list[str]:
    """'1,5,4' -> ['1', '5', '4']; anything else is a usage error naming the value."""
    cases = [c.strip() for c in text.split(",") if c.strip()]
    if not cases or not all(c.isdigit() for c in cases):
        raise argparse.ArgumentTypeError(f"not a comma-separated list of case numbers: {text!r}")
    return cases


def _chaos(args: argparse.Namespace, settings: Settings) -> int:
    from pulse.chaos.campaign import run_campaign
    from pulse.chaos.cases import CASES

    cases = args.cases or [c for c in DEFAULT_CASES.split(",") if c in CASES]
    return run_campaign(
        settings,
        cases,
        events=args.events,
        seed=args.seed,
        work=args.work,
        keep=args.keep,
        as_json=args.json,
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pulse chaos`."""
    p = sub.add_parser(
        "chaos",
        help="the fault campaign: kills, broker faults, bad records, replays (one table)",
        description="Run fault cases against real parts (local KRaft brokers from the jars, "
        "`pulse stream` processes, the replay producer) and print one table: what each "
        "injected, produced, accepted, quarantined, wrote to the lake, and whether the "
        "features equal the batch recompute. Exit 1 if any event was lost or doubled. "
        "Cases: 1 stream SIGKILLs, 5 bad records, 4 replay twice, 2 broker SIGKILL, "
        "3 three-broker cluster, 7 SASL/SCRAM, 6 stream and retrain on a Spark standalone "
        "cluster against local mode, 8 the whole loop with the data root in an object store "
        "on a Kafka and a Spark cluster against local mode, 9 the object store down 60 s.",
    )
    p.add_argument(
        "--cases", type=case_list, help=f"comma-separated cases to run (default {DEFAULT_CASES})"
    )
    p.add_argument(
        "--events",
        type=positive_int,
        default=2_000_000,
        help="events of case 1's replay; the other cases replay a tenth (default 2,000,000)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the data and the kill points")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--work", type=Path, help="work directory (default DATA_ROOT/chaos/<time>)")
    p.add_argument(
        "--keep", action="store_true", help="keep the work directory (kept anyway on failure)"
    )
    p.set_defaults(handler=_chaos)
