"""``GET /metrics``: the API's and the stream's figures in Prometheus' text format.

Two kinds of figures:

- the server's own: ``pulse_api_request_seconds`` (a latency histogram per endpoint,
  with its ``_count`` per status class in ``pulse_api_requests_total``);
- the stream's, read from the online store at scrape time (``serving.health.status``):
  clock, events, events/s, the last batch's duration, Kafka lag, the age of the last
  write, and the model versions served (``pulse_model_info``).

With ``pulse serve --workers N`` the workers are separate processes: the server's own
figures are then kept in ``PROMETHEUS_MULTIPROC_DIR`` (set by ``serving.api.serve``) and
summed over the workers at scrape, as prometheus_client documents.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]  # fmt: skip


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class StreamCollector(Collector):
    """The stream's figures, from ``status()`` (``serving.health.status``) at each scrape."""

    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        """The gauges, the events counter and the model versions, as of now."""
        s = self.status()
        if s is None:  # no store yet
            return
        gauges = {
            "pulse_stream_clock_seconds": ("The stream clock (Unix seconds)", _epoch(s["clock"])),
            "pulse_stream_events_per_second": ("Events/s Spark processed in the last batch",
                                               s["events_per_s"]),
            "pulse_stream_batch_duration_seconds": ("The last micro-batch's duration",
                                                    s["batch_seconds"]),
            "pulse_stream_last_batch": ("The last micro-batch id in the store", s["last_batch"]),
            "pulse_kafka_lag_records": ("Records in Kafka the stream has not read",
                                        s["kafka_lag"]),
            "pulse_view_write_age_seconds": ("Seconds since the stream last wrote the view",
                                             s["last_write_age_s"]),
        }  # fmt: skip
        for name, (text, value) in gauges.items():
            if value is not None:
                yield GaugeMetricFamily(name, text, value=float(value))
        if s["events_total"] is not None:
            yield CounterMetricFamily(
                "pulse_stream_events", "Events the running stream has read since it started",
                value=float(s["events_total"]),
            )  # fmt: skip
        info = GaugeMetricFamily(
            "pulse_model_info", "The model versions served (1 per name)", labels=["name", "version"]
        )
        for name, version in sorted(s["versions"].items()):
            info.add_metric([name, str(version)], 1.0)
        yield info


def _epoch(iso: str | None) -> float | None:
    from datetime import datetime

    return None if iso is None else datetime.fromisoformat(iso).timestamp()


class Metrics:
    """The server's registry: request latencies, plus the stream collector."""

    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self.registry = CollectorRegistry()
        own = None if _multiprocess() else self.registry  # multiprocess: kept in files
        self.latency = Histogram(
            "pulse_api_request_seconds", "Time to answer a request, per endpoint",
            ["endpoint"], buckets=BUCKETS, registry=own,
        )  # fmt: skip
        self.requests = Counter(
            "pulse_api_requests", "Requests answered, per endpoint and status class",
            ["endpoint", "status"], registry=own,
        )  # fmt: skip
        self.stream = StreamCollector(status)
        self.registry.register(self.stream)

    def render(self) -> bytes:
        """The text exposition of every figure."""
        if not _multiprocess():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.stream)
        return generate_latest(registry)


class TimedRequests:
    """ASGI middleware: every HTTP request's time and status, by its route's path template
    (``/customers/{customer_id}``, not the id), into ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Time the request; count it by endpoint and status class."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = getattr(scope.get("route"), "path", "other")
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(endpoint, f"{status // 100}xx").inc()
