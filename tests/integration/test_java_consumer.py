"""End to end on Apache Kafka: the bridge publishes the 32 seed examples (single-object
framing), and the Java kit's example (a real KafkaConsumer with ApizeeAvroDeserializer,
pattern-subscribed to the category topics) reads every one with each field equal to what
Python reads back with confluent-kafka and decodes with bridge.codec.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from bridge.codec import Codec
from bridge.config import BridgeSettings
from bridge.devtools.devregistry import RegistryServer
from tests.integration import kafkakit
from tests.integration.bridgeproc import bridge_settings, running_bridge
from tests.integration.readback import consume_async
from tests.integration.registrykit import preregister
from tests.vectors.generate import (
    HERE as VECTORS,
)
from tests.vectors.generate import (
    REPO,
    TICKET_ID,
    seed_webhooks,
    stable,
    unknown_webhook,
)

pytestmark = pytest.mark.integration

KIT = REPO / "consumers" / "java"
CODEC = Codec()
JAVA_TIMEOUT = 120.0  # JVM start, group join, reading 8 topics; ~10 s on an idle machine


@pytest.fixture(scope="module")
def kit_classpath() -> str:
    """The kit's classes and runtime classpath, built by Maven when missing."""
    classpath_file = KIT / "target" / "classpath.txt"
    if not classpath_file.is_file() or not (KIT / "target" / "classes").is_dir():
        mvn = shutil.which("mvn")
        if mvn is None:
            pytest.skip("Maven (mvn) is not installed: the Java consumer kit cannot be built")
        subprocess.run([mvn, "-q", "-B", "package", "-DskipTests"], cwd=KIT, check=True)
    return f"{KIT / 'target' / 'classes'}:{classpath_file.read_text().strip()}"


async def _java_timeline(
    classpath: str, bootstrap: str, prefix: str, *extra_args: str
) -> list[dict[str, Any]]:
    java = shutil.which("java")
    assert java is not None, "java is not on PATH"
    process = await asyncio.create_subprocess_exec(
        java,
        "-cp",
        classpath,
        "com.apizee.sessionevents.kafka.examples.TicketTimeline",
        "--bootstrap-servers",
        bootstrap,
        "--prefix",
        prefix,
        "--ticket",
        str(TICKET_ID),
        "--json",
        "--timeout-ms",
        str(int(JAVA_TIMEOUT * 1000)),
        *extra_args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(JAVA_TIMEOUT + 30):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def _committed_vector(event_type: str) -> dict[str, Any]:
    path = VECTORS / "events" / f"{event_type}.json"
    if not path.is_file():
        path = VECTORS / "unknown" / f"{event_type}.json"
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["record"]
    return record


async def test_java_consumer_reads_every_seed_event_equal_to_python(
    kafka_bootstrap: str, topic_prefix: str, kit_classpath: str
) -> None:
    await _java_reads_what_python_reads(
        kafka_bootstrap, topic_prefix, kit_classpath, bridge_settings(kafka_bootstrap, topic_prefix)
    )


async def test_java_consumer_reads_registry_mode_records_equal_to_python(
    kafka_bootstrap: str, topic_prefix: str, kit_classpath: str, schema_registry: RegistryServer
) -> None:
    # The ids the bridge will get: registering the same schema under the same subject returns
    # the id the subject already holds, so registering first tells the Python codec.
    ids = await asyncio.to_thread(preregister, schema_registry.url, topic_prefix)
    settings = bridge_settings(
        kafka_bootstrap, topic_prefix, schema={"registry_url": schema_registry.url}
    )
    await _java_reads_what_python_reads(
        kafka_bootstrap,
        topic_prefix,
        kit_classpath,
        settings,
        codec=Codec(schema_ids=ids),
        java_args=("--schema-registry-url", schema_registry.url),
    )


async def _java_reads_what_python_reads(
    kafka_bootstrap: str,
    topic_prefix: str,
    kit_classpath: str,
    settings: BridgeSettings,
    codec: Codec = CODEC,
    java_args: tuple[str, ...] = (),
) -> None:
    bodies = [*seed_webhooks(), unknown_webhook()]
    async with running_bridge(settings) as bridge:
        for body in bodies:
            reply = await bridge.post(body)
            assert reply.status in (200, 202), reply
        topics = bridge.topics.events()

    # Python: confluent-kafka reads every topic to its end, bridge.codec decodes.
    python = {}
    for record in await consume_async(kafka_bootstrap, topics, timeout=30):
        assert record.value is not None
        decoded = stable(codec.decode_record(record.value))
        python[decoded["eventId"]] = (record, decoded)
    assert len(python) == len(bodies) == 33

    java = await _java_timeline(kit_classpath, kafka_bootstrap, topic_prefix, *java_args)
    assert [j["record"]["eventId"] for j in java] == [b["objectId"] for b in bodies], (
        "one record per posted event, in order of occurredAt"
    )
    for line in java:
        record, decoded = python[line["record"]["eventId"]]
        where = f"event {line['record']['eventId']} ({decoded['eventType']})"
        # Every field equal: JSON numbers parse to the same ints and floats on both sides.
        assert line["record"] == decoded, where
        assert (line["topic"], line["partition"], line["offset"]) == (
            record.topic,
            record.partition,
            record.offset,
        ), where
        assert record.key is not None
        assert line["key"] == record.key.decode() == str(TICKET_ID), where
        assert line["headers"] == {k: v.decode() for k, v in record.headers.items()}, where
        writer, _ = codec.writer_of(record.value or b"")
        # The generated SpecificRecord class of the current schema.
        assert line["class"] == line["schema"] == writer.full_name, where
        # And what the bridge published is what the committed vectors say, but for the time
        # the bridge received it.
        expected = _committed_vector(decoded["eventType"])
        assert {**line["record"], "receivedAt": 0} == {**expected, "receivedAt": 0}, where


def test_the_kit_classpath_names_existing_jars(kit_classpath: str) -> None:
    missing = [p for p in kit_classpath.split(":") if not Path(p).exists()]
    assert not missing


async def test_java_consumer_reads_committed_records_only_by_default(
    kafka_bootstrap: str, topic_prefix: str, kit_classpath: str
) -> None:
    """The kit's isolation.level is read_committed: a record of an aborted transaction, or of
    one still open, is not read; `--property isolation.level=read_uncommitted` reads them."""
    topic = f"{topic_prefix}.ticket"
    await asyncio.to_thread(
        kafkakit.create_topics, kafka_bootstrap, [topic], partitions=1, replication=1
    )
    key = str(TICKET_ID).encode()
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{topic_prefix}.tx"}
    )
    try:
        producer.init_transactions(30)
        for event_type, commit in (("ticket.new", True), ("ticket.closed", False)):
            producer.begin_transaction()
            producer.produce(topic, (VECTORS / "events" / f"{event_type}.bin").read_bytes(), key)
            assert producer.flush(30) == 0  # on the broker before the abort, not purged
            if commit:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        producer.begin_transaction()  # left open while Java reads
        producer.produce(topic, (VECTORS / "events" / "ticket.approved.bin").read_bytes(), key)
        assert producer.flush(30) == 0

        default = await _java_timeline(kit_classpath, kafka_bootstrap, topic_prefix)
        uncommitted = await _java_timeline(
            kit_classpath,
            kafka_bootstrap,
            topic_prefix,
            "--property",
            "isolation.level=read_uncommitted",
        )
        producer.abort_transaction(30)
    finally:
        producer.close()

    assert [line["record"]["eventType"] for line in default] == ["ticket.new"]
    assert sorted(line["record"]["eventType"] for line in uncommitted) == [
        "ticket.approved",
        "ticket.closed",
        "ticket.new",
    ]
