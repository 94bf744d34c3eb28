"""Cluster metadata, and coordinators, asked of every broker at once: the first answer wins.

aiokafka asks one broker at a time, in random order, and waits the whole request timeout for
each: a hung broker (SIGSTOPped, its connections open but silent) holds every metadata
refresh, so the producer keeps sending to leaders Kafka has already replaced, and the
bridge's health check times out for every partition. Asked of all brokers together, a
refresh costs the round trip of the quickest live broker, whatever one of them does.
FindCoordinator likewise: aiokafka asks it of one random broker, and a lookup that picks the
frozen one costs a request timeout (a transaction's commit, or a group join, waits on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Collection
from typing import Any, Final

import structlog
from aiokafka import errors
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError, NodeNotReadyError, RequestTimedOutError
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.metadata import MetadataRequest

log = structlog.get_logger(__name__)

_BOOTSTRAP: Final = ("bootstrap", ConnectionGroup.DEFAULT)
# What the replacement relies on; checked when installing, so that another aiokafka version
# keeps its own behaviour (slower failover) instead of breaking.
_NEEDED: Final = ("_metadata_update", "coordinator_lookup", "_get_conn", "_conns", "cluster")


# Metadata requests go on connections of their own. A broker answers the requests of one
# connection in order, one at a time: on the producer's connections a metadata request waits
# behind produce requests that wait (acks=all) for a follower Kafka has not yet dropped from
# the ISR, so while one broker of three is frozen every live broker would answer it only
# after the ISR shrank, and the health check would time out for every partition.
_METADATA_GROUP: Final = "metadata"


async def _ask(client: AIOKafkaClient, node_id: Any, request: Any) -> Any:
    if node_id == "bootstrap":
        conn = await client._get_conn(node_id)
    else:
        conn = await client._get_conn(node_id, group=_METADATA_GROUP)
    if conn is None:
        raise KafkaError(f"no connection to node {node_id}")
    return await conn.send(request)


async def _abandon(pending: Collection[asyncio.Future[Any]]) -> None:
    """Cancel the requests whose answers are no longer wanted, and let them end."""
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def first_answer(
    client: AIOKafkaClient, cluster_metadata: ClusterMetadata, topics: Any
) -> bool:
    """aiokafka's `_metadata_update`, asking every known broker at once.

    The first answer that lists brokers updates `cluster_metadata`; the other requests are
    abandoned. Each broker is waited for at most the client's request timeout, as before.
    """
    request = MetadataRequest(list(topics) if topics else None)
    node_ids: list[Any] = [broker.nodeId for broker in client.cluster.brokers()]
    if _BOOTSTRAP in client._conns:
        node_ids.append("bootstrap")
    pending = {asyncio.ensure_future(_ask(client, node_id, request)) for node_id in node_ids}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled() or task.exception() is not None:
                    continue
                metadata = task.result()
                # No brokers: a topic being created; aiokafka's own answer to that.
                if not metadata.brokers:
                    return False
                cluster_metadata.update_metadata(metadata)
                if _BOOTSTRAP in client._conns and len(client.cluster.brokers()):
                    client._conns.pop(_BOOTSTRAP).close()
                return True
    finally:
        await _abandon(pending)
    cluster_metadata.failed_update(None)
    return False


async def find_coordinator(client: AIOKafkaClient, key: str, coordinator_type: int) -> int:
    """The coordinator of `key` (0: a group, 1: a transactional id), asked of every known
    broker at once: the first answer without an error counts.

    When none does, raises Kafka's own answer if a broker gave one (e.g.
    CoordinatorNotAvailableError while a coordinator moves), else RequestTimedOutError or
    NodeNotReadyError: the errors aiokafka's callers retry.
    """
    request = FindCoordinatorRequest(key, coordinator_type)
    node_ids: list[Any] = [broker.nodeId for broker in client.cluster.brokers()]
    if not node_ids:
        node_ids = [client.get_random_node()]
    pending = {asyncio.ensure_future(_ask(client, node_id, request)) for node_id in node_ids}
    answered: KafkaError | None = None
    timed_out = False
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None:
                    timed_out = timed_out or isinstance(exc, TimeoutError | RequestTimedOutError)
                    continue
                response = task.result()
                error = errors.for_code(response.error_code)
                if error is errors.NoError:
                    coordinator: int = response.coordinator_id
                    return coordinator
                answered = answered or error()
    finally:
        await _abandon(pending)
    if answered is not None:
        raise answered
    if timed_out:
        raise RequestTimedOutError(f"FindCoordinator {key!r}: no broker answered in time")
    raise NodeNotReadyError(f"FindCoordinator {key!r}: no broker reachable")


def ask_every_broker(client: AIOKafkaClient) -> None:
    """Make `client` (a producer's, consumer's or admin client's) refresh its metadata from
    the first broker that answers, and fetch_all_metadata() too; and look coordinators up
    the same way (a producer's transactions, a consumer's group)."""
    if not all(hasattr(client, name) for name in _NEEDED):
        log.warning("metadata_first_answer_unavailable", client=type(client).__name__)
        return

    async def update(self: AIOKafkaClient, cluster_metadata: ClusterMetadata, topics: Any) -> bool:
        return await first_answer(self, cluster_metadata, topics)

    async def lookup(self: AIOKafkaClient, coordinator_type: int, coordinator_key: str) -> int:
        return await find_coordinator(self, coordinator_key, int(coordinator_type))

    client._metadata_update = types.MethodType(update, client)
    client.coordinator_lookup = types.MethodType(lookup, client)
