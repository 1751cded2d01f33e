"""`pulse serve` as a process on a free port, for the tests that read the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pulse.chaos.lab import free_port

__all__ = ["Server", "free_port"]

REPO = Path(__file__).resolve().parent.parent


class Server:
    """`pulse [flags] serve --port P`; ``call`` returns (status, JSON body), ``get`` the body
    of a 200."""

    def __init__(
        self, flags: list[str], env: dict[str, str] | None = None, serve: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pulse.cli", *flags, "serve", "--port", str(self.port),
             *serve],
            env=os.environ | (env or {}), cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                self.call("GET", "/openapi.json")
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("pulse serve did not answer within 60 s")

    def call(self, method: str, path: str, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"content-type": "application/json", **(headers or {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
