"""Sending a replay's records to Kafka, losslessly, and confirming rows as they are delivered.

The producer is idempotent with acks=all, and every delivery report is counted: a
failure is never confirmed, so the resume position stops before it. An unreachable
broker or a missing topic is a one-line ``PulseError`` after a bounded metadata
request, before anything is sent.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from producers.resume import ConfirmedPrefix
from runtime.errors import PulseError
from runtime.kafka_admin import admin_client, connection_error
from runtime.settings import Settings

METADATA_TIMEOUT_S = 5.0  # broker/topic check before producing: fail within seconds
DELIVERY_TIMEOUT_MS = 30_000  # a record not acknowledged by then is a failed delivery

log_kafka = logging.getLogger("pulse.kafka")


def producer_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka settings: lossless (idempotent, acks=all) and batched for throughput."""
    return {
        **settings.kafka_client_config(),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 20,  # small delay buys full batches
        "batch.size": 1_000_000,
        "batch.num.messages": 50_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        "allow.auto.create.topics": False,
        # the Java client's key hashing, so any client puts a customer on the same partition
        "partitioner": "murmur2_random",
        "logger": log_kafka,
    }


def check_topic(producer: Any, settings: Settings) -> int:
    """Number of partitions of the topic; PulseError if the broker or topic is missing."""
    # The producer's own metadata call raises "transport failure" for a refused SASL
    # login too; the admin client tells that apart from a broker out of reach.
    admin_client(settings, timeout_s=METADATA_TIMEOUT_S)
    name = settings.topic_transactions
    try:
        metadata = producer.list_topics(topic=name, timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise connection_error(settings, exc.args[0]) from None
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None or not topic.partitions:
        raise PulseError(
            f"topic {name} does not exist on {settings.kafka_bootstrap}: "
            "create it with `pulse topics create`"
        )
    return len(topic.partitions)


class RowSender:
    """Sends records to the transactions topic, each for a source row, and counts deliveries.

    ``send`` is the one way a record leaves: a full local queue waits for deliveries
    to drain it (backpressure), a record refused before sending (too large) is a
    failed delivery. Each acknowledged record is reported to ``prefix``, which
    confirms a row once all its records are delivered. Fails fast (``check_topic``)
    when the broker or topic is missing.
    """

    def __init__(self, settings: Settings, prefix: ConfirmedPrefix) -> None:
        self.prefix = prefix
        self.delivered = 0
        self.failed = 0
        self.bytes = 0  # value bytes delivered
        self.first_error: str | None = None
        self.producer = Producer(producer_config(settings))
        check_topic(self.producer, settings)
        self.topic = settings.topic_transactions
        self.poll = self.producer.poll  # serves delivery reports
        self._produce = self.producer.produce
        # Which source row a delivery report is for: records in flight by the hash of
        # their value (unique: it holds the event_id and produced_at). One callback for
        # every record, so a record in flight costs no Python object that the garbage
        # collector must walk.
        self._in_flight: dict[int, int] = {}  # hash(value) -> row
        self._same_hash: dict[int, deque[int]] = {}  # rows of later records with that hash
        self._report = self._on_delivery

    def send(self, row: int, key: bytes, value: bytes) -> None:
        """Hand one record of source row ``row`` to the producer; wait while its queue is full."""
        while True:
            try:
                self._produce(self.topic, value, key, on_delivery=self._report)
            except BufferError:  # local queue full: let deliveries drain it
                self.poll(0.05)
                continue
            except KafkaException as exc:  # refused before sending (e.g. too large): a failure
                self._fail(exc.args[0].str())
                return
            digest = hash(value)
            if digest in self._in_flight:
                self._same_hash.setdefault(digest, deque()).append(row)
            else:
                self._in_flight[digest] = row
            return

    def close(self) -> None:
        """Wait for the records in flight (at most the delivery timeout), then close."""
        # flush in short slices so a second Ctrl-C is not needed and deliveries keep counting
        deadline = time.monotonic() + DELIVERY_TIMEOUT_MS / 1000 + 5
        while self.producer.flush(0.5) > 0 and time.monotonic() < deadline:
            pass
        if len(self.producer) == 0:  # close now (not at garbage collection): no late log noise
            self.producer.close()

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        digest = hash(msg.value())
        row = self._in_flight.pop(digest)
        if self._same_hash and digest in self._same_hash:  # an equal value was sent after it
            rows = self._same_hash[digest]
            self._in_flight[digest] = rows.popleft()
            if not rows:
                del self._same_hash[digest]
        if err is not None:
            self._fail(err.str())
            return
        self.delivered += 1
        self.bytes += len(msg)  # the value's length
        self.prefix.delivered(row)

    def _fail(self, error: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or error
