"""The stream's inbox: each micro-batch's Kafka records, on disk until they are processed.

Spark commits a micro-batch's offsets when its ``foreachBatch`` function returns. The
job returns as soon as the batch's records are here, so Spark reads the next batch
from Kafka while the driver parses, folds and writes this one (the two overlap; one
after the other, the driver sat idle while Spark read). What makes that safe is the
order of the steps: the records are in the inbox (a file that appears whole:
``storage.objects.write_atomically``) before Spark records the batch as done, and leave
it only once processed. A
stream killed in between finds them here on restart and processes them before it
reads Kafka again; processing is idempotent per batch id, so a batch that is both in
the inbox and replayed by Spark changes nothing twice.

Files are Arrow IPC, named by batch id, raw Kafka columns (the bytes, unparsed), on a
local disk or in the data root's object store.
"""

from __future__ import annotations

import pyarrow as pa
from upath import UPath

from storage.objects import is_remote, write_atomically


class Inbox:
    """Batch id -> that micro-batch's Kafka records, as files in ``directory``."""

    def __init__(self, directory: UPath) -> None:
        self.dir = directory

    def _path(self, batch_id: int) -> UPath:
        return self.dir / f"{batch_id:012d}.arrow"

    def put(self, batch_id: int, records: pa.Table) -> None:
        """Keep ``records`` under ``batch_id`` (atomically: the file is whole or absent)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, records.schema) as out:
            out.write_table(records)
        write_atomically(self._path(batch_id), memoryview(sink.getvalue()))

    def get(self, batch_id: int) -> pa.Table:
        """The records kept under ``batch_id``."""
        return pa.ipc.open_file(pa.BufferReader(self._path(batch_id).read_bytes())).read_all()

    def done(self, batch_id: int) -> None:
        """The batch is processed: forget its records."""
        try:
            self._path(batch_id).unlink()
        except FileNotFoundError:
            pass

    def pending(self) -> list[int]:
        """Batch ids still waiting, oldest first (leftover temporary files are removed)."""
        if not self.dir.exists():
            return []
        if not is_remote(self.dir):
            for tmp in self.dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        return sorted(int(p.name.split(".")[0]) for p in self.dir.glob("[0-9]*.arrow"))
