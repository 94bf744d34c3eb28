"""The two framings the bridge writes, and the Avro fingerprint that names a schema.

Single-object encoding (the Avro specification's): `C3 01` + the 8-byte CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form (little-endian, as Java writes it)
+ the body. Confluent wire format (with a Schema Registry): `00` + 4-byte big-endian schema id
+ the body.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = b"\x00"
SINGLE_OBJECT_HEADER_BYTES: Final = 10
CONFLUENT_HEADER_BYTES: Final = 5

Framing = Literal["single-object", "confluent"]


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the schema's Parsing Canonical Form, in single-object header order."""
    canonical = to_parsing_canonical_form(parse_schema(schema))
    return bytes.fromhex(_fingerprint(canonical, "CRC-64-AVRO"))


def single_object_header(fingerprint: bytes) -> bytes:
    return SINGLE_OBJECT_MAGIC + fingerprint


def confluent_header(schema_id: int) -> bytes:
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")


def framing_of(value: bytes) -> tuple[Framing, bytes | int, int] | None:
    """(framing, fingerprint or schema id, where the body starts), or None for other bytes."""
    if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= SINGLE_OBJECT_HEADER_BYTES:
        return "single-object", value[2:SINGLE_OBJECT_HEADER_BYTES], SINGLE_OBJECT_HEADER_BYTES
    if value[:1] == CONFLUENT_MAGIC and len(value) >= CONFLUENT_HEADER_BYTES:
        schema_id = int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big")
        return "confluent", schema_id, CONFLUENT_HEADER_BYTES
    return None
