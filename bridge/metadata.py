"""Cluster metadata asked of every broker at once: the first answer wins.

aiokafka asks one broker at a time, in random order, and waits the whole request timeout for
each: a hung broker (SIGSTOPped, its connections open but silent) holds every metadata
refresh, so the producer keeps sending to leaders Kafka has already replaced, and the
bridge's health check times out for every partition. Asked of all brokers together, a
refresh costs the round trip of the quickest live broker, whatever one of them does.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from typing import Any, Final

import structlog
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

log = structlog.get_logger(__name__)

_BOOTSTRAP: Final = ("bootstrap", ConnectionGroup.DEFAULT)
# What the replacement relies on; checked when installing, so that another aiokafka version
# keeps its own behaviour (slower failover) instead of breaking.
_NEEDED: Final = ("_metadata_update", "_get_conn", "_conns", "cluster")


# Metadata requests go on connections of their own. A broker answers the requests of one
# connection in order, one at a time: on the producer's connections a metadata request waits
# behind produce requests that wait (acks=all) for a follower Kafka has not yet dropped from
# the ISR, so while one broker of three is frozen every live broker would answer it only
# after the ISR shrank, and the health check would time out for every partition.
_METADATA_GROUP: Final = "metadata"


async def _ask(client: AIOKafkaClient, node_id: Any, request: MetadataRequest) -> Any:
    if node_id == "bootstrap":
        conn = await client._get_conn(node_id)
    else:
        conn = await client._get_conn(node_id, group=_METADATA_GROUP)
    if conn is None:
        raise KafkaError(f"no connection to node {node_id}")
    return await conn.send(request)


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
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    cluster_metadata.failed_update(None)
    return False


def ask_every_broker(client: AIOKafkaClient) -> None:
    """Make `client` (a producer's, consumer's or admin client's) refresh its metadata from
    the first broker that answers, and fetch_all_metadata() too."""
    if not all(hasattr(client, name) for name in _NEEDED):
        log.warning("metadata_first_answer_unavailable", client=type(client).__name__)
        return

    async def update(self: AIOKafkaClient, cluster_metadata: ClusterMetadata, topics: Any) -> bool:
        return await first_answer(self, cluster_metadata, topics)

    client._metadata_update = types.MethodType(update, client)
