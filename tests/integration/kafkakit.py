"""Cluster facts and admin work for the tests, through confluent-kafka's AdminClient (a client
independent of the bridge's aiokafka): partition leaders and ISRs, topic configs, ACLs."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)


def admin(bootstrap: str, config: Mapping[str, Any] | None = None) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, **(config or {})})


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> leader node id (-1 while none)."""
    metadata = admin(bootstrap).list_topics(topic, timeout=10)
    return {p: info.leader for p, info in metadata.topics[topic].partitions.items()}


def isrs(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], list[int]]:
    metadata = admin(bootstrap).list_topics(timeout=10)
    return {
        (topic, p): list(info.isrs)
        for topic in topics
        if topic in metadata.topics
        for p, info in metadata.topics[topic].partitions.items()
    }


def wait_fully_replicated(
    bootstrap: str, topics: Iterable[str], replicas: int, within: float = 60.0
) -> None:
    """Until every partition of `topics` has `replicas` in-sync replicas (what a rolling
    restart waits for before it takes the next node down)."""
    wanted = list(topics)
    deadline = time.monotonic() + within
    while True:
        try:
            short = {tp: isr for tp, isr in isrs(bootstrap, wanted).items() if len(isr) < replicas}
        except Exception as exc:  # a node is still coming up: ask again
            short = {("?", -1): [str(exc)]}  # type: ignore[list-item]
        if not short:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"under-replicated after {within:g}s: {short}")
        time.sleep(0.25)


def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    client = admin(bootstrap)  # kept alive until the answer: its futures die with it
    (future,) = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {name: entry.value for name, entry in future.result(timeout=10).items()}


def create_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication: int,
    config: Mapping[str, str] | None = None,
) -> None:
    new = [NewTopic(t, partitions, replication, config=dict(config or {})) for t in topics]
    client = admin(bootstrap)
    for future in client.create_topics(new, operation_timeout=20).values():
        future.result(timeout=30)


def allow(
    bootstrap: str,
    principal: str,
    operations: Iterable[AclOperation],
    resource: ResourceType,
    name: str,
    *,
    prefixed: bool = False,
) -> None:
    """ALLOW `principal` (e.g. "User:bridge") `operations` on a resource, from any host."""
    pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
    bindings = [
        AclBinding(resource, name, pattern, principal, "*", op, AclPermissionType.ALLOW)
        for op in operations
    ]
    client = admin(bootstrap)
    for future in client.create_acls(bindings, request_timeout=20).values():
        future.result(timeout=30)
