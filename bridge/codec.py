"""Avro encoding of canonical events (fastavro), in two framings, and the exact inverse.

Single-object encoding (default): `C3 01` + 8-byte CRC-64-AVRO fingerprint (little-endian,
as Java writes it) + body. Confluent wire format (with a Schema Registry): `00` + 4-byte
big-endian schema id + body. Schemas are built from the catalog and parsed once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any, Final

import orjson
from apizee_session_events.framing import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    confluent_header,
    schema_fingerprint,
    single_object_header,
)
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from bridge.catalog import ATTRIBUTES, EVENTS
from bridge.errors import CodecError, UnknownSchemaError
from bridge.models import CanonicalEvent, JsonFloat, Source
from bridge.schemas import SHARED_TYPES, Schema, all_event_schemas

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLI: Final = timedelta(milliseconds=1)

_COMMON_FIELDS: Final = frozenset(
    {"eventId", "eventType", "eventCode", "ticketId", "conversationId", "occurredAt"}
    | {"source", "receivedAt", "extra"}
)

# The schema of events whose eventType the catalog does not know.
UNKNOWN_EVENT_TYPE: Final = ""


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """One schema, parsed, with what framing needs precomputed."""

    event_type: str
    full_name: str
    schema: Schema
    parsed: Any
    parsed_for_writing: Any
    fingerprint: bytes
    schema_id: int | None
    # Attributes whose union branch is a named record, by branch name: the encoder names
    # the branch (fastavro's tuple notation) instead of fastavro trying each one.
    record_attributes: tuple[tuple[str, str], ...]

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def header(self) -> bytes:
        if self.schema_id is None:
            return single_object_header(self.fingerprint)
        return confluent_header(self.schema_id)


# orjson writes integers within these bounds itself; others are written as their digits.
_ORJSON_INT_MIN: Final = -(2**63)
_ORJSON_INT_MAX: Final = 2**64 - 1


def _number_text(value: Any) -> orjson.Fragment:
    if isinstance(value, JsonFloat):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _big_ints_as_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if _ORJSON_INT_MIN <= value <= _ORJSON_INT_MAX:
            return value
        return orjson.Fragment(str(value))
    if isinstance(value, dict):
        return {k: _big_ints_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_ints_as_text(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """Compact RFC 8259 JSON with sorted keys, never longer than the text it was parsed from:
    numbers parsed as JsonFloat keep their text, integers beyond 64 bits their digits."""
    try:
        return orjson.dumps(value, default=_number_text, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits (orjson refuses them): rare enough for a second pass.
        return orjson.dumps(
            _big_ints_as_text(value), default=_number_text, option=orjson.OPT_SORT_KEYS
        ).decode()


def _without_logical_types(node: Any) -> Any:
    """The same schema minus logicalType annotations: identical bytes, cheaper writes.

    The encoder then takes our int milliseconds as plain longs instead of running
    fastavro's datetime conversion on every record; the fingerprint is unchanged because
    the Parsing Canonical Form drops logicalType anyway.
    """
    if isinstance(node, list):
        return [_without_logical_types(n) for n in node]
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    return node


def _to_millis(value: datetime | int) -> int:
    return value if isinstance(value, int) else (value - _EPOCH) // _MILLI


def _record_attributes(event_type: str) -> tuple[tuple[str, str], ...]:
    spec = EVENTS.get(event_type)
    if spec is None:
        return ()
    return tuple(
        (name, ATTRIBUTES[name].avro_type)
        for name in spec.attributes
        if ATTRIBUTES[name].avro_type in SHARED_TYPES
    )


class Codec:
    """Encodes canonical events to framed Avro and decodes framed Avro back.

    With `schema_ids` (eventType -> Schema Registry id, '' for the generic schema) every
    record is framed the Confluent way; without, as Avro single-object encoding.
    """

    def __init__(self, schema_ids: Mapping[str, int] | None = None) -> None:
        self._writers: dict[str, WriterSchema] = {}
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        self._by_id: dict[int, WriterSchema] = {}
        for event_type, schema in all_event_schemas().items():
            schema_id = None if schema_ids is None else schema_ids[event_type]
            writer = WriterSchema(
                event_type=event_type,
                full_name=f"{schema['namespace']}.{schema['name']}",
                schema=schema,
                parsed=parse_schema(schema),
                parsed_for_writing=parse_schema(_without_logical_types(schema)),
                fingerprint=schema_fingerprint(schema),
                schema_id=schema_id,
                record_attributes=_record_attributes(event_type),
            )
            self._writers[event_type] = writer
            self._by_fingerprint[writer.fingerprint] = writer
            if schema_id is not None:
                self._by_id[schema_id] = writer
        self._unknown = self._writers[UNKNOWN_EVENT_TYPE]
        self._headers = {t: w.header for t, w in self._writers.items()}

    @property
    def writers(self) -> Mapping[str, WriterSchema]:
        return self._writers

    def writer_for(self, event_type: str) -> WriterSchema:
        return self._writers.get(event_type, self._unknown)

    def encode(self, event: CanonicalEvent) -> bytes:
        writer = self._writers.get(event.event_type, self._unknown)
        record = {
            "eventId": event.event_id,
            "eventType": event.event_type,
            "eventCode": event.event_code,
            "ticketId": event.ticket_id,
            "conversationId": event.conversation_id,
            "occurredAt": event.occurred_at_ms,
            "source": event.source.value,
            "receivedAt": event.received_at_ms,
            "extra": json_text(event.extra) if event.extra else None,
            **event.attributes,
        }
        for name, branch in writer.record_attributes:
            value = record.get(name)
            if value is not None:
                record[name] = (branch, value)
        buf = BytesIO()
        buf.write(self._headers[writer.event_type])
        try:
            schemaless_writer(buf, writer.parsed_for_writing, record)
        except (ValueError, TypeError, OverflowError, KeyError) as exc:
            raise CodecError(
                f"cannot encode {event.event_type} as {writer.full_name}: {exc}"
            ) from None
        return buf.getvalue()

    def writer_of(self, data: bytes) -> tuple[WriterSchema, int]:
        """The writer schema a framed record names, and where its body starts."""
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= 10:
            writer = self._by_fingerprint.get(data[2:10])
            if writer is None:
                raise UnknownSchemaError(f"no schema with fingerprint {data[2:10].hex()}")
            return writer, 10
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            schema_id = int.from_bytes(data[1:5], "big")
            writer = self._by_id.get(schema_id)
            if writer is None:
                raise UnknownSchemaError(f"no schema with registry id {schema_id}")
            return writer, 5
        raise CodecError("not a single-object or Confluent framed Avro record")

    def decode_record(self, data: bytes) -> dict[str, Any]:
        """The Avro record as fastavro reads it (logical types as datetimes)."""
        writer, start = self.writer_of(data)
        try:
            record = schemaless_reader(BytesIO(data[start:]), writer.parsed, None)
        except (ValueError, TypeError, EOFError, IndexError, UnicodeDecodeError) as exc:
            raise CodecError(f"corrupt {writer.full_name} record: {exc}") from None
        if not isinstance(record, dict):
            raise CodecError(f"{writer.full_name} is not a record schema")
        return record

    def decode(self, data: bytes) -> CanonicalEvent:
        """Exact inverse of `encode`."""
        return event_from_fields(self.decode_record(data))


def event_from_fields(fields: Mapping[str, Any]) -> CanonicalEvent:
    """The canonical event of a decoded record's fields (`Codec.decode_record`, or
    `apizee_session_events.Decoder` for either framing)."""
    record = dict(fields)
    extra = record.pop("extra", None)
    return CanonicalEvent(
        event_id=record["eventId"],
        event_type=record["eventType"],
        event_code=record["eventCode"],
        ticket_id=record["ticketId"],
        conversation_id=record["conversationId"],
        occurred_at_ms=_to_millis(record["occurredAt"]),
        source=Source(record["source"]),
        received_at_ms=_to_millis(record["receivedAt"]),
        attributes={k: v for k, v in record.items() if k not in _COMMON_FIELDS},
        extra=json.loads(extra) if extra is not None else {},
    )
