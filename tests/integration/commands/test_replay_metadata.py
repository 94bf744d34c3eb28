"""`replay` tells a broker that drops commit metadata (tansu, see tests/integration/test_tansu.py)
from a group whose progress another client wrote: on Apache Kafka, which keeps metadata, such a
group is still "another selection", and the check leaves the group as it found it.
"""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Consumer, TopicPartition

from bridge.devtools.devbroker import create_topics
from bridge.publisher import TopicNames
from tests.integration.commands.clikit import command_env, run_cli
from tests.integration.commands.test_replay import park, webhook_letter

pytestmark = pytest.mark.integration


def _commit(bootstrap: str, group: str, tp: TopicPartition) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[tp], asynchronous=False)
    finally:
        consumer.close()


def _committed(bootstrap: str, group: str, tp: TopicPartition) -> TopicPartition:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        (found,) = consumer.committed([tp], timeout=10)
        return found
    finally:
        consumer.close()


async def test_progress_another_client_committed_is_still_another_selection(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    dlq = TopicNames(topic_prefix).dlq
    group = f"{topic_prefix}.someone-else"
    await create_topics(kafka_bootstrap, [dlq], partitions=1)
    await asyncio.to_thread(park, kafka_bootstrap, topic_prefix, [webhook_letter(8001, 361)])
    await asyncio.to_thread(_commit, kafka_bootstrap, group, TopicPartition(dlq, 0, 1))

    env = command_env(kafka_bootstrap, topic_prefix)
    ran = await run_cli("replay", "--from", "dlq", "--group", group, env=env)

    assert ran.code == 2, ran
    assert "another selection (not written by a replay)" in ran.stderr, ran
    assert "does not keep the metadata" not in ran.stderr, ran
    after = await asyncio.to_thread(_committed, kafka_bootstrap, group, TopicPartition(dlq, 0))
    assert (after.offset, after.metadata or "") == (1, ""), after
