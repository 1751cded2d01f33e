"""The data root in an object store: a real S3 server (SeaweedFS) on free ports.

What works there so far, each checked against what a plain S3 client reads back:
the lake's write protocol (two writer processes at once, each event once), the
registry's CURRENT pointer, snapshots, atomic files, and the clear errors for a wrong
endpoint, wrong credentials or a missing bucket. Nothing of the data root is written
to the local disk.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs

from pulse.local.s3 import S3Endpoint
from runtime.errors import PulseError
from runtime.settings import Settings, load_settings
from storage import lake, registry, snapshots
from storage.objects import check_reachable, local_path, s3_filesystem, write_atomically

PULSE = Path(sys.executable).with_name("pulse")


def ev(n: int, day: int) -> dict:  # type: ignore[type-arg]
    from datetime import UTC, datetime

    when = datetime(2020, 1, day, 12, tzinfo=UTC)
    return {"event_id": f"e{n}", "event_time": when, "customer_id": f"c{n % 7}",
            "article_id": f"a{n}", "quantity": 1, "unit_price": 1.5, "sales_channel_id": 1,
            "source": "synthetic", "produced_at": when}  # fmt: skip


def table(*events: dict) -> pa.Table:  # type: ignore[type-arg]
    return pa.Table.from_pylist(list(events), schema=lake.EVENT_ARROW_SCHEMA)


def store(settings: Settings) -> fs.S3FileSystem:
    """An S3 client of its own (pyarrow's), to read back what Pulse wrote."""
    return s3_filesystem(settings.s3_options())


def keys(settings: Settings, under: str = "") -> list[str]:
    root = str(settings.data_root).split("://", 1)[1]
    selector = fs.FileSelector(f"{root}/{under}".rstrip("/"), recursive=True, allow_not_found=True)
    return sorted(
        i.path.removeprefix(root + "/")
        for i in store(settings).get_file_info(selector)
        if i.type == fs.FileType.File
    )


def lake_ids(settings: Settings) -> list[str]:
    """Every event id in the lake's live files, read with a plain S3 client (repeats kept)."""
    files = lake.live_files(settings)
    assert all(f.startswith("s3://") for f in files)
    paths = [f.removeprefix("s3://") for f in files]
    ids = pq.ParquetDataset(paths, filesystem=store(settings)).read(columns=["event_id"])
    return sorted(ids["event_id"].to_pylist())


def test_the_lake_protocol_in_the_object_store(s3_settings: Settings) -> None:
    assert lake.write_lake_batch(s3_settings, table(ev(1, 1), ev(2, 1), ev(2, 1)), 0) == 2
    assert lake.write_lake_batch(s3_settings, table(ev(1, 1), ev(3, 2)), 1) == 1  # e1 again
    assert lake.write_lake_batch(s3_settings, table(ev(1, 1), ev(3, 2)), 1) == 0  # a replay
    assert lake.write_lake_batch(s3_settings, table(ev(4, 1)), 2) == 1  # day 1's second file
    assert lake_ids(s3_settings) == ["e1", "e2", "e3", "e4"]
    assert any(k.startswith("lake/transactions/_delta_log/") for k in keys(s3_settings))
    result = lake.compact(s3_settings, min_files=2)
    assert (result.dates, result.files_before, result.files_after) == (1, 2, 1)
    assert lake_ids(s3_settings) == ["e1", "e2", "e3", "e4"]
    assert lake.file_count(s3_settings) == 2
    assert [d.isoformat() for d in lake.event_dates(s3_settings)] == ["2020-01-01", "2020-01-02"]
    assert not (s3_settings.local_root).exists()  # nothing of the data root on local disk


def _write_batches(options: dict[str, str], writer: str, start, plan: list[list[int]]) -> None:  # type: ignore[no-untyped-def]
    s = load_settings(**options)
    start.wait()
    for batch_id, ns in enumerate(plan):
        lake.write_events(s, table(*(ev(n, 1 + n % 4) for n in ns)), writer, batch_id)


def test_two_writers_at_once_through_the_object_store_land_each_event_once(
    s3_settings: Settings, s3_endpoint: S3Endpoint
) -> None:
    """The stream and an ingest, as two processes sharing nothing but the bucket: the
    Delta log's put-if-absent decides each race; every event lands once."""
    rng = random.Random(8)
    plans = {w: [rng.sample(range(80), 10) for _ in range(15)] for w in ("stream", "ingest")}
    prefix = str(s3_settings.data_root).split("/", 3)[3]
    options = s3_endpoint.settings(prefix)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_batches, args=(options, w, start, plan))
             for w, plan in plans.items()]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    expected = sorted({f"e{n}" for plan in plans.values() for ns in plan for n in ns})
    assert lake_ids(s3_settings) == expected
    writers = [c.get("pulse.writer") for c in lake._table(s3_settings).history()]
    assert {"stream", "ingest"} <= set(writers)


def test_registry_pointers_and_snapshots_in_the_object_store(s3_settings: Settings) -> None:
    registry.write_meta(s3_settings, "churn", "v1", {"auc": 0.7})
    registry.write_meta(s3_settings, "churn", "v2", {"auc": 0.8})
    assert registry.current_version(s3_settings, "churn") is None
    registry.promote(s3_settings, "churn", "v2")
    assert registry.current_version(s3_settings, "churn") == "v2"
    assert registry.versions(s3_settings, "churn") == ["v1", "v2"]
    assert registry.read_meta(s3_settings, "churn", "v2") == {"auc": 0.8}
    pointer = store(s3_settings).open_input_stream(
        str(s3_settings.models_dir / "churn" / "CURRENT").removeprefix("s3://")
    )
    assert pointer.read() == b"v2\n"

    base = s3_settings.features_dir
    for n in range(4):
        snapshots.publish(base, lambda d, n=n: write_atomically(d / "part.txt", str(n).encode()))
    now = snapshots.current(base)
    assert now is not None and (now / "part.txt").read_text() == "3"
    kept = {k.split("/")[2] for k in keys(s3_settings, "features/live") if "/v=" in k}
    assert len(kept) == 3 and now.name in kept  # the newest three, the current one among them
    assert not s3_settings.local_root.exists()


def test_what_still_needs_a_disk_says_so_in_one_line(s3_settings: Settings) -> None:
    with pytest.raises(PulseError, match=r"the stream's inbox cannot live in an object store yet"):
        local_path(s3_settings.state_dir, "the stream's inbox")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"s3_secret_access_key": "wrong"}, "refused the credentials"),
        ({"bucket": "nobucket"}, "bucket 'nobucket' does not exist"),
        ({"s3_endpoint": "http://127.0.0.1:{closed}"}, "cannot reach the object store at"),
    ],
    ids=["wrong-credentials", "missing-bucket", "wrong-endpoint"],
)
def test_a_wrong_object_store_is_one_clear_line(
    s3_endpoint: S3Endpoint, tmp_path: Path, change: dict[str, str], says: str
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    options = s3_endpoint.settings("x")
    if "bucket" in change:
        options["data_root"] = f"s3://{change['bucket']}/x"
    else:
        options |= {k: v.format(closed=closed) for k, v in change.items()}
    with pytest.raises(PulseError, match=says):
        check_reachable(load_settings(**options))
    # The same through the command line: one line on stderr, a non-zero exit.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env |= {f"PULSE_{k.upper()}": str(v) for k, v in options.items()}
    done = subprocess.run([str(PULSE), "compact"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert s3_endpoint.secret_access_key not in done.stderr + done.stdout  # never printed


@pytest.mark.parametrize("command", ["demo", "chaos"])
def test_a_command_not_ready_for_an_object_store_says_so_in_one_line(
    command: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env |= {"PULSE_DATA_ROOT": "s3://pulse/x", "PULSE_S3_ENDPOINT": "http://127.0.0.1:1"}
    done = subprocess.run([str(PULSE), command], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"`pulse {command}` does not run on an object-store data root yet" in lines[0]


def test_a_port_taken_before_the_first_start_is_chosen_again(
    base_settings: Settings, tmp_path: Path
) -> None:
    """Between choosing a free port and binding it, another process may take it (a CI run
    lost every object-store test so). The first start then moves to new ports."""
    import socket

    from pulse.local.s3 import S3Server, weed_binary

    if not weed_binary(base_settings).exists():
        pytest.skip(f"SeaweedFS not built at {weed_binary(base_settings)} (`make setup`)")
    server = S3Server(base_settings, tmp_path / "s3")
    taken = server.grpc["filer"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            endpoint = server.start(timeout=60)
            assert server.grpc["filer"] != taken
            assert "address already in use" in server.log_path.read_text()
            check_reachable(load_settings(**endpoint.settings("probe")))
        finally:
            server.stop()
