"""A local S3-compatible object store: SeaweedFS (Apache-2.0), on free loopback ports.

The data root can live in an object store (``PULSE_DATA_ROOT=s3://bucket/prefix``). To
run that on one machine, as the tests and `pulse chaos` do, Pulse starts SeaweedFS's
``weed server`` with its S3 gateway, one access key and one bucket. A real S3 server,
not a mock: it answers conditional puts (``If-None-Match: *`` gets 412 on an existing
key), which the lake's commits rely on.

``weed`` is built once from the Go module proxy by `pulse setup` (``build``) and cached
beside the JVM jars. ``go install …/weed@VERSION`` refuses (the module's go.mod has
replace directives), so the module is downloaded and ``go build`` runs in its ``weed/``
folder: about 7 minutes on 2 cores, 160 MB. Without Go, `pulse setup` says so and the
tests that need the server skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pulse.chaos.lab import free_port
from runtime.errors import PulseError
from runtime.settings import Settings
from storage.objects import s3_filesystem

MODULE = "github.com/seaweedfs/seaweedfs"
VERSION = "v0.0.0-20261109003541-7506e5f91cd6"  # the Go module's version of release:
RELEASE = "4.53"  # `weed version`; docker-compose.yml's image tag
REGION = "us-east-1"


def weed_binary(settings: Settings) -> Path:
    """Where `pulse setup` puts the ``weed`` binary (beside the JVM jar cache)."""
    return settings.jvm_cache.parent / f"seaweedfs-{VERSION}" / "weed"


def build(settings: Settings, log: Callable[[str], None] = print) -> Path | None:
    """Build ``weed`` into the cache unless it is there; None (with a note) without Go."""
    target = weed_binary(settings)
    if target.exists():
        log(f"seaweedfs {VERSION}: cached in {target.parent}")
        return target
    go = shutil.which("go")
    if go is None:
        log("seaweedfs: note: Go not found, so the object-store tests will skip (install Go 1.26)")
        return None
    log(f"seaweedfs {VERSION}: building from the Go module proxy (several minutes) ...")
    t0 = time.monotonic()
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    got = subprocess.run(
        [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if got.returncode != 0:
        raise PulseError(f"go could not download {MODULE}@{VERSION}: {got.stdout[-300:]}")
    source = Path(json.loads(got.stdout)["Dir"]) / "weed"
    partial = target.with_name("weed.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", "10", go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial)]
    built = subprocess.run([*cmd, "."], cwd=source, capture_output=True, text=True, env=env)
    if built.returncode != 0:
        raise PulseError(f"go build of seaweedfs failed: {built.stderr.strip()[-300:]}")
    partial.rename(target)
    log(f"seaweedfs {VERSION}: built in {time.monotonic() - t0:.0f}s ({target})")
    return target


@dataclass(frozen=True)
class S3Endpoint:
    """How to reach a running S3 server: what the ``PULSE_S3_*`` settings take."""

    url: str  # http://127.0.0.1:PORT
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = REGION

    def settings(self, prefix: str = "pulse") -> dict[str, str]:
        """Settings overrides that put the data root at ``s3://bucket/prefix`` here."""
        return {
            "data_root": f"s3://{self.bucket}/{prefix}",
            "s3_endpoint": self.url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }


def create_bucket(endpoint: S3Endpoint, bucket: str) -> None:
    """Create ``bucket`` (no error if it exists), and write to it once: SeaweedFS grows
    a bucket's first volumes on its first write (about 8 s here), not on a user's."""
    options = {
        "endpoint_url": endpoint.url,
        "key": endpoint.access_key_id,
        "secret": endpoint.secret_access_key,
        "client_kwargs": {"region_name": endpoint.region},
    }
    store = s3_filesystem(options, attempts=3, allow_bucket_creation=True)  # probes a start
    store.create_dir(bucket)
    with store.open_output_stream(f"{bucket}/.pulse-warm-up") as out:
        out.write(b"1")
    store.delete_file(f"{bucket}/.pulse-warm-up")


BIND_ATTEMPTS = 3  # first starts on fresh ports when one was taken before the bind


class S3Server:
    """SeaweedFS (master, volume, filer, S3 gateway) in ``workdir`` on ports chosen once.

    ``start`` launches ``weed server`` and returns once the gateway answers and ``bucket``
    takes a write; ``stop`` ends it (SIGTERM, then SIGKILL), ``kill`` SIGKILLs it (a
    crash), ``pause``/``resume`` freeze and thaw it (SIGSTOP/SIGCONT: a store that hangs).
    A stopped or killed server starts again on the same ports, data directory and
    credentials, so its clients find the same endpoint and every object it acknowledged
    (what it wrote before a SIGKILL is on disk: its volumes and filer store are files).
    ``s3_server`` is the context-manager form.
    """

    def __init__(self, settings: Settings, workdir: Path, bucket: str = "pulse") -> None:
        self.binary = weed_binary(settings)
        if not self.binary.exists():
            raise PulseError(f"seaweedfs not built ({self.binary}): run `pulse setup` (needs Go)")
        self.workdir = workdir
        self.bucket = bucket
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        key, secret = "pulse", secrets.token_hex(16)
        self.config = workdir / "s3-identities.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "pulse",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))  # fmt: skip
        self.key, self.secret = key, secret
        self._choose_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _choose_ports(self) -> None:
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.grpc = {name: free_port() for name in self.ports}
        self.endpoint = S3Endpoint(
            f"http://127.0.0.1:{self.ports['s3']}", self.key, self.secret, self.bucket
        )

    @property
    def log_path(self) -> Path:
        """The server's log (every start appends to it)."""
        return self.workdir / "weed.log"

    def command(self) -> list[str]:
        """The ``weed server`` command line (the same at every start)."""
        ports, grpc = self.ports, self.grpc
        return [
            str(self.binary), "server", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
            f"-s3.config={self.config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # volumes of 256 MB, as many as the free disk holds (16, 4 GB, ran out in a
            # 1.37M-customer bench: an InternalError on an upload)
            "-volume.max=0", "-master.volumeSizeLimitMB=256",
            # one master, no peers: restarted on its raft state, it leads again after 1 s
            # instead of 10 (a restart then answers writes in ~17 s instead of ~32)
            "-master.electionTimeout=1s",
        ]  # fmt: skip

    def running(self) -> bool:
        """True while the server process exists (a paused one included)."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120) -> S3Endpoint:
        """Launch the server; return once the gateway answers and the bucket takes a write.

        A free port can be taken between its choice and the server's bind (by any
        outgoing connection: both come from the ephemeral range). On the first start,
        before anyone knows the ports, a bind failure chooses new ones and starts again,
        up to ``BIND_ATTEMPTS`` times; a restart keeps its ports (its clients know them)."""
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                return self._start(timeout)
            except PulseError:
                taken = self.starts == 1 and "address already in use" in self._last_log()
                if not taken or attempt == BIND_ATTEMPTS:
                    raise
                self.starts = 0
                self._choose_ports()
        raise AssertionError("unreachable")

    def _last_log(self) -> str:
        """What the server logged since its last start."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text.rsplit("--- start ", 1)[-1]

    def _start(self, timeout: float) -> S3Endpoint:
        if self.running():
            return self.endpoint
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        _wait_until_answering(self.endpoint, self.proc, self.log_path, timeout)
        while True:  # the gateway answers before its filer has registered
            try:
                create_bucket(self.endpoint, self.bucket)
                return self.endpoint
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL); a no-op when it is not running."""
        if self.proc is not None:
            self.resume()  # a stopped process does not act on SIGTERM
            stop(self.proc)

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown, connections refused until a start)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP the server: its ports stay bound, nothing answers (a hung store)."""
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def s3_server(settings: Settings, workdir: Path, bucket: str = "pulse") -> Iterator[S3Endpoint]:
    """Start SeaweedFS (master, volume, filer, S3 gateway) in ``workdir`` on free ports;
    yields its endpoint with ``bucket`` created; stops it after."""
    server = S3Server(settings, workdir, bucket)
    try:
        yield server.start(timeout=60)
    finally:
        server.stop()


def stop(proc: subprocess.Popen, grace: float = 5) -> None:  # type: ignore[type-arg]
    """SIGTERM, then SIGKILL after ``grace`` seconds (``weed server`` can take 20 s to
    wind down its gRPC streams; what it has acknowledged is on disk already)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_until_answering(
    endpoint: S3Endpoint,
    proc: subprocess.Popen,  # type: ignore[type-arg]
    log: Path,
    timeout: float = 60,
) -> None:
    """Until the S3 gateway answers HTTP (403 to an unsigned request is an answer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(endpoint.url, timeout=2)  # noqa: S310 - loopback http
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise PulseError(f"seaweedfs did not start (exit {proc.poll()}): {tail}") from None
            time.sleep(0.2)
