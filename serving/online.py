"""The online store: one keyed record per customer, read in one look-up.

The speed layer writes it (``serving.live``): per micro-batch the touched customers'
absolute state; when a retrain moves CURRENT, the model outputs keyed by customer
(segments, recommendation lists), the popularity list and the versions' scorers (in the
meta). It holds no scores: the read path (``serving.read``) fetches one record and
evaluates the features *and the scores* that age as of the stream clock, so a silent
customer's churn probability is as current as their recency.

Two backends with the same methods, chosen by ``settings.online_store``:

- ``sqlite`` (the default): embedded, no server, like Feast's local online store; one
  file ``settings.online_store_path``. WAL mode, so readers never block the writer.
- ``redis``: for more than one machine (``settings.redis_url``). A hash per customer,
  the set of customer ids, model outputs under versioned keys switched by one pointer.

What a record holds (``RECORD_COLUMNS``): the ``STATE_SCHEMA`` totals (days as day
numbers since 1970-01-01, null for none), the latest event time and the history as JSON
(``[[day, n_events, n_purchases, spend, n_online, n_with_channel], ...]``). All writes
are upserts of absolute values, so a replayed batch writes the same record again.

A store written before a column existed gets it added (null) when opened for writing;
read-only, the missing column reads as null. Columns of older versions (stored scores)
are left in place and never read.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import override

from runtime.errors import PulseError
from runtime.settings import Settings

STATE_COLUMNS = (
    "first_purchase_date",
    "last_purchase_date",
    "purchase_days",
    "n_events",
    "monetary",
    "n_online",
    "n_with_channel",
    "max_event_time",
    "history",
)
RECORD_COLUMNS = ("customer_id", *STATE_COLUMNS)
OUTPUT_KINDS = ("segments", "recommendations")


class OnlineStore(ABC):
    """The methods both backends provide. Values are plain Python (str, int, float, None)."""

    name: str

    @abstractmethod
    def write_records(
        self, rows: Iterable[Sequence[Any]], meta: dict[str, Any] | None = None
    ) -> None:
        """Upsert whole records (``RECORD_COLUMNS`` order); with ``meta``, those values too,
        in the same transaction (a batch's records and its clock: ``get_many`` never sees
        one without the other)."""

    @abstractmethod
    def replace_output(self, kind: str, version: str, rows: Iterable[tuple[str, str]]) -> None:
        """Make ``rows`` (customer_id, JSON value) the ``kind`` output, version ``version``,
        in one switch: readers see the old version or the new one, never a mix."""

    @abstractmethod
    def get(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's record plus its outputs (``output_<kind>``), or None."""

    @abstractmethod
    def get_many(self, ids: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """The records (as ``get``) of the ids the store holds, and the meta, read from one
        snapshot: a record is never newer than the clock read with it."""

    @abstractmethod
    def records(self) -> Iterator[list[tuple[Any, ...]]]:
        """Every record (``RECORD_COLUMNS``), in chunks: what the at-risk list evaluates."""

    @abstractmethod
    def set_meta(self, values: dict[str, Any]) -> None:
        """Store JSON-able values under their keys (clock, batch, versions, popular...)."""

    @abstractmethod
    def meta(self) -> dict[str, Any]:
        """Every meta value."""

    @abstractmethod
    def count(self) -> int:
        """Customers held."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


# --- SQLite ------------------------------------------------------------------------------------


class SqliteStore(OnlineStore):
    """The embedded store: one SQLite file, WAL, customer_id as the clustered key."""

    name = "sqlite"

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise PulseError(f"no online store at {self.path} yet (run `pulse stream`)")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self.db.execute("PRAGMA query_only=1")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Spark calls foreachBatch on its own Python thread; the stream never writes
            # from two threads at once, so one connection may move between them.
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; derived data
            self._create()
        self.db.execute("PRAGMA cache_size=-262144")  # 256 MB page cache
        self.columns = tuple(r[1] for r in self.db.execute("PRAGMA table_info(customer)"))

    def _create(self) -> None:
        cols = ", ".join(f"{c}" for c in RECORD_COLUMNS[1:])
        with self.db:
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS customer (customer_id TEXT PRIMARY KEY, {cols})"
                " WITHOUT ROWID"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS output (kind TEXT, customer_id TEXT, value TEXT,"
                " PRIMARY KEY (kind, customer_id)) WITHOUT ROWID"
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            have = {r[1] for r in self.db.execute("PRAGMA table_info(customer)")}
            for c in RECORD_COLUMNS[1:]:
                if c not in have:  # a store written by an older version: add, null
                    self.db.execute(f"ALTER TABLE customer ADD COLUMN {c}")

    @override
    def write_records(
        self, rows: Iterable[Sequence[Any]], meta: dict[str, Any] | None = None
    ) -> None:
        marks = ", ".join("?" for _ in RECORD_COLUMNS)
        updates = ", ".join(f"{c}=excluded.{c}" for c in RECORD_COLUMNS[1:])
        with self.db:
            self.db.executemany(
                f"INSERT INTO customer ({', '.join(RECORD_COLUMNS)}) VALUES ({marks})"
                f" ON CONFLICT(customer_id) DO UPDATE SET {updates}",
                rows,
            )
            self._write_meta(meta or {})

    @override
    def replace_output(self, kind: str, version: str, rows: Iterable[tuple[str, str]]) -> None:
        with self.db:  # one transaction: WAL readers see the old rows until it commits
            self.db.execute("DELETE FROM output WHERE kind=?", (kind,))
            self.db.executemany(
                "INSERT INTO output VALUES (?, ?, ?)", ((kind, c, v) for c, v in rows)
            )
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                (f"{kind}_output_version", json.dumps(version)),
            )

    @override
    def get_many(self, ids: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        # One read transaction: WAL gives it a snapshot, so no commit lands between reads
        self.db.execute("BEGIN")
        try:
            found = {i: r for i in dict.fromkeys(ids) if (r := self.get(i)) is not None}
            return found, self.meta()
        finally:
            self.db.execute("COMMIT")

    @override
    def get(self, customer_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT * FROM customer WHERE customer_id=?", (customer_id,)
        ).fetchone()
        if row is None:
            return None
        stored = dict(zip(self.columns, row, strict=True))
        record = {c: stored.get(c) for c in RECORD_COLUMNS}
        for kind, value in self.db.execute(
            "SELECT kind, value FROM output WHERE customer_id=? AND kind IN (?, ?)",
            (customer_id, *OUTPUT_KINDS),
        ):
            record[f"output_{kind}"] = value
        return record

    @override
    def records(self) -> Iterator[list[tuple[Any, ...]]]:
        have = [c if c in self.columns else "NULL" for c in RECORD_COLUMNS]
        cursor = self.db.execute(f"SELECT {', '.join(have)} FROM customer")
        while chunk := cursor.fetchmany(_PIPELINE_ROWS * 20):
            yield chunk

    @override
    def set_meta(self, values: dict[str, Any]) -> None:
        with self.db:
            self._write_meta(values)

    def _write_meta(self, values: dict[str, Any]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            ((k, json.dumps(v)) for k, v in values.items()),
        )

    @override
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    @override
    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM customer").fetchone()[0])

    @override
    def close(self) -> None:
        self.db.close()


# --- Redis -------------------------------------------------------------------------------------

_PIPELINE_ROWS = 5_000  # commands per round trip


def _chunks(rows: Iterable[Any], size: int = _PIPELINE_ROWS) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encode(value: Any) -> str:
    return "" if value is None else json.dumps(value)


def _decode(value: str | None) -> Any:
    return None if value is None or value == "" else json.loads(value)


def _record(customer_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A Redis hash's fields -> the record (``RECORD_COLUMNS``, decoded)."""
    return {"customer_id": customer_id} | {c: _decode(fields.get(c)) for c in RECORD_COLUMNS[1:]}


class RedisStore(OnlineStore):
    """Redis: ``<prefix>c:<id>`` hashes, the set of ids (``<prefix>ids``), versioned outputs.

    Every field is stored as JSON (empty for null), so values read back with their types.
    """

    name = "redis"

    def __init__(self, url: str, prefix: str = "pulse:") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        # Any: redis-py's stubs type every reply as a union of bytes, str and more.
        self.r: Any = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=30, decode_responses=True
        )
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise PulseError(f"cannot reach Redis at {url}: {exc}") from None

    def _key(self, customer_id: str) -> str:
        return f"{self.prefix}c:{customer_id}"

    @override
    def write_records(
        self, rows: Iterable[Sequence[Any]], meta: dict[str, Any] | None = None
    ) -> None:
        # With meta (a batch): one MULTI/EXEC, records and clock together; without (a full
        # snapshot's million records), chunked pipelines
        atomic = self.r.pipeline(transaction=True) if meta is not None else None
        for chunk in _chunks(rows):
            pipe = atomic or self.r.pipeline(transaction=False)
            for row in chunk:
                fields = {c: _encode(v) for c, v in zip(RECORD_COLUMNS[1:], row[1:], strict=True)}
                pipe.hset(self._key(row[0]), mapping=fields)
            pipe.sadd(self.prefix + "ids", *[row[0] for row in chunk])
            if atomic is None:
                pipe.execute()
        if atomic is not None:
            if meta:
                atomic.hset(self.prefix + "meta",
                            mapping={k: json.dumps(v) for k, v in meta.items()})  # fmt: skip
            atomic.execute()

    @override
    def replace_output(self, kind: str, version: str, rows: Iterable[tuple[str, str]]) -> None:
        # Write the new version's keys, switch the pointer, then drop the old keys.
        base = f"{self.prefix}o:{kind}:"
        for chunk in _chunks(rows):
            pipe = self.r.pipeline(transaction=False)
            for customer_id, value in chunk:
                pipe.set(f"{base}{version}:{customer_id}", value)
            pipe.execute()
        old = _decode(self.r.hget(self.prefix + "meta", f"{kind}_output_version"))
        self.set_meta({f"{kind}_output_version": version})
        if old is not None and old != version:
            for keys in _chunks(self.r.scan_iter(f"{base}{old}:*", count=10_000)):
                self.r.unlink(*keys)

    @override
    def get(self, customer_id: str) -> dict[str, Any] | None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self._key(customer_id))
        pipe.hmget(self.prefix + "meta", [f"{k}_output_version" for k in OUTPUT_KINDS])
        fields, versions = pipe.execute()
        if not fields:
            return None
        found = {customer_id: _record(customer_id, fields)}
        self._add_outputs(found, dict(zip(OUTPUT_KINDS, map(_decode, versions), strict=True)))
        return found[customer_id]

    def _add_outputs(self, found: dict[str, dict[str, Any]], versions: dict[str, Any]) -> None:
        """Each record's ``output_<kind>`` of the given output versions (a versioned
        switch: they change only when a model is picked up)."""
        live = {kind: version for kind, version in versions.items() if version is not None}
        keys = [(cid, kind, f"{self.prefix}o:{kind}:{version}:{cid}")
                for cid in found for kind, version in live.items()]  # fmt: skip
        if keys:
            for (cid, kind, _), value in zip(keys, self.r.mget([k for *_, k in keys]),
                                             strict=True):  # fmt: skip
                if value is not None:
                    found[cid][f"output_{kind}"] = value

    @override
    def get_many(self, ids: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        wanted = list(dict.fromkeys(ids))
        pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: one snapshot
        for customer_id in wanted:
            pipe.hgetall(self._key(customer_id))
        pipe.hgetall(self.prefix + "meta")
        *hashes, raw_meta = pipe.execute()
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
        found = {cid: _record(cid, fields) for cid, fields in zip(wanted, hashes, strict=True)
                 if fields}  # fmt: skip
        self._add_outputs(found, {k: meta.get(f"{k}_output_version") for k in OUTPUT_KINDS})
        return found, meta

    @override
    def records(self) -> Iterator[list[tuple[Any, ...]]]:
        for ids in _chunks(self.r.sscan_iter(self.prefix + "ids", count=_PIPELINE_ROWS)):
            pipe = self.r.pipeline(transaction=False)
            for customer_id in ids:
                pipe.hmget(self._key(customer_id), RECORD_COLUMNS[1:])
            yield [
                (customer_id, *(_decode(v) for v in values))
                for customer_id, values in zip(ids, pipe.execute(), strict=True)
            ]

    @override
    def set_meta(self, values: dict[str, Any]) -> None:
        self.r.hset(self.prefix + "meta", mapping={k: json.dumps(v) for k, v in values.items()})

    @override
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.r.hgetall(self.prefix + "meta").items()}

    @override
    def count(self) -> int:
        return int(self.r.scard(self.prefix + "ids"))

    @override
    def close(self) -> None:
        self.r.close()


def open_store(settings: Settings, readonly: bool = False) -> OnlineStore:
    """The online store the settings name (``PULSE_ONLINE_STORE``: sqlite or redis)."""
    if settings.online_store == "redis":
        return RedisStore(settings.redis_url)
    try:
        return SqliteStore(settings.online_store_path, readonly=readonly)
    except PulseError as exc:
        if not settings.on_object_store:
            raise
        # The data root is shared, but a SQLite store is on the disk of the machine whose
        # stream wrote it: say where it was looked for, and how to share one
        raise PulseError(
            f"{exc}: with the data root in an object store, the SQLite online store is this "
            "machine's own (PULSE_LOCAL_DIR); run `pulse stream` here, or share one with "
            "PULSE_ONLINE_STORE=redis"
        ) from None
