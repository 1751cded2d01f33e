"""Helpers for the streaming tests: hand-made events and a real Kafka producer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runtime.settings import Settings
from schemas.transaction import encode, make_event_id, now_utc


def event(customer: str, day: str, price: float, n: int = 0, **extra: Any) -> dict[str, Any]:
    """One valid contract event on ``day`` (YYYY-MM-DD[Thh:mm]) with a deterministic id."""
    when = datetime.fromisoformat(day).replace(tzinfo=UTC)
    base = {
        "event_id": make_event_id("synthetic", customer, day, price, n),
        "event_time": when,
        "customer_id": customer,
        "article_id": f"a{n}",
        "quantity": 1,
        "unit_price": price,
        "sales_channel_id": 2 if n % 2 else 1,
        "source": "synthetic",
        "produced_at": now_utc(),
    }
    return {**base, **extra}


def produce(settings: Settings, values: list[bytes | dict[str, Any]]) -> None:
    """Send events (dicts are encoded) or raw bytes to the topic, keyed, and flush."""
    from confluent_kafka import Producer

    producer = Producer({**settings.kafka_client_config(), "linger.ms": 5})
    for v in values:
        if isinstance(v, dict):
            producer.produce(settings.topic_transactions, key=v["customer_id"], value=encode(v))
        else:
            producer.produce(settings.topic_transactions, value=v)
    if producer.flush(30) != 0:
        raise RuntimeError("Kafka producer did not flush")
