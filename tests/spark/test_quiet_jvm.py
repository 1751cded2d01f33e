"""The driver JVM starts without its start-up noise, and real Spark errors still show.

One JVM, in a subprocess (as a ``pulse`` command starts it), so its stderr is its own
and not the shared test session's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from runtime.settings import load_settings
from runtime.spark import build_spark

spark = build_spark(load_settings(data_root=sys.argv[1]), "pulse-quiet-test", with_kafka=False)
assert spark.range(3).count() == 3
try:  # a task that fails on purpose: Spark logs it as ERROR, which must stay visible
    spark.range(1).selectExpr("assert_true(id < 0, 'pulse deliberate failure')").collect()
except Exception:
    print("failed as expected")
"""

NOISE = [
    "Using incubator modules",  # the JDK, for Spark's --add-modules=jdk.incubator.vector
    "resolves to a loopback address",  # Utils, without SPARK_LOCAL_IP
    "Set SPARK_LOCAL_IP",
    "NativeCodeLoader",  # no native Hadoop on a laptop
    "Using Spark's default log4j profile",
    "Setting default log level",
    "To adjust logging level",
]


def test_jvm_start_is_quiet_but_errors_show(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "SPARK_"))}
    env |= {"PULSE_SPARK_DRIVER_MEMORY": "1g", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "failed as expected" in proc.stdout
    noise = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
    assert noise == [], proc.stderr
    # The deliberate failure, as Spark's executor logs it, is still on stderr.
    assert re.search(r"^\S+ \S+ ERROR Executor: .*task", proc.stderr, re.M), proc.stderr
    assert "pulse deliberate failure" in proc.stderr
