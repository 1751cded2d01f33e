"""Run a command with no JVM tool reachable: how `make test` runs the unit tier.

    python tests/no_jvm.py pytest tests/unit ...

The PATH keeps every tool but java, javac, jar, keytool, mvn, spark-* and kafka-*;
JAVA_HOME and SPARK_HOME are unset, and the jar cache points at a folder beside the real
one that must still be absent afterwards (nothing tried to resolve jars). The unit tier
passing here is the proof that it needs no JVM (``tests/unit/test_tiers.py`` runs the
same when pytest is run some other way).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

JVM_TOOL = re.compile(r"java\w*|j\w+|keytool|mvn\w*|spark-\S+|pyspark|kafka\S*")
INSIDE = "PULSE_UNIT_NO_JAVA"  # set inside: test_tiers does not run the tier again


def no_jvm_env(scratch: Path, no_jars: Path) -> dict[str, str]:
    """The environment: a PATH of links in ``scratch/bin`` to every tool but the JVM's,
    no JAVA_HOME/SPARK_HOME, and PULSE_JVM_CACHE at ``no_jars`` (not created)."""
    bin_dir = scratch / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").symlink_to(sys.executable)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else []:
            if not (bin_dir / tool.name).exists() and not JVM_TOOL.fullmatch(tool.name):
                (bin_dir / tool.name).symlink_to(tool)
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "SPARK_HOME")}
    return env | {
        "PATH": str(bin_dir),
        INSIDE: "1",
        "PULSE_JVM_CACHE": str(no_jars),  # any Maven call would fail here
    }


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``argv`` in the no-JVM environment; fails (code 3) if it created the jar cache.

    The empty jar cache sits beside the real one, so what is kept next to it (the
    SeaweedFS build, ``pulse.local.s3``) is found as usual."""
    from runtime.settings import load_settings

    real = load_settings().jvm_cache
    with tempfile.TemporaryDirectory(prefix="pulse-no-jvm-") as scratch:
        no_jars = real.parent / f"no-jars-{Path(scratch).name}"
        done = subprocess.run(argv, env=no_jvm_env(Path(scratch), no_jars), text=True, **kwargs)
        if no_jars.exists():
            shutil.rmtree(no_jars, ignore_errors=True)
            print("no_jvm: the command tried to resolve JVM jars", file=sys.stderr)
            done.returncode = done.returncode or 3
        return done


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]).returncode)
