"""Avro framing and round trips (bridge/codec.py), read back as a consumer would."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader
from hypothesis import given, settings

from bridge.catalog import EVENTS
from bridge.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, Codec, json_text
from bridge.errors import CodecError, UnknownSchemaError
from bridge.models import (
    CanonicalEvent,
    Source,
    from_rest,
    from_webhook,
    parse_rest_item,
    parse_webhook,
)
from bridge.schemas import schema_fingerprint
from tests.unit.conftest import REPO, load_fixture, webhook
from tests.unit.strategies import rest_items, webhook_bodies

CODEC = Codec()
SCHEMAS = REPO / "schemas"


def _event(body: dict[str, Any]) -> CanonicalEvent:
    return from_webhook(parse_webhook(json.dumps(body).encode()), 1_749_581_448_123)


def _consumer_schema(event_type: str) -> dict[str, Any]:
    """What a consumer reads: the committed file, not the code that generated it."""
    index = json.loads((SCHEMAS / "fingerprints.json").read_text())
    files = {v["eventType"]: v["file"] for v in index.values()}
    schema: dict[str, Any] = json.loads((SCHEMAS / files[event_type]).read_text())
    return schema


def test_single_object_framing_is_magic_fingerprint_body() -> None:
    event = _event(load_fixture("seed_webhook_example.json"))
    data = CODEC.encode(event)
    assert data[:2] == SINGLE_OBJECT_MAGIC == b"\xc3\x01"
    schema = _consumer_schema("media.OCRDone")
    assert data[2:10] == schema_fingerprint(schema)
    # A consumer with only the .avsc file and fastavro reads the body.
    record = schemaless_reader(BytesIO(data[10:]), parse_schema(schema), None)
    assert record["eventId"] == 1266
    assert record["text"] == "text captured by OCR"
    assert record["source"] == "WEBHOOK"
    assert record["occurredAt"].timestamp() == 1749581447


def test_every_seed_example_round_trips_in_both_shapes(
    seed_props: dict[str, dict[str, Any]],
) -> None:
    for event_type, attributes in seed_props.items():
        event = _event(webhook(event_type, attributes))
        assert CODEC.decode(CODEC.encode(event)) == event, event_type
    for item in load_fixture("seed_rest_example.json"):
        event = from_rest(parse_rest_item(item), 99, 1)
        decoded = CODEC.decode(CODEC.encode(event))
        assert decoded == event
        assert decoded.source is Source.POLLER


def test_fingerprints_are_distinct_and_indexed() -> None:
    index = json.loads((SCHEMAS / "fingerprints.json").read_text())
    assert len(index) == len(EVENTS) + 1
    for event_type, writer in CODEC.writers.items():
        assert index[writer.fingerprint_hex]["eventType"] == (event_type or None)


def test_confluent_framing_uses_the_registry_id() -> None:
    ids = {t: 100 + n for n, t in enumerate(CODEC.writers)}
    codec = Codec(schema_ids=ids)
    event = _event(webhook("media.pictureTaken", {"mediaId": 5}))
    data = codec.encode(event)
    assert data[:1] == CONFLUENT_MAGIC
    assert int.from_bytes(data[1:5], "big") == ids["media.pictureTaken"]
    assert codec.decode(data) == event
    # Same body as single-object encoding: only the framing differs.
    assert data[5:] == CODEC.encode(event)[10:]


def test_unknown_event_type_uses_the_generic_schema() -> None:
    event = _event(webhook("whiteboard.drawn", {"strokes": [1, 2, {"c": "red"}]}))
    data = CODEC.encode(event)
    assert CODEC.writer_of(data)[0].full_name == "com.apizee.sessionevents.UnknownEvent"
    decoded = CODEC.decode(data)
    assert decoded == event
    assert decoded.extra == {"strokes": [1, 2, {"c": "red"}]}


def test_extra_beyond_64_bit_integers_survives() -> None:
    event = _event(webhook("consent.accepted", {"huge": 2**70, "neg": -(2**80)}))
    assert CODEC.decode(CODEC.encode(event)).extra == {"huge": 2**70, "neg": -(2**80)}
    assert json_text({"b": 1, "a": [2**65]}) == '{"a":[36893488147419103232],"b":1}'


def test_decode_refuses_what_it_cannot_resolve() -> None:
    event = _event(webhook("consent.accepted", {}))
    data = CODEC.encode(event)
    with pytest.raises(UnknownSchemaError, match="fingerprint"):
        CODEC.decode(SINGLE_OBJECT_MAGIC + b"\x00" * 8 + data[10:])
    with pytest.raises(UnknownSchemaError, match="registry id 7"):
        CODEC.decode(CONFLUENT_MAGIC + (7).to_bytes(4, "big") + data[10:])
    with pytest.raises(CodecError, match="not a single-object"):
        CODEC.decode(b'{"json": true}')
    with pytest.raises(CodecError, match="corrupt"):
        CODEC.decode(data[:14])


def test_encode_reports_values_outside_the_schema() -> None:
    event = _event(webhook("media.pictureTaken", {"mediaId": 1}))
    broken = CanonicalEvent(
        event_id=event.event_id,
        event_type=event.event_type,
        event_code=event.event_code,
        ticket_id=event.ticket_id,
        conversation_id=event.conversation_id,
        occurred_at_ms=event.occurred_at_ms,
        source=event.source,
        received_at_ms=event.received_at_ms,
        attributes={"mediaId": "not a long"},
    )
    with pytest.raises(CodecError, match=r"media\.pictureTaken"):
        CODEC.encode(broken)


@given(webhook_bodies())
@settings(max_examples=300)
def test_any_valid_webhook_event_round_trips(body: dict[str, Any]) -> None:
    event = _event(body)
    assert CODEC.decode(CODEC.encode(event)) == event


@given(rest_items())
@settings(max_examples=150)
def test_any_valid_rest_event_round_trips(item: dict[str, Any]) -> None:
    event = from_rest(parse_rest_item(item), 42, 1_700_000_000_000)
    assert CODEC.decode(CODEC.encode(event)) == event


# -- no amplification (issue 10): the record is never much larger than the body ------------

# The bound: an Avro record of a webhook is at most its body plus this many bytes (framing,
# receivedAt and source, which the body lacks; the unions' branch bytes). Unknown attributes
# are written back as the body had them (numbers keep their text, escapes only shrink), and
# typed values are never longer in Avro than in JSON, except the fixed few above.
RECORD_OVERHEAD_BOUND = 256


def _corpus() -> list[tuple[str, bytes]]:
    base = webhook("ticket.new", {"agent": {"email": "a@b.c"}}, objectId=1_000_000)
    bodies: list[tuple[str, bytes]] = []

    def add(name: str, attribute: str) -> None:
        envelope = json.dumps(base).encode()
        body = envelope.replace(b'"agent":', f'"x":{attribute},"agent":'.encode(), 1)
        bodies.append((name, body))

    for n in (1, 100, 200_000):
        add(f"1e15 x{n}", "[" + ",".join(["1e15"] * n) + "]")
        add(f"1.0 x{n}", "[" + ",".join(["1.0"] * n) + "]")
        add(f"5e-324 x{n}", "[" + ",".join(["5e-324"] * n) + "]")
        add(f"0 x{n}", "[" + ",".join(["0"] * n) + "]")
        add(f"big ints x{n}", "[" + ",".join([str(2**70)] * n) + "]")
        add(f"-0.0 x{n}", "[" + ",".join(["-0.0"] * n) + "]")
        add(f"objects x{n}", "[" + ",".join(['{"a":1e2}'] * n) + "]")
        add(f"escapes x{n}", json.dumps(['\u00e9\n\u0001"\\/'] * n, ensure_ascii=True))
        add(f"utf-8 x{n}", json.dumps(["🎥é"] * n, ensure_ascii=False))
        add(f"long string x{n}", json.dumps("y" * (5 * n)))
        add(f"empty strings x{n}", json.dumps([""] * n))
        add(f"nulls x{n}", "[" + ",".join(["null"] * n) + "]")
    survey = webhook(
        "survey.answered",
        {"surveyAnswer": {"questions": [{"id": 0}] * 50_000 + [{"id": 0, "zz": 1}]}},
        objectId=1,
    )
    bodies.append(("survey questions", json.dumps(survey, separators=(",", ":")).encode()))
    # The issue's body: 1,000,153 bytes of ticket.new whose unknown attribute holds 1e15s.
    bodies.append(("issue 10", _issue_body()))
    return bodies


def _issue_body() -> bytes:
    envelope = json.dumps(webhook("ticket.new", {}, objectId=42)).encode()
    numbers = b",".join([b"1e15"] * 200_000)
    return envelope.replace(b'"ticketId": 361', b'"ticketId": 361, "x": [' + numbers + b"]")


def test_records_are_never_much_larger_than_their_bodies() -> None:
    worst = []
    for name, body in _corpus():
        value = CODEC.encode(from_webhook(parse_webhook(body), 1_749_581_448_123))
        worst.append((len(value) - len(body), name, len(body), len(value)))
        assert len(value) <= len(body) + RECORD_OVERHEAD_BOUND, (name, len(body), len(value))
    worst.sort(reverse=True)
    print("largest record - body:", worst[:3])


def test_the_issue_body_keeps_its_numbers_as_sent() -> None:
    body = _issue_body()
    assert len(body) > 1_000_000
    event = from_webhook(parse_webhook(body), 1)
    text = json_text(event.extra)
    assert text == '{"x":[' + ",".join(["1e15"] * 200_000) + "]}"
    assert len(CODEC.encode(event)) <= len(body) + RECORD_OVERHEAD_BOUND
