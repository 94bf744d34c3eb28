"""`apizee_session_events.kafka.read_events` on Apache Kafka: what a real bridge wrote, read
back decoded (both framings); `read_committed` by default (an open or aborted transaction's
records stay invisible); a group resumes after the last event handed out; a record that does
not decode says where it is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from apizee_session_events import DecodeError, Decoder, UnknownSchemaError
from apizee_session_events.kafka import Event, read_events
from confluent_kafka import Producer

from bridge.catalog import EVENTS
from bridge.devtools.devbroker import TansuBroker
from bridge.devtools.devregistry import RegistryServer
from tests.integration import kafkakit
from tests.integration.bridgeproc import bridge_settings, running_bridge
from tests.integration.registrykit import UNKNOWN_TYPE, seed_webhooks
from tests.unit.conftest import REPO

pytestmark = pytest.mark.integration

VECTORS = REPO / "tests" / "vectors" / "events"
IDLE = 3.0  # seconds without a record once partitions are assigned: everything was written
JOIN = 60.0  # the group join on a loaded machine; about 0.1 s on an idle one


async def _read(bootstrap: str, prefix: str, **options: Any) -> list[Event]:
    options.setdefault("idle_timeout_seconds", IDLE)
    options.setdefault("join_timeout_seconds", JOIN)
    return await asyncio.to_thread(lambda: list(read_events(bootstrap, prefix=prefix, **options)))


async def _post(
    bootstrap: str, prefix: str, bodies: Iterable[dict[str, Any]], **sections: Any
) -> None:
    async with running_bridge(bridge_settings(bootstrap, prefix, **sections)) as bridge:
        for body in bodies:
            reply = await bridge.post(body)
            assert reply.status in (200, 202), reply  # 202: an unknown eventType, stored


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
async def test_read_events_yields_every_event_the_bridge_wrote(
    kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer, framing: str
) -> None:
    bodies = seed_webhooks(8201, 970_000) + seed_webhooks(8202, 980_000)[:4]
    registry = {"schema": {"registry_url": schema_registry.url}} if framing == "confluent" else {}
    await _post(kafka_bootstrap, topic_prefix, bodies, **registry)
    decoder = Decoder(registry_url=schema_registry.url) if registry else None

    events = await _read(kafka_bootstrap, topic_prefix, decoder=decoder)

    by_id = {e.fields["eventId"]: e for e in events}
    assert Counter(e.fields["eventId"] for e in events) == Counter(b["objectId"] for b in bodies)
    for body in bodies:
        event, props = by_id[body["objectId"]], body["props"]
        event_type = props["eventType"]
        category = "unknown" if event_type == UNKNOWN_TYPE else EVENTS[event_type].category
        assert event.topic == f"{topic_prefix}.{category}"
        assert event.key == str(props["ticketId"])
        assert event.headers["event-id"] == str(body["objectId"])
        assert event.headers["event-type"] == event_type
        assert event.headers["source"] == "WEBHOOK"
        assert event.fields["eventType"] == event_type
        assert event.fields["ticketId"] == props["ticketId"]
        assert event.fields["occurredAt"] == datetime.fromtimestamp(body["time"], UTC)
    offsets = Counter((e.topic, e.partition, e.offset) for e in events)
    assert max(offsets.values()) == 1


def _vector(event_type: str) -> bytes:
    return (VECTORS / f"{event_type}.bin").read_bytes()


@contextlib.contextmanager
def _producer(bootstrap: str, **config: str) -> Iterator[Producer]:
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    try:
        yield producer
    finally:
        producer.close()


async def test_read_committed_is_the_default(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.ticket"
    kafkakit.create_topics(kafka_bootstrap, [topic], partitions=1, replication=1)

    def types(events: list[Event]) -> list[str]:
        return [e.fields["eventType"] for e in events]

    with _producer(kafka_bootstrap, **{"transactional.id": f"{topic_prefix}.tx"}) as producer:
        producer.init_transactions(30)
        # Committed: ticket.new; aborted (after it reached the broker): ticket.closed; then
        # ticket.approved in a transaction left open while the readers run.
        for event_type, commit in (("ticket.new", True), ("ticket.closed", False)):
            producer.begin_transaction()
            producer.produce(topic, _vector(event_type), key=b"361")
            assert producer.flush(30) == 0
            if commit:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        producer.begin_transaction()
        producer.produce(topic, _vector("ticket.approved"), key=b"361")
        assert producer.flush(30) == 0

        default = await _read(kafka_bootstrap, topic_prefix)
        uncommitted = await _read(kafka_bootstrap, topic_prefix, isolation_level="read_uncommitted")
        producer.commit_transaction(30)
        after_commit = await _read(kafka_bootstrap, topic_prefix)

    assert types(default) == ["ticket.new"]
    assert types(uncommitted) == ["ticket.new", "ticket.closed", "ticket.approved"]
    assert types(after_commit) == ["ticket.new", "ticket.approved"]


async def test_a_group_resumes_after_the_last_event_handed_out(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    bodies = seed_webhooks(8203, 990_000)[:12]
    await _post(kafka_bootstrap, topic_prefix, bodies)
    group = f"{topic_prefix}.readers"

    def first(count: int) -> list[Event]:
        taken = []
        for event in read_events(kafka_bootstrap, prefix=topic_prefix, group_id=group):
            taken.append(event)
            if len(taken) == count:
                break  # the generator closes the consumer, which commits what was stored
        return taken

    taken = await asyncio.to_thread(first, 5)
    rest = await _read(kafka_bootstrap, topic_prefix, group_id=group)
    again = await _read(kafka_bootstrap, topic_prefix, group_id=group)

    def where(events: list[Event]) -> set[tuple[str, int, int]]:
        return {(e.topic, e.partition, e.offset) for e in events}

    everything = await _read(kafka_bootstrap, topic_prefix)  # a group of its own: all of it
    assert len(everything) == len(bodies)
    # At-least-once: the 5th was handed out but the loop never asked for the 6th.
    assert where(rest) == where(everything) - where(taken[:4])
    assert again == []


async def test_a_record_that_does_not_decode_names_where_it_is(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{topic_prefix}.ticket"
    kafkakit.create_topics(kafka_bootstrap, [topic], partitions=1, replication=1)
    unknown = b"\xc3\x01" + bytes(8) + b"\x00"
    with _producer(kafka_bootstrap) as producer:
        for value in (_vector("ticket.new"), b"not avro", unknown, _vector("ticket.closed")):
            producer.produce(topic, value, key=b"361")
        assert producer.flush(30) == 0

    with pytest.raises(DecodeError) as raised:
        await _read(kafka_bootstrap, topic_prefix)
    assert (raised.value.topic, raised.value.partition, raised.value.offset) == (topic, 0, 1)
    assert str(raised.value).startswith(f"{topic} partition 0 offset 1: not a single-object")

    with caplog.at_level(logging.WARNING, logger="apizee_session_events.kafka"):
        events = await _read(kafka_bootstrap, topic_prefix, skip_undecodable=True)
    assert [e.offset for e in events] == [0, 3]
    skipped = [r.getMessage() for r in caplog.records if "does not decode" in r.getMessage()]
    assert len(skipped) == 2
    assert (
        f"{topic} partition 0 offset 2: no schema with fingerprint 0000000000000000" in skipped[1]
    )
    assert issubclass(UnknownSchemaError, DecodeError)


async def test_a_slow_group_join_does_not_end_the_reading_early(tansu_broker: TansuBroker) -> None:
    """The idle timer counts from the assignment: tansu (the broker of `make run` without
    Java) takes about 20 s to admit a group member, ten times the idle timeout here."""
    bootstrap, prefix, idle = tansu_broker.bootstrap_servers, "slow", 2.0
    kafkakit.create_topics(bootstrap, [f"{prefix}.ticket"], partitions=1, replication=1)
    with _producer(bootstrap) as producer:
        producer.produce(f"{prefix}.ticket", _vector("ticket.new"), key=b"361")
        assert producer.flush(30) == 0

    started = time.monotonic()
    events = await _read(bootstrap, prefix, group_id="slow-joiners", idle_timeout_seconds=idle)
    elapsed = time.monotonic() - started

    assert [e.fields["eventType"] for e in events] == ["ticket.new"]
    assert elapsed > 2 * idle, f"the join took {elapsed:.1f} s: no longer a slow join"
