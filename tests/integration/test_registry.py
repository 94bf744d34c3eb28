"""Registry mode against a real Schema Registry (Apicurio, `make registry`) and real Kafka:
registration and ids, Confluent framing decoded through the registry, the registry down at
start, down after start, and a schema it refuses.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from apizee_session_events import Decoder, UnknownSchemaError, event_topics

from bridge.codec import CONFLUENT_MAGIC, Codec
from bridge.config import load_settings
from bridge.devtools.devbroker import free_port
from bridge.devtools.devregistry import CCOMPAT_PATH, RegistryServer
from bridge.errors import SchemaRejectedError
from bridge.registry import RegistryClient
from tests.integration.bridgeproc import (
    InProcessBridge,
    bridge_process,
    bridge_settings,
    process_env,
    running_bridge,
    wait_for,
    webhook,
)
from tests.integration.readback import Record, consume_async
from tests.integration.registrykit import (
    SEED_PROPS,
    UNKNOWN_TYPE,
    call_async,
    expected_subjects,
    registered_ids,
    seed_webhooks,
    subjects,
)

pytestmark = pytest.mark.integration

REGISTRATION_WITHIN = 30.0


def _registry_settings(url: str, **extra: Any) -> dict[str, Any]:
    return {"registry_url": url, "registry_retry_max_seconds": 1.0, **extra}


async def _post_all(bridge: InProcessBridge, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        reply = await bridge.post(body)
        assert reply.status in (200, 202), (body["props"]["eventType"], reply)


async def _records(bootstrap: str, prefix: str, count: int) -> list[Record]:
    records = await consume_async(bootstrap, event_topics(prefix), min_count=count, timeout=30)
    assert len(records) == count, [r.topic for r in records]
    return records


def _schema_id(record: Record) -> int:
    assert record.value is not None
    assert record.value[:1] == CONFLUENT_MAGIC, record.value[:10]
    return int.from_bytes(record.value[1:5], "big")


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_registers_every_schema_and_frames_records_by_registry_id(
    kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer
) -> None:
    url = schema_registry.url
    settings = bridge_settings(
        kafka_bootstrap,
        topic_prefix,
        schema=_registry_settings(
            url, registry_username="u", registry_password="registry-secret-42"
        ),
    )
    async with running_bridge(settings) as bridge:
        # 33 subjects, TopicRecordNameStrategy: `{topic}-{record full name}`.
        wanted = expected_subjects(topic_prefix)
        assert len(wanted) == 33
        assert set(wanted.values()) <= subjects(url)
        assert f"{topic_prefix}.ticket-com.apizee.sessionevents.TicketNew" in wanted.values()
        assert f"{topic_prefix}.unknown-com.apizee.sessionevents.UnknownEvent" in (wanted.values())
        ids = registered_ids(url, topic_prefix)
        metrics_text = (await bridge.admin("/metrics")).body.decode()

        bodies = seed_webhooks(ticket_id=7001, first_event_id=900_000)
        await _post_all(bridge, bodies)
    assert _metric(metrics_text, "apizee_bridge_schemas_registered") == 33
    assert (
        _metric(metrics_text, "apizee_bridge_schema_registry_requests_total", '{outcome="ok"}')
        >= 33
    )
    assert "registry-secret-42" not in metrics_text

    records = await _records(kafka_bootstrap, topic_prefix, len(bodies))
    decoder = Decoder(registry_url=url)
    codec = Codec(schema_ids=ids)
    seen_ids = set()
    by_event_id = {r.headers["event-id"]: r for r in records}
    for body in bodies:
        record = by_event_id[str(body["objectId"]).encode()]
        event_type = body["props"]["eventType"]
        schema_id = _schema_id(record)
        seen_ids.add(schema_id)
        # The id the registry holds for the record's subject, and nothing single-object.
        assert schema_id == ids[event_type if event_type in SEED_PROPS else ""]
        assert record.value is not None
        decoded = decoder.decode_record(record.value)
        assert decoded.framing == "confluent"
        assert decoded.writer == str(schema_id)
        assert decoded.event_type == event_type
        assert decoded.fields["eventId"] == body["objectId"]
        assert decoded.fields["ticketId"] == 7001
        # The consumer API reads what the codec wrote, field for field.
        assert decoded.fields == codec.decode_record(record.value)
    assert len(seen_ids) == 33


async def test_record_name_strategy_names_subjects_by_record_alone(
    kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer
) -> None:
    url = schema_registry.url
    settings = bridge_settings(
        kafka_bootstrap,
        topic_prefix,
        schema=_registry_settings(url, subject_strategy="record"),
    )
    async with running_bridge(settings) as bridge:
        wanted = expected_subjects(topic_prefix, "record")
        assert "com.apizee.sessionevents.TicketNew" in wanted.values()
        assert set(wanted.values()) <= subjects(url)
        ids = registered_ids(url, topic_prefix, "record")
        body = webhook("ticket.new", SEED_PROPS["ticket.new"], event_id=910_001, ticket_id=7002)
        assert (await bridge.post(body)).status == 200
    (record,) = await _records(kafka_bootstrap, topic_prefix, 1)
    assert _schema_id(record) == ids["ticket.new"]


async def test_registry_down_at_start_is_not_ready_with_the_reason_then_ready_when_it_comes(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
    settings = bridge_settings(kafka_bootstrap, topic_prefix, schema=_registry_settings(url))
    async with running_bridge(settings, wait_ready=False) as bridge:
        last: list[Any] = [None]

        async def says_registry() -> bool:
            last[0] = reply = await bridge.readyz()
            return (
                reply is not None
                and reply.status == 503
                and "schema registry" in reply.json()["reason"]
                and "cannot reach" in reply.json()["reason"]
            )

        await wait_for(says_registry, 30, "/readyz names the registry (last: {})", last=last)
        body = webhook("ticket.new", SEED_PROPS["ticket.new"], event_id=920_001, ticket_id=7003)
        refused = await bridge.post(body)
        assert refused.status == 503, refused
        assert refused.headers["Retry-After"]
        assert "schemas not registered" in refused.json()["reason"]
        metrics_text = (await bridge.admin("/metrics")).body.decode()
        assert _metric(metrics_text, "apizee_bridge_schemas_registered") == 0
        assert (
            _metric(
                metrics_text,
                "apizee_bridge_webhook_requests_total",
                '{reason="schemas_not_registered",status="503"}',
            )
            >= 1
        )

        with RegistryServer(port, log_path=tmp_path / "apicurio.log") as registry:
            await bridge.wait_ready(within=registry.start_timeout)
            assert (await bridge.post(body)).status == 200
            ids = registered_ids(registry.url, topic_prefix)
    (record,) = await _records(kafka_bootstrap, topic_prefix, 1)
    assert _schema_id(record) == ids["ticket.new"]


async def test_registry_outage_after_start_does_not_stop_publishing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with RegistryServer(log_path=tmp_path / "apicurio.log") as registry:
        settings = bridge_settings(
            kafka_bootstrap, topic_prefix, schema=_registry_settings(registry.url)
        )
        async with running_bridge(settings) as bridge:
            ids = registered_ids(registry.url, topic_prefix)
            await asyncio.to_thread(registry.stop)
            bodies = seed_webhooks(ticket_id=7004, first_event_id=930_000)
            await _post_all(bridge, bodies)
            ready = await bridge.readyz()
            assert ready is not None
            assert ready.status == 200, ready
    records = await _records(kafka_bootstrap, topic_prefix, len(bodies))
    by_event_id = {r.headers["event-id"]: r for r in records}
    codec = Codec(schema_ids=ids)
    for body in bodies:
        record = by_event_id[str(body["objectId"]).encode()]
        event_type = body["props"]["eventType"]
        assert _schema_id(record) == ids[event_type if event_type != UNKNOWN_TYPE else ""]
        assert record.value is not None
        assert codec.decode(record.value).event_id == body["objectId"]


async def test_schema_the_registry_refuses_stops_the_bridge_with_one_line(
    kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer, tmp_path: Path
) -> None:
    url = schema_registry.url
    subject = f"{topic_prefix}.ticket-com.apizee.sessionevents.TicketNew"
    # What the subject already holds: a TicketNew with one field. The bridge's TicketNew has
    # fields without defaults that this one lacks, so under BACKWARD it cannot read old data.
    old = {
        "type": "record",
        "name": "TicketNew",
        "namespace": "com.apizee.sessionevents",
        "fields": [{"name": "eventId", "type": "long"}],
    }
    status, answer = await call_async(
        "POST", f"{url}/subjects/{subject}/versions", {"schema": json.dumps(old)}
    )
    assert status == 200, answer
    status, answer = await call_async(
        "PUT", f"{url}/config/{subject}", {"compatibility": "BACKWARD"}
    )
    assert status == 200, answer

    env = process_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_SCHEMA_REGISTRY_URL=url,
        BRIDGE_SCHEMA_REGISTRY_USERNAME="bridge",
        BRIDGE_SCHEMA_REGISTRY_PASSWORD="registry-secret-43",
    )
    async with bridge_process(["run"], env, tmp_path / "bridge.log") as bridge:
        code = await bridge.stopped(within=60)
    assert code == 2, bridge.transcript()
    naming = [line for line in bridge.lines if subject in line]
    assert len(naming) == 1, bridge.transcript()
    (line,) = naming
    record = json.loads(line)
    assert record["event"] == "schema_rejected"
    assert record["subject"] == subject
    assert record["status"] == 409
    assert "ncompatible" in record["registry_message"], record
    assert all("registry-secret-43" not in line for line in bridge.lines)


async def test_client_maps_an_invalid_schema_to_a_refusal_and_decoder_names_unknown_ids(
    schema_registry: RegistryServer, topic_prefix: str
) -> None:
    settings = load_settings(
        auth={"insecure_no_auth": True}, schema={"registry_url": schema_registry.url}
    )
    client = RegistryClient(settings.schema)
    await client.start()
    try:
        with pytest.raises(SchemaRejectedError) as refused:
            await client.register(f"{topic_prefix}-invalid", '{"type": "recordz"}')
    finally:
        await client.close()
    assert refused.value.status == 422
    assert refused.value.outcome == "invalid"
    assert refused.value.subject == f"{topic_prefix}-invalid"

    decoder = Decoder(registry_url=schema_registry.url)
    with pytest.raises(UnknownSchemaError, match="registry id 987654"):
        await asyncio.to_thread(decoder.decode, b"\x00" + (987654).to_bytes(4, "big") + b"\x02")
