"""The unit tier needs no JVM: it passes with no java or mvn on the PATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiers import TESTS, TierError, tier_of

REPO = Path(__file__).resolve().parents[2]


JVM_TOOL = re.compile(r"java\w*|j\w+|keytool|mvn\w*|spark-\S+|pyspark|kafka\S*")


@pytest.mark.skipif(os.environ.get("PULSE_UNIT_NO_JAVA") == "1", reason="already inside")
def test_unit_tier_runs_without_java_or_maven(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # the PATH's tools (sh, redis-server...) but no JVM tool
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else []:
            if not (bin_dir / tool.name).exists() and not JVM_TOOL.fullmatch(tool.name):
                (bin_dir / tool.name).symlink_to(tool)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAVA_HOME", "SPARK_HOME", "PULSE_JVM_CACHE")
    }
    env |= {
        "PATH": str(bin_dir),
        "PULSE_UNIT_NO_JAVA": "1",
        "PULSE_JVM_CACHE": str(tmp_path / "no-jars"),  # any Maven call would fail here
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "unit",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert not (tmp_path / "no-jars").exists()  # nothing tried to resolve jars
    assert not any(JVM_TOOL.fullmatch(t.name) for t in bin_dir.iterdir())


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
