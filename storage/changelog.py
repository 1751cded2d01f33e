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

Tables are uncompressed Arrow IPC (Feather) files, on a local disk or in the data
root's object store. An entry is listed only once it holds ``meta.json``: on a disk it
is written into a hidden ``.<name>.tmp`` directory and renamed into place; in an object
store, where a directory cannot be renamed, its tables are uploaded first and
``meta.json`` last, so it appears whole or not at all either way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
from upath import UPath

from storage.objects import is_remote, remove_tree

Tables = dict[str, pa.Table]  # table name -> table
Meta = dict[str, Any]  # JSON-able


class Changelog:
    """The changelogs and snapshots of one store, under ``directory``."""

    def __init__(self, directory: UPath) -> None:
        self.dir = directory

    @property
    def _changelog_dir(self) -> UPath:
        return self.dir / "changelog"

    @property
    def _snapshot_dir(self) -> UPath:
        return self.dir / "snapshot"

    def write_changelog(self, batch_id: int, tables: Tables, meta: Meta) -> None:
        """One batch's changelog, in one atomically renamed directory."""
        _write_atomically(self._changelog_dir / f"{batch_id:012d}", tables, meta)

    def write_snapshot(self, batch_id: int, tables: Tables, meta: Meta) -> None:
        """The whole state after ``batch_id``, in one atomically renamed directory."""
        _write_atomically(self._snapshot_dir / _snapshot_name(batch_id), tables, meta)

    def drop_covered(self, batch_id: int) -> None:
        """Drop every snapshot but ``batch_id``'s, and the changelogs up to ``batch_id``."""
        name = _snapshot_name(batch_id)
        for old in self._snapshot_dir.iterdir() if self._snapshot_dir.is_dir() else []:
            if old.name != name:
                remove_tree(old)
        for log in self._changelog_dir.glob("*") if self._changelog_dir.is_dir() else []:
            if log.name.isdigit() and int(log.name) <= batch_id:
                remove_tree(log)

    def drop_changelogs(self) -> None:
        """Drop every changelog."""
        remove_tree(self._changelog_dir)

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


def _complete(directory: UPath) -> list[UPath]:
    """The entries under ``directory`` that were written whole, in name order."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("[0-9]*") if (p / "meta.json").is_file())


def _write_atomically(target: UPath, tables: Tables, meta: Meta) -> None:
    """Write ``tables`` (Arrow IPC) and ``meta.json`` into ``target``, appearing whole."""
    if is_remote(target):
        remove_tree(target)  # a rewrite of the same entry: no stale meta.json meanwhile
        for name, table in tables.items():
            sink = pa.BufferOutputStream()
            feather.write_feather(table, sink, compression="uncompressed")
            (target / f"{name}.arrow").write_bytes(sink.getvalue().to_pybytes())
        (target / "meta.json").write_text(json.dumps(meta))  # last: the entry is complete
        return
    final = Path(str(target))
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, table in tables.items():
        feather.write_feather(table, tmp / f"{name}.arrow", compression="uncompressed")
    (tmp / "meta.json").write_text(json.dumps(meta))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _read(directory: UPath) -> tuple[Tables, Meta]:
    tables = {
        p.name.removesuffix(".arrow"): feather.read_table(pa.BufferReader(p.read_bytes()))
        for p in directory.glob("*.arrow")
    }
    return tables, json.loads((directory / "meta.json").read_text())
