"""Whole-snapshot publishing that plain Parquet readers can trust.

A snapshot is a directory ``<base>/v=<version>/`` written completely under a
temporary name, then renamed into place; ``<base>/CURRENT`` (one line: the
directory name) is replaced atomically with ``os.replace`` afterwards. A reader
resolves CURRENT once and reads that directory: it sees one complete version,
never a half-written one. Old versions are removed only after CURRENT has
moved, keeping a few so a reader that resolved CURRENT just before is safe.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

POINTER = "CURRENT"


def new_version() -> str:
    """A sortable, unique version name: UTC time to the millisecond plus a short suffix."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def write_pointer(base: Path, name: str) -> None:
    """Atomically point ``base/CURRENT`` at ``name``."""
    tmp = base / f".{POINTER}.{uuid.uuid4().hex}"
    tmp.write_text(name + "\n")
    os.replace(tmp, base / POINTER)


def publish(
    base: Path, write: Callable[[Path], None], keep: int = 3, version: str | None = None
) -> Path:
    """Call ``write(tmp_dir)`` to fill a new snapshot, then publish it atomically.

    ``write`` must create ``tmp_dir`` (Spark's ``df.write.parquet(str(tmp_dir))`` does).
    Returns the published directory.
    """
    base.mkdir(parents=True, exist_ok=True)
    name = f"v={version or new_version()}"
    tmp = base / f"_tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    final = base / name
    os.replace(tmp, final)
    write_pointer(base, name)
    cleanup(base, keep=keep)
    return final


def current(base: Path) -> Path | None:
    """The directory CURRENT points at, or None if nothing was published yet."""
    try:
        name = (base / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    path = base / name
    return path if path.is_dir() else None


def cleanup(base: Path, keep: int = 3) -> None:
    """Remove all but the newest ``keep`` versions (never the current one) and stale temps."""
    cur = current(base)
    versions = sorted(p for p in base.glob("v=*") if p.is_dir())
    for old in versions[:-keep] if keep > 0 else versions:
        if old != cur:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in base.glob("_tmp-*"):
        if time.time() - tmp.stat().st_mtime > 3600:
            shutil.rmtree(tmp, ignore_errors=True)
