"""The unit tier needs no JVM: it passes with no java or mvn on the PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from no_jvm import INSIDE, run
from tiers import TESTS, TierError, tier_of

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.environ.get(INSIDE) == "1", reason="already inside (make test runs it)")
def test_unit_tier_runs_without_java_or_maven() -> None:
    done = run(
        [sys.executable, "-m", "pytest", "-m", "unit", "-q", "-p", "no:cacheprovider",
         "tests/unit"],
        cwd=REPO, capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_the_tier_is_the_directory_and_other_needs_may_be_marked() -> None:
    assert (
        tier_of(TESTS / "integration" / "test_x.py", ["realdata", "parametrize"]) == "integration"
    )
    assert all(tier_of(f) for f in TESTS.rglob("test_*.py"))  # every module is in a tier


def test_a_test_marked_with_another_tier_than_its_directory_is_refused() -> None:
    with pytest.raises(TierError, match=r"is in tests/spark/ but marked unit"):
        tier_of(TESTS / "spark" / "test_x.py", ["unit"])


def test_a_test_outside_the_tier_directories_is_refused() -> None:
    with pytest.raises(TierError, match=r"tests live in one of tests/\{unit,spark"):
        tier_of(TESTS / "batch" / "test_x.py")
