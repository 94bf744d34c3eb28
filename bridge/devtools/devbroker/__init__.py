"""Throwaway Kafka brokers on loopback ports, for the tests and `make run` (dev tooling only).

`KafkaCluster` runs Apache Kafka (KRaft, 1 or 3 nodes, optional SASL/TLS/ACLs) from the jars
that `make kafka` resolves (also `make run`'s broker); `TansuBroker` runs tansu, `make run`'s
broker where Java or those jars are missing.
"""

from bridge.devtools.devbroker._local import (
    DevBrokerError,
    create_topics,
    free_port,
    probe_metadata,
)
from bridge.devtools.devbroker.kafka import KafkaCluster, KafkaNode, KafkaTls
from bridge.devtools.devbroker.tansu import TansuBroker, resolve_tansu_binary

__all__ = [
    "DevBrokerError",
    "KafkaCluster",
    "KafkaNode",
    "KafkaTls",
    "TansuBroker",
    "create_topics",
    "free_port",
    "probe_metadata",
    "resolve_tansu_binary",
]
