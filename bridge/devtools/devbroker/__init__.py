"""Throwaway Kafka brokers on loopback ports, for the tests and `make run` (dev tooling only).

`KafkaCluster` runs Apache Kafka (KRaft, 1 or 3 nodes, optional SASL/TLS/ACLs) from the jars
that `make kafka` resolves; `TansuBroker` runs tansu, the one-second broker of `make run`.
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
