"""The data root's files on a local disk or in an object store, through one path type.

``settings.data_root`` is a ``UPath``: a local path (a ``pathlib.Path`` too) or an
``s3://bucket/prefix`` path that carries its endpoint and credentials. Stores read and
write through it with the pathlib API, and ask this module for the few things that
differ between the two:

- ``write_atomically``: a whole file a reader sees complete or not at all (written
  aside and renamed on a disk; one PUT, which S3 makes visible whole, in a store);
- ``arrow_fs``: the pyarrow file system and path, for Parquet reads and writes;
- ``delta_location``: the URI and storage options delta-rs takes;
- ``spark_path``: the path Spark's Hadoop file systems take (``s3a://`` in a store);
- ``check_reachable``: one clear line when the endpoint, the credentials or the bucket
  is wrong, before a command starts work;
- ``local_path``: for what still needs a local disk, the path, or one clear line.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from upath import UPath

from runtime.errors import PulseError
from runtime.settings import S3_ATTEMPTS, Settings

#: delta-rs (object_store) retries a request until this long after its first attempt
#: (its default, 10 retries of 0.1 s and up, gave up within 3 s of the store going down).
DELTA_RETRY_TIMEOUT = "180s"


def is_remote(path: Path | UPath) -> bool:
    """True for a path in an object store."""
    return getattr(path, "protocol", "") not in ("", "file", "local")


def local_path(path: Path | UPath, what: str) -> Path:
    """``path`` as a local ``Path``; a PulseError naming ``what`` if it is in a store."""
    if is_remote(path):
        raise PulseError(
            f"{what} cannot live in an object store yet ({path}): "
            "use a local or mounted data root for it"
        )
    return Path(str(path))


def write_atomically(path: Path | UPath, data: bytes | memoryview) -> None:
    """Write ``data`` as ``path`` whole: a reader sees the old file or the new one."""
    if is_remote(path):
        path.write_bytes(bytes(data))  # one PUT: S3 shows an object only once complete
        return
    local = Path(str(path))
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, local)


def remove_tree(path: Path | UPath) -> None:
    """Remove ``path`` and everything under it (nothing if absent)."""
    if isinstance(path, UPath) and is_remote(path):
        files = path.fs.find(path.path)  # a store has no directories, only keys
        if files:
            path.fs.rm(files)
    else:
        shutil.rmtree(Path(str(path)), ignore_errors=True)


def arrow_fs(path: Path | UPath) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path in it)`` for reading or writing ``path`` with pyarrow."""
    from pyarrow import fs

    if not is_remote(path):
        return fs.LocalFileSystem(), str(Path(str(path)).absolute())
    return s3_filesystem(getattr(path, "storage_options", {})), str(path).split("://", 1)[1]


def s3_filesystem(options: dict[str, Any], attempts: int = S3_ATTEMPTS, **extra: Any) -> Any:
    """pyarrow's S3 file system from fsspec-style ``options`` (Settings.s3_options);
    ``attempts`` per request (AWS standard retries: about 3 minutes of an unreachable
    store for the default; 3 answer within seconds); ``extra``: more ``S3FileSystem``
    arguments. One per set of options, reused: a micro-batch's lake writes and reads
    would otherwise each build a client."""
    key = json.dumps([options, attempts, extra], sort_keys=True, default=str)
    if key not in _S3_CLIENTS:
        _S3_CLIENTS[key] = _new_s3_filesystem(options, attempts, extra)
    return _S3_CLIENTS[key]


_S3_CLIENTS: dict[str, Any] = {}


def _new_s3_filesystem(options: dict[str, Any], attempts: int, extra: dict[str, Any]) -> Any:
    from pyarrow import fs

    kwargs: dict[str, Any] = {
        "region": options.get("client_kwargs", {}).get("region_name"),
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=attempts),
    }
    if "key" in options:
        kwargs |= {"access_key": options["key"], "secret_key": options["secret"]}
    endpoint = options.get("endpoint_url")
    if endpoint:
        scheme, host = endpoint.split("://", 1)
        kwargs |= {"endpoint_override": host, "scheme": scheme}
    return fs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None}, **extra)


def delta_location(path: Path | UPath) -> tuple[str, dict[str, str] | None]:
    """``(table URI, storage options)`` for delta-rs."""
    if not is_remote(path):
        return str(Path(str(path))), None
    options = getattr(path, "storage_options", {})
    out = {"AWS_REGION": options.get("client_kwargs", {}).get("region_name") or "us-east-1"}
    if "key" in options:
        out |= {"AWS_ACCESS_KEY_ID": options["key"], "AWS_SECRET_ACCESS_KEY": options["secret"]}
    endpoint = options.get("endpoint_url")
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
        out["AWS_ALLOW_HTTP"] = str(endpoint.startswith("http://")).lower()
    out |= {"max_retries": "100000", "retry_timeout": DELTA_RETRY_TIMEOUT}  # the timeout decides
    return str(path), out


def spark_path(path: Path | UPath | str) -> str:
    """The path (or a ``s3://`` URI) as Spark's Hadoop file systems name it (``s3a://``)."""
    text = str(path)
    return "s3a://" + text.split("://", 1)[1] if text.startswith("s3://") else text


def check_reachable(settings: Settings) -> None:
    """When the data root is in an object store: endpoint, credentials and bucket answer.

    One clear line for each way it can be wrong (PulseError), before any work starts.
    """
    if not settings.on_object_store:
        return
    from pyarrow import fs

    root = str(settings.data_root)
    bucket = root.split("://", 1)[1].split("/", 1)[0]
    store = s3_filesystem(settings.s3_options(), attempts=3)  # a wrong endpoint: say so now
    endpoint = settings.s3_endpoint or "AWS S3"
    try:
        info = store.get_file_info(bucket)
    except OSError as exc:
        text = str(exc)
        refused = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
        if any(word in text for word in refused):
            raise PulseError(
                f"the object store at {endpoint} refused the credentials "
                "(PULSE_S3_ACCESS_KEY_ID / PULSE_S3_SECRET_ACCESS_KEY)"
            ) from None
        raise PulseError(
            f"cannot reach the object store at {endpoint} (PULSE_S3_ENDPOINT): "
            f"{text.split(': ', 1)[-1].splitlines()[0][:160]}"
        ) from None
    if info.type == fs.FileType.NotFound:
        raise PulseError(
            f"bucket {bucket!r} does not exist at {endpoint} (PULSE_DATA_ROOT={root}): create it"
        )


def write_parquet(table: Any, path: Path | UPath, **options: Any) -> None:
    """``pq.write_table`` to ``path`` whole: on a disk written aside (a hidden name, which
    Spark and pyarrow listings skip) and renamed; in an object store one upload."""
    import pyarrow.parquet as pq

    fs, where = arrow_fs(path)
    if is_remote(path):
        pq.write_table(table, where, filesystem=fs, **options)
        return
    local = Path(where)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, **options)
    os.replace(tmp, local)


def read_parquet_file(path: Path | UPath, **options: Any) -> Any:
    """``pq.read_table`` of a local or object-store ``path``."""
    import pyarrow.parquet as pq

    fs, where = arrow_fs(path)
    return pq.read_table(where, filesystem=fs, **options)
