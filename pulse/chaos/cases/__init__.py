"""The campaign's cases: each injects one fault into real parts and measures the outcome.

One module per case, ``case<N>_<subject>``; ``common`` holds what every case shares (its
``CaseResult`` row, its ``Context``, the lake and served-answer checks), ``mid_replay``
the fault-mid-replay steps of cases 2 and 3, and ``case6_compare`` case 6's comparison
of a cluster run with local mode. ``CASES`` is the registry `pulse chaos` runs from.

A case returns a ``CaseResult``: what it produced into Kafka, what the stream accepted
(valid records whose event is in the lake), quarantined and wrote to the lake, whether
the published features equal the batch recompute over the lake, and what was lost or
doubled. A case that cannot finish (a component that dies on its own, a time-out) is a
result with its error, and counts as a failure.
"""

from __future__ import annotations

from collections.abc import Callable

from pulse.chaos.cases.case1_stream_kills import stream_kills
from pulse.chaos.cases.case2_broker_kill import broker_kill
from pulse.chaos.cases.case3_cluster_node_kill import cluster_node_kill
from pulse.chaos.cases.case4_replay_twice import replay_twice
from pulse.chaos.cases.case5_bad_records import (
    EXPECTED_REASON,
    bad_records,
    bad_records_at,
    quarantine_kinds,
)
from pulse.chaos.cases.case6_compare import FLOAT_REL, ORDER_SENSITIVE, compare_tables, same_figures
from pulse.chaos.cases.case6_spark_cluster import spark_cluster
from pulse.chaos.cases.case7_sasl_scram import sasl_scram
from pulse.chaos.cases.case8_object_store import object_store_loop
from pulse.chaos.cases.case9_store_outage import store_outage
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context

CASES: dict[str, tuple[str, Callable[[Context], CaseResult | list[CaseResult]]]] = {
    "1": ("the stream SIGKILLed at random points, restarted on its checkpoint", stream_kills),
    "2": ("the broker SIGKILLed mid-replay and restarted", broker_kill),
    "3": ("a three-broker KRaft cluster losing a broker mid-replay", cluster_node_kill),
    "4": ("the whole dataset replayed a second time", replay_twice),
    "5": ("bad records at 1 % and 10 %, future and far-past dates", bad_records),
    "6": ("the stream and the retrain on a Spark standalone cluster", spark_cluster),
    "7": ("a SASL/SCRAM broker: right and wrong credentials", sasl_scram),
    "8": ("the whole loop with the data root in an object store, on a cluster", object_store_loop),
    "9": ("the stream's object store down for a minute mid-replay", store_outage),
}

__all__ = [
    "CASES",
    "WAIT_S",
    "CaseResult",
    "Context",
    "stream_kills",
    "broker_kill",
    "cluster_node_kill",
    "replay_twice",
    "EXPECTED_REASON",
    "bad_records",
    "bad_records_at",
    "quarantine_kinds",
    "FLOAT_REL",
    "ORDER_SENSITIVE",
    "compare_tables",
    "same_figures",
    "spark_cluster",
    "sasl_scram",
    "object_store_loop",
    "store_outage",
]
