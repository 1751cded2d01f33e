"""The columnar store's persistence: one changelog per batch, and full snapshots.

``CustomerStateStore`` (``storage.columnar_store``) keeps its state in memory and makes
it durable through ``Changelog``, and only through its methods:

- ``write_changelog(batch_id, tables, meta)``: one batch's effect;
- ``write_snapshot(batch_id, tables, meta)``: the whole state after ``batch_id``;
- ``newest_snapshot()``, ``changelog_ids()`` and ``read_changelog(batch_id)``: what
  opening the store loads (the newest snapshot, then the changelogs after it);
- ``drop_covered(batch_id)``: the snapshots before ``batch_id``'s and the changelogs
  up to it, which its snapshot replaces; ``drop_changelogs()``: every changelog (the
  whole state was replaced);
- ``size_bytes()``.

Each entry is a set of named Arrow tables and a JSON-able ``meta`` dict; what they
hold is the store's business. On disk, under the store's directory::

    changelog/<batch_id, 12 digits>/<table>.arrow + meta.json
    snapshot/<batch_id + 1, 12 digits>/<table>.arrow + meta.json   (+1: the seed's batch -1)

Tables are uncompressed Arrow IPC (Feather) files. An entry is written into a hidden
``.<name>.tmp`` directory and renamed into place, so it appears whole or not at all,
and only entries holding ``meta.json`` are listed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather

Tables = dict[str, pa.Table]  # table name -> table
Meta = dict[str, Any]  # JSON-able


class Changelog:
    """The changelogs and snapshots of one store, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def _changelog_dir(self) -> Path:
        return self.dir / "changelog"

    @property
    def _snapshot_dir(self) -> Path:
        return self.dir / "snapshot"

    def write_changelog(self, batch_id: int, tables: Tables, meta: Meta) -> None:
        """One batch's changelog, in one atomically renamed directory."""
        self._changelog_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._changelog_dir / f"{batch_id:012d}", tables, meta)

    def write_snapshot(self, batch_id: int, tables: Tables, meta: Meta) -> None:
        """The whole state after ``batch_id``, in one atomically renamed directory."""
        self._snapshot_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._snapshot_dir / _snapshot_name(batch_id), tables, meta)

    def drop_covered(self, batch_id: int) -> None:
        """Drop every snapshot but ``batch_id``'s, and the changelogs up to ``batch_id``."""
        name = _snapshot_name(batch_id)
        for old in self._snapshot_dir.iterdir() if self._snapshot_dir.is_dir() else []:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        for log in self._changelog_dir.glob("*") if self._changelog_dir.is_dir() else []:
            if log.is_dir() and not log.name.startswith(".") and int(log.name) <= batch_id:
                shutil.rmtree(log, ignore_errors=True)

    def drop_changelogs(self) -> None:
        """Drop every changelog."""
        shutil.rmtree(self._changelog_dir, ignore_errors=True)

    def newest_snapshot(self) -> tuple[Tables, Meta] | None:
        """The newest complete snapshot, or None."""
        snapshots = _complete(self._snapshot_dir)
        return _read(snapshots[-1]) if snapshots else None

    def changelog_ids(self) -> list[int]:
        """The batch ids of the complete changelogs, in order."""
        return [int(p.name) for p in _complete(self._changelog_dir)]

    def read_changelog(self, batch_id: int) -> tuple[Tables, Meta]:
        """One changelog (``changelog_ids`` lists them)."""
        return _read(self._changelog_dir / f"{batch_id:012d}")

    def size_bytes(self) -> int:
        """Bytes on disk (snapshot plus changelogs)."""
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())


def _snapshot_name(batch_id: int) -> str:
    return f"{batch_id + 1:012d}"  # +1: the seed's batch -1 sorts as 0


def _complete(directory: Path) -> list[Path]:
    """The entries under ``directory`` that were written whole, in name order."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("[0-9]*") if (p / "meta.json").is_file())


def _write_atomically(target: Path, tables: Tables, meta: Meta) -> None:
    """Write ``tables`` (Arrow IPC) and ``meta.json`` into ``target``, appearing whole."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, table in tables.items():
        feather.write_feather(table, tmp / f"{name}.arrow", compression="uncompressed")
    (tmp / "meta.json").write_text(json.dumps(meta))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _read(directory: Path) -> tuple[Tables, Meta]:
    tables = {p.stem: feather.read_table(p, memory_map=False) for p in directory.glob("*.arrow")}
    return tables, json.loads((directory / "meta.json").read_text())
