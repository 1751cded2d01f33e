"""The unit tier needs no JVM: it passes with no java or mvn on the PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.environ.get("PULSE_UNIT_NO_JAVA") == "1", reason="already inside")
def test_unit_tier_runs_without_java_or_maven(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH holding only this Python
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
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
