"""The consumer API: both framings, released schemas resolved to the current shape, and errors
that name what is missing."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from bridge.catalog import EVENTS
from bridge.codec import SINGLE_OBJECT_MAGIC, Codec
from bridge.consumer import DEFAULT_RELEASED_DIR, Decoder, event_topics
from bridge.errors import CodecError, UnknownSchemaError
from bridge.models import CanonicalEvent, Source
from bridge.schemas import all_event_schemas, schema_fingerprint

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
    record = Decoder(released_dirs=[]).decode(value)
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
    record = decoder.decode(value)
    assert record.writer == fingerprint.hex()
    assert record.fields["agent"] is None  # the current schema's default
    assert record.fields["source"] == "POLLER"


def test_the_repository_released_sets_are_loaded_by_default() -> None:
    assert DEFAULT_RELEASED_DIR.is_dir()
    released = json.loads((DEFAULT_RELEASED_DIR / "v1" / "fingerprints.json").read_text())
    assert set(released) <= Decoder().fingerprints


def test_unknown_and_unframed_records_say_what_is_missing() -> None:
    decoder = Decoder(released_dirs=[])
    with pytest.raises(UnknownSchemaError, match="fingerprint 0011223344556677"):
        decoder.decode(SINGLE_OBJECT_MAGIC + bytes.fromhex("0011223344556677") + b"\x00")
    with pytest.raises(UnknownSchemaError, match=r"registry id 77.*no registry_url"):
        decoder.decode(b"\x00" + (77).to_bytes(4, "big") + b"\x00")
    with pytest.raises(CodecError, match="not a single-object or Confluent"):
        decoder.decode(b'{"not": "avro"}')
    truncated = CODEC.encode(_event("ticket.new"))[:14]
    with pytest.raises(CodecError, match=r"corrupt com\.apizee\.sessionevents\.TicketNew"):
        decoder.decode(truncated)


def test_event_topics_are_the_avro_topics() -> None:
    topics = event_topics("p")
    assert "p.ticket" in topics
    assert "p.unknown" in topics
    assert "p.dlq" not in topics
    assert "p.bridge-state" not in topics
    assert len(topics) == len({e.category for e in EVENTS.values()}) + 1
