"""Avro encoding of canonical events (fastavro), in two framings, and the exact inverse.

Single-object encoding (default): `C3 01` + 8-byte CRC-64-AVRO fingerprint (little-endian,
as Java writes it) + body. Confluent wire format (with a Schema Registry): `00` + 4-byte
big-endian schema id + body. Schemas are built from the catalog and parsed once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any, Final

import orjson
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from bridge.catalog import ATTRIBUTES, EVENTS
from bridge.errors import CodecError, UnknownSchemaError
from bridge.models import CanonicalEvent, Source
from bridge.schemas import SHARED_TYPES, Schema, all_event_schemas, schema_fingerprint

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = b"\x00"
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
    # The compiled writer of parsed_for_writing (None: fastavro writes this schema).
    write: Callable[[bytearray, Any], None] | None = None

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def header(self) -> bytes:
        if self.schema_id is None:
            return SINGLE_OBJECT_MAGIC + self.fingerprint
        return CONFLUENT_MAGIC + self.schema_id.to_bytes(4, "big")


def json_text(value: Any) -> str:
    """Compact JSON with sorted keys; stdlib fallback for integers beyond 64 bits."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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
            parsed_for_writing = parse_schema(_without_logical_types(schema))
            writer = WriterSchema(
                event_type=event_type,
                full_name=f"{schema['namespace']}.{schema['name']}",
                schema=schema,
                parsed=parse_schema(schema),
                parsed_for_writing=parsed_for_writing,
                fingerprint=schema_fingerprint(schema),
                schema_id=schema_id,
                record_attributes=_record_attributes(event_type),
                write=compile_writer(parsed_for_writing),
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
        write = writer.write
        if write is not None:
            out = bytearray(self._headers[writer.event_type])
            try:
                write(out, record)
            except (ValueError, TypeError, OverflowError, KeyError) as exc:
                raise CodecError(
                    f"cannot encode {event.event_type} as {writer.full_name}: {exc}"
                ) from None
            return bytes(out)
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
        record = self.decode_record(data)
        extra = record.pop("extra")
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


# -- a compiled Avro writer for the bridge's schemas ---------------------------------------
# fastavro's schemaless_writer costs ~15 us per event here (per-call set-up, union branch
# validation); these closures, compiled once per schema, write the same bytes in a fraction.
# Schemas with a type they do not handle fall back to fastavro (compile returns None).

_Write = Callable[[bytearray, Any], None]
_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1
_INT_MIN: Final = -(1 << 31)
_INT_MAX: Final = (1 << 31) - 1
_pack_double = struct.Struct("<d").pack


def _write_varint(out: bytearray, n: int) -> None:
    """`n` already zigzagged (non-negative)."""
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_long(out: bytearray, value: Any) -> None:
    if type(value) is not int:
        if not isinstance(value, int):
            raise TypeError(f"{value!r} is not a long")
        value = int(value)
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise OverflowError(f"{value} is out of range for a long")
    _write_varint(out, (value << 1) ^ (value >> 63))


def _write_int(out: bytearray, value: Any) -> None:
    if type(value) is not int:
        if not isinstance(value, int):
            raise TypeError(f"{value!r} is not an int")
        value = int(value)
    if not _INT_MIN <= value <= _INT_MAX:
        raise OverflowError(f"{value} is out of range for an int")
    _write_varint(out, (value << 1) ^ (value >> 63))


def _write_double(out: bytearray, value: Any) -> None:
    if not isinstance(value, float | int):
        raise TypeError(f"{value!r} is not a double")
    out += _pack_double(value)


def _write_string(out: bytearray, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    data = value.encode()
    _write_varint(out, len(data) << 1)
    out += data


def _write_null(out: bytearray, value: Any) -> None:
    if value is not None:
        raise TypeError(f"{value!r} is not null")


_PRIMITIVES: Final[dict[str, _Write]] = {
    "null": _write_null,
    "int": _write_int,
    "long": _write_long,
    "double": _write_double,
    "string": _write_string,
}


def _compile(node: Any, named: dict[str, _Write]) -> _Write | None:
    """A writer for a fastavro-parsed schema node, or None for what it does not handle."""
    if isinstance(node, str):
        return _PRIMITIVES.get(node) or named.get(node)
    if isinstance(node, list):
        return _compile_union(node, named)
    if not isinstance(node, dict):
        return None
    kind = node.get("type")
    if kind == "record":
        return _compile_record(node, named)
    if kind == "enum":
        index = {symbol: i for i, symbol in enumerate(node["symbols"])}
        full_name = node["name"]

        def write_enum(out: bytearray, value: Any) -> None:
            position = index.get(value)
            if position is None:
                raise ValueError(f"{value!r} is not a symbol of {full_name}")
            _write_varint(out, position << 1)

        named[full_name] = write_enum
        return write_enum
    if kind == "array":
        items = _compile(node["items"], named)
        return None if items is None else _array_writer(items)
    if kind == "map":
        values = _compile(node["values"], named)
        return None if values is None else _map_writer(values)
    if isinstance(kind, str) and "logicalType" not in node:
        return _compile(kind, named)
    return None


def _compile_union(branches: list[Any], named: dict[str, _Write]) -> _Write | None:
    # Only [null, T] and [T, null]: the branch is chosen by None-ness, as fastavro does.
    if len(branches) != 2 or "null" not in branches:
        return None
    null_index = branches.index("null")
    other = _compile(branches[1 - null_index], named)
    if other is None:
        return None
    null_tag = bytes([null_index << 1])
    other_tag = bytes([(1 - null_index) << 1])

    def write_optional(out: bytearray, value: Any) -> None:
        if value is None:
            out += null_tag
        else:
            out += other_tag
            other(out, value)

    return write_optional


def _compile_record(node: dict[str, Any], named: dict[str, _Write]) -> _Write | None:
    fields: list[tuple[str, Any, _Write]] = []
    full_name = node["name"]
    for field in node["fields"]:
        writer = _compile(field["type"], named)
        if writer is None:
            return None
        fields.append((field["name"], field.get("default"), writer))
    compiled = tuple(fields)

    def write_record(out: bytearray, value: Any) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"{type(value).__name__} is not a {full_name} record")
        get = value.get
        for name, default, writer in compiled:
            writer(out, get(name, default))

    named[full_name] = write_record
    return write_record


def _array_writer(items: _Write) -> _Write:
    def write_array(out: bytearray, value: Any) -> None:
        if not isinstance(value, list | tuple):
            raise TypeError(f"{type(value).__name__} is not an array")
        if value:
            _write_varint(out, len(value) << 1)
            for item in value:
                items(out, item)
        out.append(0)

    return write_array


def _map_writer(values: _Write) -> _Write:
    def write_map(out: bytearray, value: Any) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"{type(value).__name__} is not a map")
        if value:
            _write_varint(out, len(value) << 1)
            for key, item in value.items():
                _write_string(out, key)
                values(out, item)
        out.append(0)

    return write_map


def compile_writer(parsed_schema: Any) -> _Write | None:
    """A writer of records of `parsed_schema` (fastavro-parsed, without logical types)."""
    return _compile(parsed_schema, {})
