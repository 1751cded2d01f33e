"""Topic creation, idempotent, with partitions and retention from settings."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from runtime.errors import PulseError
from runtime.settings import Settings


def admin_client(settings: Settings, timeout_s: float = 10.0) -> AdminClient:
    """An AdminClient that has proven it can reach the cluster, or a clear error."""
    admin = AdminClient(settings.kafka_client_config())
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise PulseError(
            f"Kafka at {settings.kafka_bootstrap} is unreachable ({exc.args[0].str()}): "
            "start it with `pulse broker start` or set PULSE_KAFKA_BOOTSTRAP"
        ) from None
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
