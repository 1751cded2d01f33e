"""Case 3: a three-broker KRaft cluster losing a broker (the leader of partition 0) mid-replay."""

from __future__ import annotations

import random
import time

from pulse.chaos import lab
from pulse.chaos.cases.common import CaseResult, Context
from pulse.chaos.cases.mid_replay import LATENESS, after_fault, start_then_replay
from runtime.errors import PulseError
from runtime.settings import Settings


def _leader_of(settings: Settings, partition: int) -> int:
    """The node id leading ``partition`` of the case's topic."""
    from runtime.kafka_admin import admin_client

    topic = settings.topic_transactions
    meta = admin_client(settings).list_topics(topic, timeout=10).topics[topic]
    return int(meta.partitions[partition].leader)


def cluster_node_kill(ctx: Context) -> CaseResult:
    """A local three-node KRaft cluster (RF 3, min ISR 2, acks=all), one node SIGKILLed."""
    from pulse.local.cluster import Cluster

    n = ctx.small
    result = CaseResult("3 cluster node SIGKILL", "1 of 3 brokers SIGKILLed (RF 3, min ISR 2)")
    root = ctx.root / "case3"
    rng = random.Random(ctx.seed + 3)
    ports = [(lab.free_port(), lab.free_port()) for _ in range(3)]
    cluster = Cluster.create(ctx.base.model_copy(update={"broker_heap": "512m"}), root, ports)
    cluster.start()
    try:
        kafka = ctx.base.model_copy(update={"kafka_bootstrap": cluster.bootstrap})
        s = ctx.stream_settings(kafka, "case3", n).model_copy(update=LATENESS)
        lab.create_topic(s, replication=3, config={"min.insync.replicas": "2"})
        stream = lab.Stream(s, root / "stream.log")
        try:
            producer, rest = start_then_replay(ctx, s, stream, n, "case3")
            time.sleep(rng.uniform(5.0, 20.0))  # some way into the paced replay
            if producer.done():
                raise PulseError("the replay ended before the fault: nothing was mid-replay")
            at = stream.progress()
            victim = _leader_of(s, 0)
            cluster.kill(victim)
            ctx.log(f"case 3: node {victim} (leader of partition 0) SIGKILLed at {at:,} read")
            details, note = after_fault(
                ctx, s, stream, producer, rest, "case3", result, "the node died"
            )
        finally:
            stream.stop()
        result.details = {"killed_node": victim, "killed_at_records_read": at, **details}
        result.notes.insert(
            0,
            f"node {victim} (leader of partition 0) killed at {at:,} records read and left "
            f"down; {note} on the other two",
        )
    finally:
        cluster.stop()
    return result
