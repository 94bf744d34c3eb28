"""The codec's compiled Avro writer against fastavro: the same bytes for every event (seed
examples and generated ones), and values outside the schema refused the same way.
"""

from __future__ import annotations

import json
from dataclasses import replace
from io import BytesIO
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings

from bridge.catalog import EVENTS
from bridge.codec import Codec
from bridge.errors import CodecError
from bridge.models import CanonicalEvent, from_rest, from_webhook, parse_rest_item, parse_webhook
from tests.unit.conftest import load_fixture, webhook
from tests.unit.strategies import rest_items, webhook_bodies

CODEC = Codec()


def _fastavro_bytes(event: CanonicalEvent) -> bytes:
    """What the codec wrote before it had its own writer: fastavro's schemaless_writer."""
    writer = CODEC.writer_for(event.event_type)
    assert writer.write is not None, "every bridge schema has a compiled writer"
    fallback = replace(writer, write=None)
    codec = Codec.__new__(Codec)
    codec.__dict__.update(CODEC.__dict__)
    codec._writers = {**CODEC._writers, writer.event_type: fallback}
    return codec.encode(event)


def _check(event: CanonicalEvent) -> None:
    assert CODEC.encode(event) == _fastavro_bytes(event)


def test_every_schema_has_a_compiled_writer() -> None:
    assert all(w.write is not None for w in CODEC.writers.values())


def test_seed_examples_encode_as_fastavro_does() -> None:
    props = load_fixture("seed_props_examples.json")
    for event_type in EVENTS:
        _check(from_webhook(parse_webhook_dict(webhook(event_type, props.get(event_type, {}))), 1))
    _check(from_webhook(parse_webhook_dict(load_fixture("seed_webhook_example.json")), 1))


def parse_webhook_dict(body: dict[str, Any]) -> Any:
    return parse_webhook(json.dumps(body).encode())


@given(webhook_bodies())
@settings(max_examples=300)
def test_any_webhook_event_encodes_as_fastavro_does(body: dict[str, Any]) -> None:
    _check(from_webhook(parse_webhook_dict(body), 1_700_000_000_000))


@given(rest_items())
@settings(max_examples=150)
def test_any_rest_event_encodes_as_fastavro_does(item: dict[str, Any]) -> None:
    _check(from_rest(parse_rest_item(item), 42, 1_700_000_000_000))


@pytest.mark.parametrize(
    "attributes",
    [
        {"mediaId": "not a long"},
        {"mediaId": 1 << 63},
        {"mediaId": 1.5},
    ],
)
def test_values_outside_the_schema_are_codec_errors(attributes: dict[str, Any]) -> None:
    event = from_webhook(parse_webhook_dict(webhook("media.pictureTaken", {"mediaId": 1})), 1)
    broken = replace(event, attributes={**event.attributes, **attributes})
    with pytest.raises(CodecError, match=r"media\.pictureTaken"):
        CODEC.encode(broken)
    with pytest.raises(CodecError):
        _fastavro_bytes(broken)


def test_an_unknown_enum_symbol_is_a_codec_error() -> None:
    event = from_webhook(parse_webhook_dict(webhook("media.pictureTaken", {"mediaId": 1})), 1)
    broken = replace(event, source="NOWHERE")  # type: ignore[arg-type]
    with pytest.raises((CodecError, AttributeError)):
        CODEC.encode(broken)


def test_fastavro_alone_writes_the_same_body() -> None:
    event = from_webhook(parse_webhook_dict(load_fixture("seed_webhook_example.json")), 1)
    writer = CODEC.writer_for(event.event_type)
    record = CODEC.decode_record(CODEC.encode(event))
    buf = BytesIO()
    schemaless_writer(buf, writer.parsed, record)
    assert CODEC.encode(event)[len(writer.header) :] == buf.getvalue()
