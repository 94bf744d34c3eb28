"""The harness itself: Apache Kafka answers, the readback sees what was written, a killed node
restarts with its records and offsets; tansu (the broker of `make run`) still works."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from bridge.devtools.devbroker import (
    DevBrokerError,
    KafkaCluster,
    TansuBroker,
    create_topics,
    free_port,
    probe_metadata,
)
from tests.integration.readback import consume, consume_async

pytestmark = pytest.mark.integration


def _producer(bootstrap: str) -> AIOKafkaProducer:
    # What the bridge uses: acks=all, idempotent.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )


async def test_produced_records_read_back_in_order(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.harness"
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    count = 300
    producer = _producer(kafka_bootstrap)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic,
                value=str(i).encode(),
                key=f"ticket-{i % 7}".encode(),
                headers=[("event-id", f"e{i}".encode())],
            )
            for i in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

    records = await consume_async(kafka_bootstrap, [topic], min_count=count, timeout=20)

    assert len(records) == count
    assert {r.headers["event-id"] for r in records} == {f"e{i}".encode() for i in range(count)}
    by_key: defaultdict[bytes | None, list[tuple[int, int]]] = defaultdict(list)
    for record in records:
        assert record.value is not None
        by_key[record.key].append((record.partition, int(record.value)))
    for key, placed in by_key.items():
        assert len({partition for partition, _ in placed}) == 1, f"{key!r} spans partitions"
        values = [value for _, value in placed]
        assert values == sorted(values), f"{key!r} out of order"


async def test_read_to_end_without_min_count(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.to-end"
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    producer = _producer(kafka_bootstrap)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, value=f"v{i}".encode(), partition=i % 2)
    finally:
        await producer.stop()

    started = time.monotonic()
    records = await consume_async(kafka_bootstrap, [topic, f"{topic_prefix}.never-written"])
    elapsed = time.monotonic() - started

    assert sorted(r.value for r in records if r.value) == [f"v{i}".encode() for i in range(5)]
    assert elapsed < 5, f"reading to the end took {elapsed:.1f}s"


async def test_started_producer_publishes_again_after_broker_restart(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.restart"
    address = own_kafka.bootstrap_servers
    await create_topics(address, [topic], partitions=3)
    producer = _producer(address)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before-crash")
        own_kafka.kill(1)
        killed_at = time.monotonic()
        own_kafka.start_node(1)
        restarted_at = time.monotonic()
        async with asyncio.timeout(30):
            await producer.send_and_wait(topic, b"after-restart")
        acked_at = time.monotonic()
    finally:
        await producer.stop()

    recovery = acked_at - restarted_at
    print(
        f"\nbroker restart on {address}: down {restarted_at - killed_at:.3f}s, "
        f"first ack {recovery:.3f}s after the broker answered again"
    )
    assert own_kafka.bootstrap_servers == address
    assert recovery < 15
    # The disk kept what was acknowledged before the crash.
    records = consume(address, [topic], min_count=2, timeout=10)
    assert sorted(r.value for r in records if r.value) == [b"after-restart", b"before-crash"]


async def test_send_during_outage_completes_after_restart(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.outage"
    await create_topics(own_kafka.bootstrap_servers, [topic], partitions=1)
    producer = _producer(own_kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before-crash")
        own_kafka.kill(1)
        # aiokafka keeps the batch and retries it until the port answers again.
        in_flight = asyncio.ensure_future(producer.send_and_wait(topic, b"during-outage"))
        restart_began = time.monotonic()
        # In a thread, so the producer keeps running (and failing to connect) meanwhile.
        await asyncio.to_thread(own_kafka.start_node, 1)
        async with asyncio.timeout(30):
            await in_flight
        recovery = time.monotonic() - restart_began
    finally:
        await producer.stop()

    print(f"\nsend issued during the outage acked {recovery:.3f}s after the restart began")
    assert recovery < 20
    records = consume(own_kafka.bootstrap_servers, [topic], min_count=2, timeout=10)
    # Once each: the idempotent producer's retries of the in-flight batch are not duplicated.
    assert [r.value for r in records] == [b"before-crash", b"during-outage"]


async def test_kafka_keeps_records_and_offsets_across_kill_and_restart(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    topic, group = f"{topic_prefix}.durable", f"{topic_prefix}.group"
    address = own_kafka.bootstrap_servers
    await create_topics(address, [topic], partitions=3)
    count = 50
    producer = _producer(address)
    await producer.start()
    try:
        acked = await asyncio.gather(
            *[await producer.send(topic, str(i).encode(), key=str(i).encode()) for i in range(20)]
        )
        assert len(acked) == 20
        for i in range(20, count):
            await producer.send_and_wait(topic, str(i).encode(), key=str(i).encode())
        # A committed group offset is state of the broker too (the poller relies on it).
        consumer = AIOKafkaConsumer(
            bootstrap_servers=address, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(7, "")})
        finally:
            await consumer.stop()
        node = own_kafka.node(1)
        pid = node.pid
        own_kafka.kill(1)
        own_kafka.start_node(1)
        assert node.pid != pid
        assert own_kafka.bootstrap_servers == address
        # No topic re-created: it survived, and the started producer writes to it again.
        async with asyncio.timeout(30):
            await producer.send_and_wait(topic, str(count).encode(), key=b"after")
    finally:
        await producer.stop()

    records = await consume_async(address, [topic], min_count=count + 1, timeout=20)
    assert sorted(int(r.value or b"-1") for r in records) == list(range(count + 1))
    consumer = AIOKafkaConsumer(bootstrap_servers=address, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(topic, 0)) == 7
    finally:
        await consumer.stop()


def test_paused_node_answers_nothing_until_resumed(own_kafka: KafkaCluster) -> None:
    node = own_kafka.node(1)
    own_kafka.pause(1)
    try:
        # The kernel still accepts the connection; the frozen JVM never answers.
        with pytest.raises(TimeoutError):
            probe_metadata(node.host, node.port, timeout=0.5)
    finally:
        own_kafka.resume(1)
    assert [n for n, _, _ in probe_metadata(node.host, node.port, timeout=5)] == [1]


def test_missing_kafka_jars_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_KAFKA_LIBS", str(tmp_path))
    cluster = KafkaCluster(workdir=tmp_path / "kafka")
    with pytest.raises(DevBrokerError, match="make kafka"):
        cluster.start()
    assert cluster.running == []


async def test_tansu_smoke_records_read_back(tansu_broker: TansuBroker, topic_prefix: str) -> None:
    """tansu stays the broker of `make run`: it still takes and serves records."""
    topic = f"{topic_prefix}.tansu"
    await create_topics(tansu_broker.bootstrap_servers, [topic], partitions=1)
    # tansu has no idempotent producer.
    producer = AIOKafkaProducer(
        bootstrap_servers=tansu_broker.bootstrap_servers, enable_idempotence=False, acks="all"
    )
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, str(i).encode())
    finally:
        await producer.stop()
    records = await consume_async(tansu_broker.bootstrap_servers, [topic], min_count=10)
    assert [r.value for r in records] == [str(i).encode() for i in range(10)]


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    broker = TansuBroker(binary="/nonexistent/tansu", log_path=tmp_path / "tansu.log")
    with pytest.raises(DevBrokerError, match="missing or not executable"):
        broker.start()


def test_broker_that_cannot_bind_reports_its_log(tmp_path: Path) -> None:
    port = free_port()
    # Bound but not listening: tansu's bind fails, while the "already taken" probe passes.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        broker = TansuBroker(port, log_path=tmp_path / "tansu.log")
        with pytest.raises(DevBrokerError, match="exited early") as failure:
            broker.start()
    assert "devbroker: starting" in str(failure.value)
    assert not broker.is_running
