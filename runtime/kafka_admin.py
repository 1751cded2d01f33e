"""Kafka admin: topic creation, each partition's first event, end offsets and lag."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from runtime.errors import PulseError
from runtime.settings import Settings


def refused_login(err: KafkaError) -> bool:
    """True when ``err`` is a refused SASL login, not a broker out of reach.

    librdkafka's code for it is ``_AUTHENTICATION``; some paths only say so in the text
    ("SASL authentication error: Authentication failed ..."), so both count.
    """
    return err.code() == KafkaError._AUTHENTICATION or "authentication" in err.str().lower()


def connection_error(
    settings: Settings, error: KafkaError, reported: Iterable[KafkaError] = ()
) -> PulseError:
    """The one line for a client that could not talk to Kafka: a refused login, or unreachable.

    ``reported``: what the client's ``error_cb`` received, where librdkafka reports a
    refused login (the raised error then only says "transport failure"). The line names
    the SASL user and the settings to check, never the password.
    """
    refused = next((e for e in (*reported, error) if refused_login(e)), None)
    if refused is not None:
        return PulseError(
            f"SASL authentication failed: Kafka at {settings.kafka_bootstrap} refused the login "
            f"of user {settings.kafka_sasl_username!r} ({refused.str()}): check "
            "PULSE_KAFKA_SASL_USERNAME, PULSE_KAFKA_SASL_PASSWORD, PULSE_KAFKA_SASL_MECHANISM"
        )
    return PulseError(
        f"Kafka at {settings.kafka_bootstrap} is unreachable ({error.str()}): "
        "start it with `pulse broker start` or set PULSE_KAFKA_BOOTSTRAP"
    )


def admin_client(settings: Settings, timeout_s: float = 10.0) -> AdminClient:
    """An AdminClient that has proven it can reach the cluster, or a clear error."""
    errors: list[KafkaError] = []  # librdkafka reports a refused login here, not in the raise
    conf = {**settings.kafka_client_config(), "error_cb": errors.append}
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serves the error callbacks
        raise connection_error(settings, exc.args[0], errors) from None
    return admin


def create_topics(settings: Settings, log=print) -> None:  # type: ignore[no-untyped-def]
    """Create the transactions topic if it does not exist; report what exists."""
    admin = admin_client(settings)
    name = settings.topic_transactions
    existing = admin.list_topics(timeout=10).topics
    if name in existing:
        log(f"topic {name}: exists ({len(existing[name].partitions)} partitions)")
        return
    topic = NewTopic(
        name,
        num_partitions=settings.topic_partitions,
        replication_factor=-1,  # the cluster default: 1 locally, 3 on a real cluster
        config={"retention.ms": str(settings.topic_retention_ms)},
    )
    future = admin.create_topics([topic], operation_timeout=30)[name]
    try:
        future.result()
    except KafkaException as exc:
        err = exc.args[0]
        if err.name() != "TOPIC_ALREADY_EXISTS":
            raise PulseError(f"creating topic {name} failed: {err.str()}") from None
    log(f"topic {name}: created ({settings.topic_partitions} partitions)")


def first_event_times(settings: Settings, timeout_s: float = 10.0) -> dict[int, datetime]:
    """The ``event_time`` of the first record still in each partition of the topic.

    Reads one record per partition with a throwaway consumer that commits nothing.
    Records that are not JSON with an ISO ``event_time`` are skipped (the stream
    quarantines them); an empty partition is absent from the result.
    """
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic_transactions
    meta = admin_client(settings).list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        raise PulseError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap}")
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"pulse-peek-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    found: dict[int, datetime] = {}
    try:
        for partition in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high <= low:
                continue
            for offset in range(low, min(high, low + 100)):
                consumer.assign([TopicPartition(topic, partition, offset)])
                msg = consumer.poll(timeout_s)
                if msg is None or msg.error() is not None:
                    break
                when = _event_time(msg.value())
                if when is not None:
                    found[partition] = when
                    break
    finally:
        consumer.close()
    return found


def _event_time(value: bytes | None) -> datetime | None:
    try:
        text = json.loads(value or b"")["event_time"]
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class EndOffsets:
    """The end offset of each partition of some topics, from one long-lived consumer that
    reads only watermarks (the API's lag: these against the stream's last batch)."""

    def __init__(self, settings: Settings, timeout_s: float = 2.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._consumer: Any = None

    def read(self, topics: Iterable[str]) -> dict[str, dict[str, int]]:
        """``{topic: {partition: end offset}}``; KafkaException when the cluster does not
        answer within the timeout."""
        from confluent_kafka import Consumer, TopicPartition

        if self._consumer is None:
            self._consumer = Consumer(
                {**self.settings.kafka_client_config(),
                 "group.id": f"pulse-lag-{uuid.uuid4().hex}", "enable.auto.commit": False}
            )  # fmt: skip
        out: dict[str, dict[str, int]] = {}
        for topic in topics:
            meta = self._consumer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
            if meta is None or meta.error is not None:
                raise KafkaException(f"topic {topic!r} not found")
            out[topic] = {
                str(p): self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=self.timeout_s
                )[1]
                for p in sorted(meta.partitions)
            }
        return out

    def close(self) -> None:
        """Close the consumer (if one was opened)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def lag(end: dict[str, dict[str, int]], read_to: dict[str, dict[str, Any]]) -> int:
    """Records between where a reader is (``read_to``: Spark's end offsets) and the end."""
    return sum(
        max(off - int(read_to.get(topic, {}).get(part, 0)), 0)
        for topic, parts in end.items()
        for part, off in parts.items()
    )
