"""One organising principle for the tests: the directory says what a test needs to run.

    tests/unit/         Python only: no JVM, no broker (redis-server or SeaweedFS at most)
    tests/spark/        the shared local Spark session (batch jobs, features, the view)
    tests/streaming/    Spark Structured Streaming on file or memory sources
    tests/integration/  a real Kafka broker started by the session (and Spark)
    tests/faults/       the fault campaign's fast subset: killed processes, real brokers

Each directory's name is its marker, given by tests/conftest.py at collection, so
``pytest -m unit`` and ``pytest tests/unit`` select the same tests. A module does not
mark its own tier; a tier marker that disagrees with the directory is a usage error.
``realdata`` is not a tier but a need (../shared/data), marked where a test has it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

TIERS = ("unit", "spark", "streaming", "integration", "faults")
TESTS = Path(__file__).resolve().parent


class TierError(Exception):
    """A test outside a tier directory, or marked with another tier than its directory's."""


def tier_of(test_file: Path, markers: Iterable[str] = ()) -> str:
    """The tier of a test in ``test_file``: its directory under tests/.

    ``markers``: the names the test is marked with; another tier among them is an error.
    """
    try:
        directory = test_file.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        raise TierError(f"{test_file} is not under {TESTS}") from None
    if directory not in TIERS:
        raise TierError(f"{test_file}: tests live in one of tests/{{{','.join(TIERS)}}}/")
    other = sorted(set(markers) & set(TIERS) - {directory})
    if other:
        raise TierError(f"{test_file} is in tests/{directory}/ but marked {', '.join(other)}")
    return directory
