"""`pulse serve`: the live view over HTTP (FastAPI), read from the online store.

Every answer is what ``serving.read`` answers in-process (``pulse view --json`` prints
the same rows), evaluated as of the stream clock:

- ``GET /customers/{id}``: one customer's view row, with ``expected_value`` and
  ``value_at_risk``; 404 for an unknown id, 422 for a malformed one.
- ``POST /customers`` ``{"ids": [...]}``: up to ``MAX_BATCH`` rows in one call (413
  beyond); ids not in the store are listed under ``unknown``.
- ``GET /at-risk?n=20&order=value|probability``: the at-risk list (``n`` 1 to
  ``MAX_AT_RISK``); it scans the store, so a server keeps the last list per stream clock,
  batch and model versions.
- ``GET /models``: the model versions the store serves, with their metrics and gate
  results where the registry is readable.
- ``GET /health``: the stream clock, the last batch and its age; 503 when the store is
  missing, has no clock yet, or its last batch is older than ``PULSE_API_STALE_SECONDS``.
- ``GET /openapi.json``, ``GET /docs``: the OpenAPI document and its page.

Who may read it: the server binds ``PULSE_API_HOST`` (127.0.0.1 by default) and refuses
to start on any other address without ``PULSE_API_TOKEN``; with a token, every request
needs ``Authorization: Bearer <token>`` (401 otherwise). CORS is off. A missing store is
a 503 with one line; the server keeps serving after every bad request.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StringConstraints

from runtime.errors import PulseError
from runtime.settings import Settings
from serving import read
from serving.online import OnlineStore

MAX_BATCH = 1_000  # ids per POST /customers
MAX_AT_RISK = 1_000  # n of GET /at-risk
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"  # printable, 1 to 256 characters


class Ids(BaseModel):
    """The body of ``POST /customers``."""

    ids: list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]]


def token_of(settings: Settings) -> str | None:
    """The configured bearer token (None when unset or empty)."""
    if settings.api_token is None:
        return None
    return settings.api_token.get_secret_value() or None


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to listen beyond this machine without a token."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and token_of(settings) is None:
        raise PulseError(
            f"`pulse serve` on {host} would let any machine read the view: "
            "set PULSE_API_TOKEN (or bind 127.0.0.1)"
        )


class Readers:
    """One open online-store reader per server thread (SQLite connections stay on theirs)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local = threading.local()

    def get(self) -> OnlineStore:
        """This thread's reader (opened on first use; PulseError while there is no store)."""
        store = getattr(self.local, "store", None)
        if store is None:
            store = read.open_reader(self.settings)  # PulseError: no store yet
            self.local.store = store
        return store


def create_app(settings: Settings) -> FastAPI:
    """The API over ``settings``' online store."""
    app = FastAPI(
        title="Pulse live view",
        description="Customer features, churn, value at risk, segments and recommendations, "
        "as of the stream clock.",
        version="1",
    )
    readers = Readers(settings)
    token = token_of(settings)
    at_risk_cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def authorise(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token")

    @app.exception_handler(PulseError)
    async def unavailable(_: Request, exc: PulseError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    guarded: list[Any] = [Depends(authorise)]

    @app.get("/customers/{customer_id}", dependencies=guarded)
    def customer(customer_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> dict[str, Any]:
        """One customer's live view row (as ``pulse view ID --json``)."""
        store = readers.get()
        record = store.get(customer_id)
        if record is None:
            raise HTTPException(404, f"unknown customer {customer_id!r}")
        return read.jsonable(read.view_row(record, store.meta()))

    @app.post("/customers", dependencies=guarded)
    def customers(body: Ids) -> dict[str, Any]:
        """Up to ``MAX_BATCH`` customers' rows in one call."""
        if len(body.ids) > MAX_BATCH:
            raise HTTPException(413, f"at most {MAX_BATCH} ids per call, got {len(body.ids)}")
        store = readers.get()
        meta = store.meta()
        rows, unknown = [], []
        for customer_id in body.ids:
            record = store.get(customer_id)
            if record is None:
                unknown.append(customer_id)
            else:
                rows.append(read.jsonable(read.view_row(record, meta)))
        return {"customers": rows, "unknown": unknown}

    @app.get("/at-risk", dependencies=guarded)
    def at_risk(
        n: Annotated[int, Query(ge=1, le=MAX_AT_RISK)] = 20,
        order: Annotated[str, Query(pattern="^(value|probability)$")] = "value",
    ) -> dict[str, Any]:
        """The ``n`` customers with the most value at risk (or churn probability)."""
        store = readers.get()
        meta = store.meta()
        key = (n, order, meta.get("clock_us"), meta.get("last_batch"), meta.get("written_at"),
               str(meta.get("versions")))  # fmt: skip
        if key not in at_risk_cache:
            at_risk_cache.clear()
            at_risk_cache[key] = read.at_risk(
                settings, n, by_probability=order == "probability", store=store
            )
        rows = [read.jsonable(r) for r in at_risk_cache[key]]
        return {"order": order, "rows": rows}

    @app.get("/models", dependencies=guarded)
    def models() -> dict[str, Any]:
        """The versions the store serves, with their metrics and gate where readable."""
        from storage import registry

        versions = readers.get().meta().get("versions") or {}
        out: dict[str, Any] = {}
        for name, version in versions.items():
            entry: dict[str, Any] = {"version": version}
            if version is not None:
                try:
                    meta = registry.read_meta(settings, name, version)
                    entry |= {"metrics": meta.get("metrics"), "gate": meta.get("gate")}
                except (OSError, ValueError):
                    entry["metrics"] = None  # the registry is not on this machine
            out[name] = entry
        return out

    @app.get("/health", dependencies=guarded)
    def health() -> JSONResponse:
        """The stream clock and the age of the last batch; 503 when stale or missing."""
        meta = readers.get().meta()
        written = meta.get("written_at")
        age = None if written is None else max(time.time() - float(written), 0.0)
        clock = read.clock_of(meta)
        ok = clock is not None and age is not None and age <= settings.api_stale_seconds
        body = {"ok": ok, "clock": None if clock is None else clock.isoformat(),
                "last_batch": meta.get("last_batch"), "last_write_age_s": age,
                "stale_after_s": settings.api_stale_seconds}  # fmt: skip
        return JSONResponse(body, status_code=200 if ok else 503)

    return app


def serve(settings: Settings, host: str, port: int, ready: Callable[[str], None] = print) -> None:
    """Run the API with uvicorn until interrupted (several processes may serve one Redis
    store: each is its own ``pulse serve``)."""
    import uvicorn

    check_exposure(settings, host)
    ready(f"serving the live view on http://{host}:{port} (OpenAPI at /docs)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
