"""Whole-snapshot publishing that plain Parquet readers can trust.

A snapshot is a directory ``<base>/v=<version>/`` written completely, then
``<base>/CURRENT`` (one line: the directory name) is replaced atomically
(``storage.objects.write_atomically``: a rename on a disk, one PUT in an object
store). A reader resolves CURRENT once and reads that directory: it sees one
complete version, never a half-written one. On a disk the directory is also written
under a temporary name and renamed into place; in an object store, where a
directory cannot be renamed, it is written at its final, unique name, which no
reader resolves before CURRENT names it. Old versions are removed only after
CURRENT has moved, keeping a few so a reader that resolved CURRENT just before is
safe.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from upath import UPath

from storage.objects import is_remote, remove_tree, write_atomically

POINTER = "CURRENT"


def new_version() -> str:
    """A sortable, unique version name: UTC time to the millisecond plus a short suffix."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def write_pointer(base: Path | UPath, name: str) -> None:
    """Atomically point ``base/CURRENT`` at ``name``."""
    write_atomically(base / POINTER, (name + "\n").encode())


def publish(
    base: UPath, write: Callable[[UPath], None], keep: int = 3, version: str | None = None
) -> UPath:
    """Call ``write(tmp_dir)`` to fill a new snapshot, then publish it atomically.

    ``write`` must create ``tmp_dir`` (Spark's ``df.write.parquet(str(tmp_dir))`` does).
    Returns the published directory.
    """
    base.mkdir(parents=True, exist_ok=True)
    name = f"v={version or new_version()}"
    final = base / name
    if is_remote(base):
        write(final)
    else:
        tmp = base / f"_tmp-{name}"
        shutil.rmtree(Path(str(tmp)), ignore_errors=True)
        write(tmp)
        tmp.rename(final)
    write_pointer(base, name)
    cleanup(base, keep=keep)
    return final


def current(base: UPath) -> UPath | None:
    """The directory CURRENT points at, or None if nothing was published yet."""
    try:
        name = (base / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    path = base / name
    return path if path.is_dir() else None


def cleanup(base: UPath, keep: int = 3) -> None:
    """Remove all but the newest ``keep`` versions (never the current one) and stale temps."""
    cur = current(base)
    versions = sorted(p for p in base.glob("v=*") if p.is_dir())
    for old in versions[:-keep] if keep > 0 else versions:
        if old != cur:
            remove_tree(old)
    for tmp in base.glob("_tmp-*"):
        if time.time() - tmp.stat().st_mtime > 3600:
            remove_tree(tmp)
