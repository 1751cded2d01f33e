"""A throwaway ``redis-server`` (Debian's package, which `make setup` installs) on a free
port, persistence off: for ``pulse bench serve`` and the test session."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pulse.chaos.lab import free_port
from runtime.errors import PulseError


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Start one in ``workdir``; yields its URL (database 0), stops it after."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise PulseError("redis-server is not installed (Debian: apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise PulseError(f"redis-server did not start (exit {proc.poll()})") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
