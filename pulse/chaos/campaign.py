"""Run the selected cases and print one table (or one JSON object)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pulse.chaos.cases import CASES, CaseResult, Context
from runtime.errors import PulseError
from runtime.settings import Settings
from storage.objects import local_path

COLUMNS = (
    ("case", "case"),
    ("injected", "injected"),
    ("produced", "produced"),
    ("accepted", "accepted"),
    ("quarantined", "quarantined"),
    ("in lake", "in_lake"),
    ("served = batch", "served_equal_batch"),
    ("lost", "lost"),
    ("doubled", "doubled"),
    ("time", "seconds"),
)


def _cell(key: str, value: object) -> str:
    if key == "served_equal_batch":
        return "-" if value is None else ("yes" if value else "NO")
    if key == "seconds":
        return f"{value:.0f} s"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: Sequence[CaseResult]) -> str:
    """The campaign's table (Markdown), then each case's notes and errors."""
    rows = [[_cell(k, r.as_json()[k]) for _, k in COLUMNS] for r in results]
    head = [h for h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    for r in results:
        for note in r.notes:
            lines.append(f"  case {r.case.split()[0]}: {note}")
        if r.error:
            lines.append(f"  case {r.case.split()[0]}: ERROR {r.error}")
    return "\n".join(lines)


def run_campaign(
    settings: Settings,
    cases: Sequence[str],
    *,
    events: int,
    seed: int,
    work: Path | None = None,
    keep: bool = False,
    as_json: bool = False,
) -> int:
    """Run ``cases`` in order; print the table (stdout) or JSON; 1 if any case failed."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise PulseError(f"unknown case {unknown[0]!r}: the campaign has cases {', '.join(CASES)}")
    default = local_path(settings.data_root, "`pulse chaos`") / "chaos"
    root = (work or default / time.strftime("%Y%m%dT%H%M%S")).resolve()
    root.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too: unwind, so each case stops what it started

    signal.signal(signal.SIGTERM, interrupted)
    # The producer logs every refused connection while a case holds a broker down; its
    # delivery reports (counted in the table) are what the campaign reads.
    logging.getLogger("pulse.kafka").setLevel(logging.CRITICAL)
    ctx = Context(base=settings, root=root, events=events, seed=seed, log=log)
    results: list[CaseResult] = []
    started = time.monotonic()
    try:
        for case in cases:
            title, run = CASES[case]
            log(f"case {case}: {title}")
            t0 = time.monotonic()
            try:
                got = run(ctx)
                rows = got if isinstance(got, list) else [got]
            except Exception as exc:  # noqa: BLE001 - a case that cannot finish is a failed row
                text = str(exc).strip() or type(exc).__name__
                if not isinstance(exc, PulseError):
                    text = f"{type(exc).__name__}: {text}"
                rows = [CaseResult(f"{case} {title}", "-", error=text.splitlines()[0][:300])]
                log(text)
            seconds = time.monotonic() - t0
            for result in rows:
                result.seconds = result.seconds or seconds / len(rows)
                results.append(result)
                log(f"case {result.case}: {'ok' if result.ok else 'FAILED'}")
    finally:
        if ctx._spark is not None:
            ctx._spark.stop()
    ok = all(r.ok for r in results)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "events": events,
                    "seed": seed,
                    "seconds": round(time.monotonic() - started, 1),
                    "cases": [r.as_json() for r in results],
                }
            )
        )
    else:
        print(table(results))
        print(f"{'ok' if ok else 'FAILED'}: {len(results)} case(s), seed {seed}, "
              f"{time.monotonic() - started:.0f} s")  # fmt: skip
    if ok and not keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        log(f"work directory kept: {root}")
    return 0 if ok else 1
