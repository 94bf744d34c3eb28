"""Metadata asked of every broker at once (bridge/metadata.py): a hung broker costs nothing
when another answers; every broker failing is a failed update, as in aiokafka."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
)

from bridge.metadata import ask_every_broker, find_coordinator, first_answer


@dataclass
class Broker:
    nodeId: int  # aiokafka's BrokerMetadata field name


@dataclass
class Answer:
    brokers: list[Broker]


@dataclass
class FoundCoordinator:
    error_code: int
    coordinator_id: int


class Conn:
    def __init__(self, behaviour: str, brokers: list[Broker]) -> None:
        self.behaviour, self.brokers = behaviour, brokers
        self.asked = 0
        self.cancelled = False

    async def send(self, request: Any) -> Answer:
        self.asked += 1
        if self.behaviour == "hung":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.behaviour == "broken":
            raise KafkaConnectionError()
        if self.behaviour == "slow":
            raise TimeoutError()
        if self.behaviour.startswith("coordinator"):
            # FindCoordinator: "coordinator=3" names node 3, "coordinator!15" answers error 15.
            code, node = (15, -1) if "!" in self.behaviour else (0, int(self.behaviour[12:]))
            return FoundCoordinator(code, node)  # type: ignore[return-value]
        return Answer(self.brokers)


@dataclass
class Cluster:
    nodes: list[Broker]

    def brokers(self) -> list[Broker]:
        return self.nodes


@dataclass
class Client:
    conns: dict[int, Conn]
    cluster: Cluster
    _conns: dict[Any, Any] = field(default_factory=dict)
    groups: list[Any] = field(default_factory=list)

    async def _get_conn(self, node_id: int, *, group: Any = 0) -> Conn:
        self.groups.append(group)
        return self.conns[node_id]


@dataclass
class Target:
    updates: list[Answer] = field(default_factory=list)
    failed: int = 0

    def update_metadata(self, metadata: Answer) -> None:
        self.updates.append(metadata)

    def failed_update(self, error: object) -> None:
        self.failed += 1


def _client(*behaviours: str) -> Client:
    brokers = [Broker(n) for n in range(1, len(behaviours) + 1)]
    conns = {b.nodeId: Conn(kind, brokers) for b, kind in zip(brokers, behaviours, strict=True)}
    return Client(conns, Cluster(brokers))


async def test_a_hung_broker_does_not_hold_the_answer_of_a_live_one() -> None:
    client = _client("hung", "broken", "live")
    target = Target()
    async with asyncio.timeout(1):
        assert await first_answer(client, target, None)  # type: ignore[arg-type]
    assert len(target.updates) == 1
    assert all(conn.asked == 1 for conn in client.conns.values()), "every broker asked at once"
    assert client.conns[1].cancelled, "the hung request is abandoned, not left running"
    # Never on the connections that carry produce requests (a broker answers one connection's
    # requests in order: behind a produce waiting for acks=all, metadata would wait too).
    assert client.groups == ["metadata"] * 3


async def test_no_answer_at_all_is_a_failed_update() -> None:
    client = _client("broken", "broken")
    target = Target()
    assert not await first_answer(client, target, ["t"])  # type: ignore[arg-type]
    assert (target.updates, target.failed) == ([], 1)


async def test_installed_on_aiokafkas_own_client() -> None:
    # The pinned aiokafka has what the replacement relies on: installing it replaces the
    # client's own update (another version would keep its own and log a warning).
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    client: Any = producer.client
    own, own_lookup = client._metadata_update, client.coordinator_lookup
    ask_every_broker(client)
    assert client._metadata_update != own
    assert client._metadata_update.__func__.__name__ == "update"
    assert client.coordinator_lookup != own_lookup
    assert client.coordinator_lookup.__func__.__name__ == "lookup"


async def test_a_coordinator_is_found_whatever_a_hung_broker_does() -> None:
    """aiokafka asks one random broker: picking the frozen one cost a request timeout, and a
    transaction's commit waited on it."""
    client = _client("hung", "coordinator=3", "coordinator=3")
    async with asyncio.timeout(1):
        found = await find_coordinator(client, "p.intake-0", 1)  # type: ignore[arg-type]
    assert found == 3
    assert all(conn.asked == 1 for conn in client.conns.values()), "every broker asked at once"
    assert client.conns[1].cancelled
    assert client.groups == ["metadata"] * 3


async def test_kafkas_own_error_is_raised_before_a_timeout() -> None:
    # While a coordinator moves, live brokers say so: the caller retries on that error.
    client = _client("slow", "coordinator!15")
    with pytest.raises(CoordinatorNotAvailableError):
        await find_coordinator(client, "g", 0)  # type: ignore[arg-type]


async def test_no_answer_raises_what_aiokafkas_callers_retry() -> None:
    for behaviours, expected in (
        (("slow", "broken"), RequestTimedOutError),
        (("broken", "broken"), NodeNotReadyError),
    ):
        client = _client(*behaviours)
        with pytest.raises(expected) as raised:
            await find_coordinator(client, "g", 0)  # type: ignore[arg-type]
        assert raised.value.retriable
