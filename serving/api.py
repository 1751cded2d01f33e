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
- ``GET /customers/{id}/history``: the daily activity the store holds for the customer
  (the last ``HISTORY_DAYS`` days before the clock), for the dashboard's chart.
- ``GET /segments``: sizes and profiles of the served segmentation (the retrain's
  assignments, which look-ups serve), and how customers moved from the version before
  it (from the registry).
- ``GET /models``: the model versions the store serves, with their metrics and gate
  results where the registry is readable (and the churn ROC and reliability points).
- ``GET /health``: the stream clock, the last batch and its age, events/s and Kafka lag
  (``serving.health``); 503 when the store is missing, has no clock yet, or its last
  write is older than ``PULSE_API_STALE_SECONDS``.
- ``GET /metrics``: Prometheus text (``serving.metrics``).
- ``GET /``: the dashboard (``serving/dashboard``: a static page over this API).
- ``GET /openapi.json``, ``GET /docs``: the OpenAPI document and its page.

Who may read it: the server binds ``PULSE_API_HOST`` (127.0.0.1 by default) and refuses
to start on any other address without ``PULSE_API_TOKEN``; with a token, every data
endpoint (customers, history, at-risk, segments, models, health, metrics) needs
``Authorization: Bearer <token>`` (401 otherwise). The dashboard's page and scripts, and
the OpenAPI document, hold no data and are open; the page asks for the token. CORS is
off. A missing store is a 503 with one line; the server keeps serving after every bad
request. A look-up reads one key: only ``/at-risk`` scans (and keeps its answer per
clock), so several servers (``--workers``, or separate processes) can share one Redis.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path as PathLib
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, StringConstraints

from runtime.errors import PulseError
from runtime.settings import Settings, settings_env
from serving import read
from serving.health import LagReader, status
from serving.lookups import Lookups
from serving.metrics import CONTENT_TYPE, Metrics, TimedRequests
from serving.online import OnlineStore

MAX_BATCH = 1_000  # ids per POST /customers
MAX_AT_RISK = 1_000  # n of GET /at-risk
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"  # printable, 1 to 256 characters
DASHBOARD = PathLib(__file__).parent / "dashboard"  # index.html, app.js, style.css

log = logging.getLogger(__name__)


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


def model_entry(settings: Settings, name: str, version: str | None) -> dict[str, Any]:
    """A served model version: its metrics and gate from the registry (None where the
    registry is not readable from this machine), the churn curves, the served strategy."""
    from storage import registry

    entry: dict[str, Any] = {"version": version}
    if version is None:
        return entry
    try:
        meta = registry.read_meta(settings, name, version)
    except Exception as exc:  # a disk's OSError, bad JSON, or an object store unreachable now
        log.warning("serving: the registry's %s %s is not readable here: %s", name, version, exc)
        return entry | {"metrics": None}
    entry |= {"metrics": meta.get("metrics"), "gate": meta.get("gate"),
              "window": meta.get("window")}  # fmt: skip
    if name == "churn":
        entry |= {"roc": meta.get("roc"), "reliability": meta.get("reliability")}
    if name == "recommendations":
        entry["served"] = meta.get("served")
    return entry


def segments_of(settings: Settings, version: str) -> dict[str, Any]:
    """A segmentation version's sizes and profiles, and the migration from the version
    that was CURRENT when it was trained (``batch.segments.stability``)."""
    from storage import registry

    try:
        meta = registry.read_meta(settings, "segments", version)
    except Exception as exc:  # as in model_entry; a 503 of one line, not a 500
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PulseError(f"segments {version}: the registry is not readable here ({why})") from exc
    moves = meta.get("stability") or {}
    return {
        "version": version,
        "k": meta["params"]["k"],
        "silhouette": meta["metrics"]["silhouette"],
        "segments": meta["profile"],
        "previous_version": moves.get("previous_version"),
        "customers_in_both": moves.get("customers_in_both"),
        "adjusted_rand_index": moves.get("adjusted_rand_index"),
        "migration": moves.get("migration") or [],
    }


def create_app(settings: Settings) -> FastAPI:
    """The API over ``settings``' online store."""
    app = FastAPI(
        title="Pulse live view",
        description="Customer features, churn, value at risk, segments and recommendations, "
        "as of the stream clock.",
        version="1",
    )
    readers = Readers(settings)
    lookups = Lookups(lambda: read.open_reader(settings))  # look-ups, batched on a thread
    lags = LagReader(settings)
    token = token_of(settings)

    def scraped() -> dict[str, Any] | None:
        try:
            return status(settings, readers.get().meta(), lags)
        except PulseError:
            return None  # no store yet: only the server's own figures

    metrics = Metrics(scraped)
    # The at-risk lists (per n and order) of the store as it is now: a scan each, kept
    # until the clock, a batch, a write or a model version moves
    lists: dict[tuple[int, str], list[dict[str, Any]]] = {}
    lists_of: list[Any] = [None]  # the store state the lists were scanned at

    async def authorise(request: Request) -> None:  # async: no thread hop per request
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
    async def customer(customer_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> dict[str, Any]:
        """One customer's live view row (as ``pulse view ID --json``)."""
        row = (await lookups.rows([customer_id]))[customer_id]
        if row is None:
            raise HTTPException(404, f"unknown customer {customer_id!r}")
        return row

    @app.post("/customers", dependencies=guarded)
    async def customers(body: Ids) -> dict[str, Any]:
        """Up to ``MAX_BATCH`` customers' rows in one call."""
        if len(body.ids) > MAX_BATCH:
            raise HTTPException(413, f"at most {MAX_BATCH} ids per call, got {len(body.ids)}")
        found = await lookups.rows(body.ids)
        return {
            "customers": [row for row in (found[i] for i in body.ids) if row is not None],
            "unknown": [i for i in body.ids if found[i] is None],
        }

    @app.get("/at-risk", dependencies=guarded)
    def at_risk(
        n: Annotated[int, Query(ge=1, le=MAX_AT_RISK)] = 20,
        order: Annotated[str, Query(pattern="^(value|probability)$")] = "value",
    ) -> dict[str, Any]:
        """The ``n`` customers with the most value at risk (or churn probability)."""
        store = readers.get()
        meta = store.meta()
        now = (meta.get("clock_us"), meta.get("last_batch"), meta.get("written_at"),
               str(meta.get("versions")))  # fmt: skip
        if now != lists_of[0]:
            lists.clear()
            lists_of[0] = now
        if (n, order) not in lists:
            lists[n, order] = read.at_risk(settings, n, order == "probability", store=store)
        return {"order": order, "rows": [read.jsonable(r) for r in lists[n, order]]}

    @app.get("/customers/{customer_id}/history", dependencies=guarded)
    def history(customer_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> dict[str, Any]:
        """The customer's daily activity the store holds (the chart's data)."""
        found, meta = readers.get().get_many([customer_id])  # the record and its clock
        if customer_id not in found:
            raise HTTPException(404, f"unknown customer {customer_id!r}")
        return read.history(found[customer_id], meta)

    @app.get("/segments", dependencies=guarded)
    def segments() -> dict[str, Any]:
        """The served segmentation: sizes, profiles, migration from the version before."""
        version = (readers.get().meta().get("versions") or {}).get("segments")
        if version is None:
            raise HTTPException(404, "no segmentation is served yet (no CURRENT version)")
        return segments_of(settings, version)

    @app.get("/models", dependencies=guarded)
    def models() -> dict[str, Any]:
        """The versions the store serves, with their metrics and gate where readable."""
        versions = readers.get().meta().get("versions") or {}
        return {name: model_entry(settings, name, version) for name, version in versions.items()}

    @app.get("/health", dependencies=guarded)
    def health() -> JSONResponse:
        """The stream clock, last batch, rates and Kafka lag; 503 when stale or missing."""
        body = status(settings, readers.get().meta(), lags)
        return JSONResponse(body, status_code=200 if body["ok"] else 503)

    @app.get("/metrics", dependencies=guarded, response_class=PlainTextResponse)
    def prometheus() -> Response:
        """Prometheus text: request latencies, stream rates, lag, model versions."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html")

    app.mount("/static", StaticFiles(directory=DASHBOARD), name="static")
    app.add_middleware(TimedRequests, metrics=metrics)
    return app


def _listen_with_nodelay() -> None:
    """With workers, uvicorn binds the shared listener itself with protocol 0, so asyncio
    never sets TCP_NODELAY on the connections it accepts and every keep-alive response
    waits for a delayed ACK: 45 ms a request, 20 requests/s (uvicorn issue 3149). The
    listener is re-opened as IPPROTO_TCP on the same descriptor."""
    import socket

    import uvicorn.config

    bind = uvicorn.config.Config.bind_socket
    if getattr(bind, "pulse_nodelay", False):
        return

    def bind_tcp(self: uvicorn.config.Config) -> socket.socket:
        sock = bind(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                                 fileno=sock.detach())  # fmt: skip
            sock.set_inheritable(True)
        return sock

    bind_tcp.pulse_nodelay = True  # type: ignore[attr-defined]
    uvicorn.config.Config.bind_socket = bind_tcp  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """The app over the settings in the environment (each ``--workers`` process's)."""
    from runtime.settings import load_settings

    return create_app(load_settings())


def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int = 1,
    ready: Callable[[str], None] = print,
) -> None:
    """Run the API with uvicorn until interrupted. ``workers`` > 1: that many processes
    on one port (uvicorn's), each reading the store on its own; their request figures
    are summed in ``/metrics`` through a temporary PROMETHEUS_MULTIPROC_DIR."""
    import uvicorn

    check_exposure(settings, host)
    ready(f"serving the live view on http://{host}:{port} (dashboard at /, OpenAPI at /docs)")
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    _listen_with_nodelay()
    # Each worker builds its settings from the environment (``app_from_env``): what the
    # command line set (``--data-root s3://...``, ``--bootstrap``) is passed on there too
    os.environ.update(settings_env(settings))
    with tempfile.TemporaryDirectory(prefix="pulse-metrics-") as shared:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
        uvicorn.run("serving.api:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level="warning")  # fmt: skip
