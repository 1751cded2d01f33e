"""Where a replay resumes: the longest confirmed prefix of source rows, kept durably.

The position is the number of source rows, counted from row 0, whose every record
the broker has acknowledged. It is saved under ``data_root/producer/<hash of the
replay's identity>.json``: on a disk by temp file, fsync, ``os.replace`` and fsync of
the folder; in an object store (``s3://``) as one PUT, which S3 shows only whole, so a
producer on another machine (the same source path) resumes from the bucket. A replay
with ``resume`` skips the rows it covers. Rows after it may have been delivered
already, so a crash can duplicate events but never lose one: the stream deduplicates
on ``event_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from upath import UPath

from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.transaction import format_timestamp, now_utc
from storage.objects import is_remote, write_atomically

SAVE_EVERY_S = 0.5  # how often the position is made durable while a replay runs


def position_path(settings: Settings, identity: Mapping[str, Any]) -> UPath:
    """Where the resume position of one replay (source, window, topic) is kept."""
    blob = json.dumps(dict(identity), sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return settings.data_root / "producer" / f"{digest}.json"


def load_position(path: UPath) -> int:
    """The number of source rows already confirmed (0 when there is no saved position)."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise PulseError(f"cannot read the resume position {path}: {exc}") from None
    return int(saved["last_confirmed_row"]) + 1


def save_position(path: UPath, confirmed_rows: int, identity: Mapping[str, Any]) -> None:
    """Durably record that rows ``0 .. confirmed_rows-1`` are delivered: on a disk
    temp+fsync+replace; in an object store one PUT (durable once acknowledged)."""
    payload = {
        **{k: str(v) if v is not None else None for k, v in identity.items()},
        "last_confirmed_row": confirmed_rows - 1,
        "saved_at": format_timestamp(now_utc()),
    }
    if is_remote(path):
        write_atomically(path, json.dumps(payload, indent=1).encode())
        return
    local = Path(str(path))
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, local)
    # fsync the directory too, so the rename itself survives a power cut
    dir_fd = os.open(local.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ConfirmedPrefix:
    """Tracks the longest prefix of source rows whose every record is delivered.

    Delivery reports arrive in order per partition but interleaved across
    partitions, so a row is confirmed out of order; ``rows`` only advances over
    a gap-free run. A failed delivery is never confirmed, so the prefix stops
    before it and a resume re-sends it.
    """

    def __init__(self, start: int = 0) -> None:
        self.rows = start  # rows 0 .. rows-1 are confirmed
        self._several: dict[int, int] = {}  # row -> records outstanding, rows with > 1 only
        self._done: set[int] = set()  # confirmed rows beyond the prefix

    def expect(self, row: int, records: int = 1) -> None:
        """``row`` will be sent as ``records`` records; call before sending any of them."""
        if records > 1:  # the common single-record row costs no bookkeeping here
            self._several[row] = records

    def delivered(self, row: int) -> None:
        """A record of ``row`` was acknowledged by the broker."""
        if self._several and row in self._several:
            left = self._several[row] - 1
            if left:
                self._several[row] = left
                return
            del self._several[row]
        if row != self.rows:
            self._done.add(row)
            return
        self.rows += 1
        while self.rows in self._done:
            self._done.remove(self.rows)
            self.rows += 1


class ResumePosition:
    """One replay's position: its confirmed prefix and the file it is saved to.

    Reads the saved position when ``resume`` (else starts at row 0); writes
    ``position_path(settings, identity)``.
    """

    def __init__(self, settings: Settings, identity: Mapping[str, Any], *, resume: bool) -> None:
        self.identity = dict(identity)
        self.path = position_path(settings, self.identity)
        self.start = load_position(self.path) if resume else 0  # rows skipped
        self.prefix = ConfirmedPrefix(self.start)
        self._saved_at = time.monotonic()

    def save(self) -> None:
        """Make the confirmed prefix durable now."""
        save_position(self.path, self.prefix.rows, self.identity)
        self._saved_at = time.monotonic()

    def save_if_due(self) -> None:
        """Save when ``SAVE_EVERY_S`` has passed since the last save (or the start)."""
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()
