"""The stream's inbox: each micro-batch's Kafka records, on disk until they are processed.

Spark commits a micro-batch's offsets when its ``foreachBatch`` function returns. The
job returns as soon as the batch's records are here, so Spark reads the next batch
from Kafka while the driver parses, folds and writes this one (the two overlap; one
after the other, the driver sat idle while Spark read). What makes that safe is the
order of the steps: the records are in the inbox (written to a temporary name, then
renamed) before Spark records the batch as done, and leave it only once processed. A
stream killed in between finds them here on restart and processes them before it
reads Kafka again; processing is idempotent per batch id, so a batch that is both in
the inbox and replayed by Spark changes nothing twice.

Files are Arrow IPC, named by batch id, raw Kafka columns (the bytes, unparsed).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa


class Inbox:
    """Batch id -> that micro-batch's Kafka records, as files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, batch_id: int) -> Path:
        return self.dir / f"{batch_id:012d}.arrow"

    def put(self, batch_id: int, records: pa.Table) -> None:
        """Keep ``records`` under ``batch_id`` (atomically: the file is whole or absent)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{batch_id:012d}-{uuid.uuid4().hex[:8]}.tmp"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, records.schema) as out:
            out.write_table(records)
        os.replace(tmp, self._path(batch_id))

    def get(self, batch_id: int) -> pa.Table:
        """The records kept under ``batch_id``."""
        with pa.OSFile(str(self._path(batch_id)), "rb") as source:
            return pa.ipc.open_file(source).read_all()

    def done(self, batch_id: int) -> None:
        """The batch is processed: forget its records."""
        self._path(batch_id).unlink(missing_ok=True)

    def pending(self) -> list[int]:
        """Batch ids still waiting, oldest first (leftover temporary files are removed)."""
        if not self.dir.exists():
            return []
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return sorted(int(p.stem) for p in self.dir.glob("[0-9]*.arrow"))
