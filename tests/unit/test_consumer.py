"""The consumers' package against the bridge's own codec: what the bridge writes, the package
reads (both framings, released schemas resolved to the current shape, errors that name what is
missing). The package's own tests (consumers/python/tests) use the committed vectors alone."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from apizee_session_events import DecodeError, Decoder, UnknownSchemaError, event_topics
from apizee_session_events.framing import SINGLE_OBJECT_MAGIC, schema_fingerprint
from fastavro import parse_schema, schemaless_writer

from bridge.catalog import EVENTS
from bridge.codec import Codec
from bridge.models import CanonicalEvent, Source
from bridge.schemas import all_event_schemas
from tests.unit.conftest import REPO

CODEC = Codec()


def _event(event_type: str, attributes: dict[str, Any] | None = None) -> CanonicalEvent:
    return CanonicalEvent(
        event_id=42,
        event_type=event_type,
        event_code=7,
        ticket_id=361,
        conversation_id=548,
        occurred_at_ms=1_749_581_447_000,
        source=Source.WEBHOOK,
        received_at_ms=1_749_581_448_000,
        attributes=attributes or {},
        extra={},
    )


@pytest.mark.parametrize("event_type", [*EVENTS, "session.teleported"])
def test_single_object_records_decode_as_the_codec_reads_them(event_type: str) -> None:
    value = CODEC.encode(_event(event_type))
    record = Decoder(released_dirs=[]).decode_record(value)
    assert record.framing == "single-object"
    assert record.event_type == event_type
    assert record.writer == value[2:10].hex()
    assert record.schema_name == CODEC.writer_for(event_type).full_name
    assert record.fields == CODEC.decode_record(value)


def test_released_schemas_are_known_and_read_into_the_current_shape(tmp_path: Path) -> None:
    # A released set ("v0") whose TicketNew lacked `agent` (optional, default null today).
    current = all_event_schemas()["ticket.new"]
    old = {**current, "fields": [f for f in current["fields"] if f["name"] != "agent"]}
    (tmp_path / "v0" / "events").mkdir(parents=True)
    (tmp_path / "v0" / "events" / "ticket.new.avsc").write_text(json.dumps(old))
    fingerprint = schema_fingerprint(old)
    index = {fingerprint.hex(): {"eventType": "ticket.new", "file": "events/ticket.new.avsc"}}
    (tmp_path / "v0" / "fingerprints.json").write_text(json.dumps(index))
    body = BytesIO()
    schemaless_writer(
        body,
        parse_schema(old),
        {
            "eventId": 1,
            "eventType": "ticket.new",
            "eventCode": None,
            "ticketId": 361,
            "conversationId": 548,
            "occurredAt": 1_749_581_447_000,
            "source": "POLLER",
            "receivedAt": 1_749_581_448_000,
            "extra": None,
        },
    )
    value = SINGLE_OBJECT_MAGIC + fingerprint + body.getvalue()

    with pytest.raises(UnknownSchemaError, match=fingerprint.hex()):
        Decoder(released_dirs=[]).decode(value)
    decoder = Decoder(released_dirs=[tmp_path])
    assert fingerprint.hex() in decoder.fingerprints
    record = decoder.decode_record(value)
    assert record.writer == fingerprint.hex()
    assert record.fields["agent"] is None  # the current schema's default
    assert record.fields["source"] == "POLLER"


def test_the_repository_released_sets_are_loaded_by_default() -> None:
    released_dir = REPO / "schemas" / "released"
    assert released_dir.is_dir()
    released = json.loads((released_dir / "v1" / "fingerprints.json").read_text())
    assert set(released) <= Decoder().fingerprints


def test_unknown_and_unframed_records_say_what_is_missing() -> None:
    decoder = Decoder(released_dirs=[])
    with pytest.raises(UnknownSchemaError, match="fingerprint 0011223344556677"):
        decoder.decode(SINGLE_OBJECT_MAGIC + bytes.fromhex("0011223344556677") + b"\x00")
    with pytest.raises(UnknownSchemaError, match=r"registry id 77.*no registry_url"):
        decoder.decode(b"\x00" + (77).to_bytes(4, "big") + b"\x00")
    with pytest.raises(DecodeError, match="not a single-object or Confluent"):
        decoder.decode(b'{"not": "avro"}')
    truncated = CODEC.encode(_event("ticket.new"))[:14]
    with pytest.raises(DecodeError, match=r"corrupt com\.apizee\.sessionevents\.TicketNew"):
        decoder.decode(truncated)


def test_event_topics_are_the_avro_topics() -> None:
    topics = event_topics("p")
    assert "p.ticket" in topics
    assert "p.unknown" in topics
    assert "p.dlq" not in topics
    assert "p.bridge-state" not in topics
    assert len(topics) == len({e.category for e in EVENTS.values()}) + 1
    assert set(topics) == {f"p.{e.category}" for e in EVENTS.values()} | {"p.unknown"}
