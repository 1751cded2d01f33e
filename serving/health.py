"""The stream's health as a reader sees it: clock, last batch, rates and Kafka lag.

Read from the online store's meta (``serving.live.LiveView`` writes the clock, the last
batch and Spark's progress report of it) and, for the lag, from Kafka's end offsets now
against the offsets the stream's last batch read to. ``GET /health``, ``GET /metrics``
and the dashboard all show this one dictionary.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from runtime.settings import Settings
from serving import read

LAG_CACHE_SECONDS = 1.0  # end offsets are read at most once a second per server
LAG_RETRY_SECONDS = 5.0  # after a failed read (Kafka down), wait this long before the next


class LagReader:
    """Records the stream has not read yet: Kafka's end offsets (cached for a second)
    against the stream's last batch's end offsets."""

    def __init__(self, settings: Settings) -> None:
        from runtime.kafka_admin import EndOffsets

        self._offsets = EndOffsets(settings)
        self._lock = threading.Lock()
        self._end: dict[str, dict[str, int]] | None = None
        self._error: str | None = None
        self._read_at = -1e9

    def lag(self, read_to: dict[str, Any] | None) -> tuple[int | None, str | None]:
        """(lag in records, None) or (None, why not): no batch read yet, or Kafka down."""
        if not read_to:
            return None, "the stream has reported no batch yet"
        from runtime.kafka_admin import lag

        with self._lock:
            wait = LAG_RETRY_SECONDS if self._error else LAG_CACHE_SECONDS
            if time.monotonic() - self._read_at > wait:
                try:
                    self._end, self._error = self._offsets.read(read_to), None
                except Exception as exc:  # KafkaException, or a timeout: reported, not raised
                    self._end, self._error = None, f"Kafka end offsets unreadable: {exc}"
                self._read_at = time.monotonic()
            if self._end is None:
                return None, self._error
            return lag(self._end, read_to), None

    def close(self) -> None:
        """Close the Kafka consumer."""
        self._offsets.close()


def status(settings: Settings, meta: dict[str, Any], lags: LagReader | None) -> dict[str, Any]:
    """The stream's health from the store's meta: ``ok`` is False when there is no clock
    yet or the last write is older than ``PULSE_API_STALE_SECONDS``."""
    written = meta.get("written_at")
    age = None if written is None else max(time.time() - float(written), 0.0)
    clock = read.clock_of(meta)
    stream = meta.get("stream") or {}
    lag, lag_error = (None, "no Kafka lag reader") if lags is None else lags.lag(
        stream.get("end_offsets")
    )
    return {
        "ok": clock is not None and age is not None and age <= settings.api_stale_seconds,
        "clock": None if clock is None else clock.isoformat(),
        "last_batch": meta.get("last_batch"),
        "last_write_age_s": age,
        "stale_after_s": settings.api_stale_seconds,
        "events_per_s": stream.get("processed_per_s"),
        "input_per_s": stream.get("input_per_s"),
        "batch_seconds": stream.get("batch_seconds"),
        "events_total": stream.get("events_total"),
        "kafka_lag": lag,
        "kafka_lag_error": lag_error,
        "versions": meta.get("versions") or {},
    }
