"""docs/consumers.md's worked example of the fingerprint's hex form is what the bridge writes:
checked against the codec, schemas/fingerprints.json and the Avro specification's CRC-64-AVRO."""

from __future__ import annotations

import json
import re

from fastavro.schema import parse_schema, to_parsing_canonical_form

from bridge.codec import Codec
from bridge.config import KafkaSettings
from bridge.models import CanonicalEvent, Source
from bridge.publisher import Publisher
from bridge.schemas import all_event_schemas
from tests.unit.conftest import REPO

CONSUMERS = (REPO / "docs" / "consumers.md").read_text(encoding="utf-8")
EXAMPLE = CONSUMERS.split("\n## The fingerprint's hex form\n", 1)[1].split("\n## ", 1)[0]

# The Avro specification's reference algorithm ("Schema Fingerprints"), independent of fastavro.
_EMPTY = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def _row(label: str) -> str:
    line = next(line for line in EXAMPLE.splitlines() if line.startswith(f"| {label}"))
    return line.split("|")[2]


def test_the_worked_example_is_what_the_bridge_writes() -> None:
    value = int(re.search(r"`0x([0-9a-f]{16})`", _row("CRC-64-AVRO")).group(1), 16)  # type: ignore[union-attr]
    decimal = int(re.search(r"= (\d+)", _row("CRC-64-AVRO")).group(1))  # type: ignore[union-attr]
    prefix = bytes.fromhex(re.search(r"`([0-9a-f ]+)`", _row("the first 10")).group(1))  # type: ignore[union-attr]
    header = re.search(r"`([0-9a-f]{16})`", _row("`schema-fingerprint`")).group(1)  # type: ignore[union-attr]
    assert "`ticket.closed`" in EXAMPLE
    schema = all_event_schemas()["ticket.closed"]
    canonical = to_parsing_canonical_form(parse_schema(schema)).encode()
    assert crc64_avro(canonical) == value == decimal
    event = CanonicalEvent(1, "ticket.closed", None, 361, 548, 0, Source.WEBHOOK, 0)
    codec = Codec()
    assert codec.encode(event)[:10] == prefix == b"\xc3\x01" + value.to_bytes(8, "little")
    assert codec.writers["ticket.closed"].fingerprint_hex == header
    assert header == prefix[2:].hex() != f"{value:016x}"
    fingerprints = json.loads((REPO / "schemas" / "fingerprints.json").read_text())
    assert fingerprints[header]["eventType"] == "ticket.closed"
    # The header the publisher sends is the same text.
    publisher = Publisher(KafkaSettings(), codec, max_body_bytes=1024)
    assert publisher._routes["ticket.closed"].fingerprint_header == header.encode()


def test_the_conversions_given_in_the_readme_hold() -> None:
    header = _row("`schema-fingerprint`").strip(" `")
    value = int.from_bytes(bytes.fromhex(header), "little")
    assert f"0x{value:016x}" in _row("CRC-64-AVRO")
    # Java's Long.reverseBytes(Long.parseUnsignedLong(h, 16)), in Python.
    assert int.from_bytes(int(header, 16).to_bytes(8, "big"), "little") == value
