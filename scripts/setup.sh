#!/usr/bin/env bash
# One-shot, idempotent setup on a bare machine: checks prerequisites, creates
# .venv with the locked Python packages, installs native BLAS where possible,
# and resolves the JVM jars (Kafka broker, Spark's Kafka connector) with Maven.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: error: $*" >&2; exit 2; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  # 3.11 first: requirements.lock is resolved for it.
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || die "Python 3.11+ not found: install it (Debian: apt-get install python3)"
command -v java >/dev/null || die "java not found: install a JDK 17+ (Debian: apt-get install openjdk-17-jdk-headless)"
java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || die "Java 17+ required: $(java -version 2>&1 | head -1)"
command -v mvn >/dev/null || die "mvn not found: install Maven 3.8+ (Debian: apt-get install maven)"

# Debian packages, best effort, never fatal: apt_install PACKAGE WHAT-IT-IS-FOR
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing $1 ($2)"
    (apt-get install -y -qq "$1" >/dev/null 2>&1 || \
      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$1" >/dev/null 2>&1)) \
      || echo "setup: warning: could not install $1 ($2)"
  else
    echo "setup: note: 'apt-get install $1' for $2"
  fi
}
# Native BLAS makes Spark ALS ~20 % faster (else Java BLAS).
ldconfig -p 2>/dev/null | grep -q 'libblas.so.3' || apt_install libopenblas0-pthread "native BLAS for Spark ALS"
# redis-server: the Redis online store; its tests start one on a free port, and skip
# without it (the default store, SQLite, needs nothing).
command -v redis-server >/dev/null || apt_install redis-server "the Redis online store tests"
# chromium: the dashboard's browser test drives Debian's build through Playwright (whose
# own browser download is not needed); it skips without it.
command -v chromium >/dev/null || apt_install chromium "the dashboard's browser test"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.pulse-installed
if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || [ scripts/setup.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check uv==0.9.9
  # --compile-bytecode: uv does not write .pyc files by default, and a process that
  # cannot write them (PYTHONDONTWRITEBYTECODE) recompiles pandas and pyspark at every
  # start: ~1 s of every `pulse` command.
  .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -r requirements.lock
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  touch "$stamp"
fi
.venv/bin/pulse setup
echo "setup: ok (activate with: source .venv/bin/activate)"
