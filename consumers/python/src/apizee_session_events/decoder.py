"""Decoding the records of the bridge's event topics, in either framing.

    decoder = Decoder()                       # single-object records: bundled schemas
    fields = decoder.decode(message.value())  # {"eventType": ..., "ticketId": ..., ...}

Single-object records (`C3 01` + fingerprint) are resolved against the schemas this package
bundles: the current set and every released one. Confluent-framed records (`00` + id) against
a Schema Registry, each id fetched once and cached. Either way the body is read into the
current schema of that record (Avro schema resolution), so a consumer sees one shape per
event type whichever bridge version wrote it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import SchemaParseException

from apizee_session_events.bundled import current_schemas, full_name, released_sets
from apizee_session_events.errors import DecodeError, UnknownSchemaError
from apizee_session_events.framing import Framing, framing_of, schema_fingerprint
from apizee_session_events.registry import SchemaFetcher


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One record with what its framing said about its writer."""

    event_type: str
    """The record's eventType field (for the generic UnknownEvent, the type Apizee sent)."""
    schema_name: str
    """Full name of the writer's record, e.g. com.apizee.sessionevents.TicketNew."""
    framing: Framing
    writer: str
    """The writer schema's fingerprint (hex) or Schema Registry id (decimal)."""
    fields: dict[str, Any]
    """The fields in the current schema's shape; timestamps as aware datetimes (UTC)."""


@dataclass(frozen=True, slots=True)
class _Writer:
    full_name: str
    parsed: Any


class Decoder:
    """Decodes records of the bridge's topics in either framing (see the module doc).

    `registry_url` (a Confluent-compatible API, e.g. Apicurio's `.../apis/ccompat/v7`) is
    needed only for Confluent-framed records; `username`/`password` for Basic auth, `ca_file`
    to verify an https registry. `released_dirs` replaces the bundled released sets with
    directories of your own (each holding `v*/fingerprints.json`); `[]` for none.
    `writer_schemas` adds writer schemas for single-object records: `.avsc` files, or folders
    whose `.avsc` files (recursively) are added, each known by its fingerprint (e.g. the
    schemas of a bridge release newer than this package). Safe to share between threads.
    """

    def __init__(
        self,
        registry_url: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | Path | None = None,
        timeout_seconds: float = 10.0,
        released_dirs: Iterable[str | Path] | None = None,
        writer_schemas: Iterable[str | Path] = (),
    ) -> None:
        self._registry = (
            SchemaFetcher(
                registry_url,
                username=username,
                password=password,
                ca_file=ca_file,
                timeout_seconds=timeout_seconds,
            )
            if registry_url
            else None
        )
        self._readers: dict[str, Any] = {}
        self._by_fingerprint: dict[bytes, _Writer] = {}
        for entry in current_schemas():
            writer = _Writer(entry.full_name, parse_schema(entry.schema))
            self._readers[writer.full_name] = writer.parsed
            self._by_fingerprint[entry.fingerprint] = writer
        if released_dirs is None:
            for released in released_sets().values():
                for entry in released:
                    self._add(entry.fingerprint, entry.schema)
        else:
            for directory in released_dirs:
                self._add_released(Path(directory))
        for path in writer_schemas:
            self._add_writer_schemas(Path(path))
        self._by_id: dict[int, _Writer] = {}
        self._lock = threading.Lock()

    @property
    def registry_url(self) -> str | None:
        return self._registry.url if self._registry is not None else None

    def _add(self, fingerprint: bytes, schema: dict[str, Any]) -> None:
        if fingerprint not in self._by_fingerprint:
            self._by_fingerprint[fingerprint] = _Writer(full_name(schema), parse_schema(schema))

    def _add_released(self, directory: Path) -> None:
        """Every released set under `directory` (v1/, v2/, ...: each has fingerprints.json)."""
        for index in sorted(directory.glob("*/fingerprints.json")):
            entries: dict[str, dict[str, Any]] = json.loads(index.read_text(encoding="utf-8"))
            for fingerprint_hex, entry in entries.items():
                schema = json.loads((index.parent / entry["file"]).read_text(encoding="utf-8"))
                self._add(bytes.fromhex(fingerprint_hex), schema)

    def _add_writer_schemas(self, path: Path) -> None:
        files = sorted(path.rglob("*.avsc")) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no .avsc file in {path}")
        for file in files:
            try:
                schema = json.loads(file.read_text(encoding="utf-8"))
                fingerprint = schema_fingerprint(schema)
            except (ValueError, TypeError, KeyError, SchemaParseException) as exc:
                raise ValueError(f"{file} is not an Avro schema: {exc}") from None
            self._add(fingerprint, schema)

    @property
    def fingerprints(self) -> frozenset[str]:
        """The single-object fingerprints (hex) this decoder resolves without a registry."""
        return frozenset(f.hex() for f in self._by_fingerprint)

    def decode(self, value: bytes) -> dict[str, Any]:
        """The fields of the record in `value` (a Kafka record value as the bridge wrote it),
        in the current schema's shape: `eventId`, `eventType`, `ticketId`, `occurredAt` (an
        aware UTC datetime), the attributes of that eventType, `extra` (JSON text), ...

        Raises UnknownSchemaError naming the fingerprint or registry id when no schema is
        found, DecodeError for bytes that are not a framed record of ours, and
        RegistryUnavailableError when the registry cannot be asked (all DecodeErrors).
        """
        return self.decode_record(value).fields

    def decode_record(self, value: bytes) -> DecodedRecord:
        """Like decode(), with the writer's framing, schema name and fingerprint or id."""
        framed = framing_of(value)
        if framed is None:
            raise DecodeError("not a single-object or Confluent framed Avro record")
        framing, ref, start = framed
        if isinstance(ref, bytes):
            found = self._by_fingerprint.get(ref)
            if found is None:
                raise UnknownSchemaError(
                    f"no schema with fingerprint {ref.hex()}: not among the schemas of"
                    " apizee-session-events (written by a newer bridge? upgrade"
                    " apizee-session-events)"
                )
            writer, ref_text = found, ref.hex()
        else:
            writer, ref_text = self._by_registry_id(ref), str(ref)
        reader = self._readers.get(writer.full_name, writer.parsed)
        try:
            fields = schemaless_reader(BytesIO(value[start:]), writer.parsed, reader)
        except (ValueError, TypeError, EOFError, IndexError, UnicodeDecodeError) as exc:
            raise DecodeError(f"corrupt {writer.full_name} record: {exc}") from None
        if not isinstance(fields, dict):
            raise DecodeError(f"{writer.full_name} is not a record schema")
        return DecodedRecord(
            event_type=str(fields.get("eventType", "")),
            schema_name=writer.full_name,
            framing=framing,
            writer=ref_text,
            fields=fields,
        )

    def _by_registry_id(self, schema_id: int) -> _Writer:
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        if self._registry is None:
            raise UnknownSchemaError(
                f"no schema with registry id {schema_id}: a Confluent-framed record, and this"
                " Decoder has no registry_url"
            )
        schema = self._registry.schema(schema_id)
        writer = _Writer(full_name(schema), parse_schema(schema))
        with self._lock:
            self._by_id[schema_id] = writer
        return writer
