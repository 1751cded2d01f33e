"""JVM dependencies resolved with Maven from Maven Central into a cache outside git.

Two sets: the Kafka broker (with its tools and a log4j2 backend) and Spark's own
Kafka connector at exactly the installed pyspark version. Each set is resolved
once; a ``.complete`` marker makes later runs offline no-ops.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyspark

from runtime.errors import PulseError, error_line
from runtime.settings import Settings

KAFKA_VERSION = "4.3.1"
MARKER = ".complete"


def require_tool(name: str, what: str) -> str:
    """Return the path of ``name`` on PATH, or fail with one line naming what to install."""
    path = shutil.which(name)
    if path is None:
        raise PulseError(f"`{name}` not found on PATH: install {what} and run `pulse setup` again")
    return path


def kafka_jars_dir(settings: Settings) -> Path:
    """Directory holding the broker's classpath."""
    return settings.jvm_cache / f"kafka-{KAFKA_VERSION}"


def spark_kafka_jars_dir(settings: Settings) -> Path:
    """Directory holding Spark's Kafka connector jars for the installed pyspark."""
    return settings.jvm_cache / f"spark-sql-kafka-{pyspark.__version__}"


def spark_s3a_jars_dir(settings: Settings) -> Path:
    """Directory holding Spark's S3 file system (hadoop-aws and its AWS SDK modules)."""
    return settings.jvm_cache / f"spark-s3a-{pyspark.__version__}"


def _pom(name: str) -> Path:
    return Path(__file__).parent / "poms" / name


def _resolve(pom: Path, out: Path, extra: list[str]) -> None:
    """Copy a pom's runtime dependency closure into ``out`` (atomically, via a temp dir)."""
    mvn = require_tool("mvn", "Maven 3.8+ (Debian: apt-get install maven)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stdout.splitlines() if "ERROR" in ln][:1]
        detail = errors[0] if errors else proc.stderr.strip()[-300:]
        raise PulseError(f"Maven could not resolve {pom.name}: {detail}")
    (tmp / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _artifact(jar_name: str) -> str:
    """``kafka-clients-3.9.2.jar`` -> ``kafka-clients``."""
    return re.sub(r"-\d[\w.\-]*\.jar$", "", jar_name)


def _drop_jars_pyspark_ships(jars_dir: Path) -> list[str]:
    """Remove jars whose artifact pyspark already ships, so versions never clash."""
    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    dropped = []
    for jar in jars_dir.glob("*.jar"):
        if _artifact(jar.name) in shipped:
            jar.unlink()
            dropped.append(jar.name)
    return dropped


def _ensure(what: str, out: Path, pom: str, extra: list[str], shipped_too: bool, log) -> None:  # type: ignore[no-untyped-def]
    """Resolve ``pom`` into ``out`` unless it is cached; log what happened."""
    if (out / MARKER).exists():
        log(f"{what}: cached in {out}")
        return
    log(f"{what}: resolving from Maven Central ...")
    t0 = time.monotonic()
    _resolve(_pom(pom), out, extra)
    dropped = _drop_jars_pyspark_ships(out) if not shipped_too else []
    n = len(list(out.glob("*.jar")))
    skipped = f" ({len(dropped)} already shipped by pyspark skipped)" if not shipped_too else ""
    log(f"{what}: {n} jars in {time.monotonic() - t0:.1f}s{skipped}")


def setup(settings: Settings, log=print) -> None:  # type: ignore[no-untyped-def]
    """Resolve the three jar sets if missing. Idempotent and offline once complete."""
    require_tool("java", "a JDK 17+ (Debian: apt-get install openjdk-17-jdk-headless)")
    settings.jvm_cache.mkdir(parents=True, exist_ok=True)
    spark = pyspark.__version__
    _ensure(f"kafka broker {KAFKA_VERSION}", kafka_jars_dir(settings), "kafka-broker.xml",
            [f"-Dkafka.version={KAFKA_VERSION}"], True, log)  # fmt: skip
    _ensure(f"spark-sql-kafka {spark}", spark_kafka_jars_dir(settings), "spark-kafka.xml",
            [f"-Dspark.version={spark}"], False, log)  # fmt: skip
    _ensure(f"spark s3a {spark}", spark_s3a_jars_dir(settings), "spark-s3a.xml", [], False, log)


def kafka_classpath(settings: Settings) -> str:
    """The broker classpath, or a clear error if `pulse setup` has not run."""
    d = kafka_jars_dir(settings)
    if not (d / MARKER).exists():
        raise PulseError(f"Kafka broker jars missing in {d}: run `pulse setup` first")
    return f"{d}/*"


def spark_kafka_jars(settings: Settings) -> list[Path]:
    """Spark's Kafka connector jars, or a clear error if `pulse setup` has not run."""
    d = spark_kafka_jars_dir(settings)
    if not (d / MARKER).exists():
        raise PulseError(f"Spark Kafka connector jars missing in {d}: run `pulse setup` first")
    return sorted(d.glob("*.jar"))


def spark_s3a_jars(settings: Settings) -> list[Path]:
    """Spark's S3 file system jars, or a clear error if `pulse setup` has not run."""
    d = spark_s3a_jars_dir(settings)
    if not (d / MARKER).exists():
        raise PulseError(f"Spark's S3 jars missing in {d}: run `pulse setup` first")
    return sorted(d.glob("*.jar"))


if __name__ == "__main__":  # pragma: no cover - used by scripts/setup.sh
    from runtime.settings import load_settings

    try:
        setup(load_settings())
    except PulseError as exc:
        print(error_line(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
