"""Reading what the bridge writes, for Python consumers: one entry point for both framings.

    decoder = Decoder(registry_url="https://registry.example.com/apis/ccompat/v7")
    record = decoder.decode(message.value())   # any record of the category/unknown topics
    record.event_type, record.fields["ticketId"], record.fields["occurredAt"]

Single-object records (`C3 01` + fingerprint) are resolved against the schemas this package
bundles and every released set under `schemas/released/`; Confluent-framed ones (`00` + id)
against the registry, each id fetched once and cached. Either way the body is read into the
current schema of that record (Avro schema resolution), so a consumer sees one shape per
event type whichever bridge version wrote it. A record naming a schema that is nowhere raises
UnknownSchemaError with the fingerprint or id.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Final, Literal

from fastavro import parse_schema, schemaless_reader

from bridge.catalog import CATEGORIES, UNKNOWN_CATEGORY
from bridge.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC
from bridge.errors import (
    CodecError,
    SchemaRegistryUnavailableError,
    UnknownSchemaError,
)
from bridge.registry import CONTENT_TYPE, basic_auth_header, error_message, ssl_context
from bridge.schemas import Schema, all_event_schemas, schema_fingerprint

# schemas/released/ of a source checkout; absent from an installed wheel.
DEFAULT_RELEASED_DIR: Final = Path(__file__).resolve().parents[1] / "schemas" / "released"

Framing = Literal["single-object", "confluent"]


def event_topics(prefix: str) -> list[str]:
    """The topics holding Avro records under `prefix` (BRIDGE_KAFKA_TOPIC_PREFIX): one per
    category and `{prefix}.unknown`. Not `{prefix}.dlq` (raw bodies) nor the state topic."""
    return [f"{prefix}.{category}" for category in (*CATEGORIES, UNKNOWN_CATEGORY)]


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One record as a consumer reads it."""

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


def _full_name(schema: Schema) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


class Decoder:
    """Decodes records of the bridge's topics in either framing (see the module doc).

    `registry_url` (Confluent-compatible API, e.g. Apicurio's `.../apis/ccompat/v7`) is needed
    only for Confluent-framed records; `username`/`password` for Basic auth, `ca_file` to
    verify an https registry. `released_dirs` defaults to `schemas/released/` when present.
    Safe to share between threads.
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
    ) -> None:
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self._timeout = timeout_seconds
        self._headers = {"Accept": CONTENT_TYPE}
        if username is not None and password is not None:
            self._headers["Authorization"] = basic_auth_header(username, password)
        self._ssl = ssl_context(Path(ca_file) if ca_file is not None else None)
        self._readers: dict[str, Any] = {}
        self._by_fingerprint: dict[bytes, _Writer] = {}
        for schema in all_event_schemas().values():
            writer = _Writer(_full_name(schema), parse_schema(schema))
            self._readers[writer.full_name] = writer.parsed
            self._by_fingerprint[schema_fingerprint(schema)] = writer
        if released_dirs is None:
            released_dirs = [DEFAULT_RELEASED_DIR] if DEFAULT_RELEASED_DIR.is_dir() else []
        for directory in released_dirs:
            self._add_released(Path(directory))
        self._by_id: dict[int, _Writer] = {}
        self._lock = threading.Lock()

    def _add_released(self, directory: Path) -> None:
        """Every released set under `directory` (v1/, v2/, ...: each has fingerprints.json)."""
        for index in sorted(directory.glob("*/fingerprints.json")):
            entries: dict[str, dict[str, Any]] = json.loads(index.read_text(encoding="utf-8"))
            for fingerprint_hex, entry in entries.items():
                fingerprint = bytes.fromhex(fingerprint_hex)
                if fingerprint in self._by_fingerprint:
                    continue
                schema = json.loads((index.parent / entry["file"]).read_text(encoding="utf-8"))
                self._by_fingerprint[fingerprint] = _Writer(
                    _full_name(schema), parse_schema(schema)
                )

    @property
    def fingerprints(self) -> frozenset[str]:
        """The single-object fingerprints (hex) this decoder resolves without a registry."""
        return frozenset(f.hex() for f in self._by_fingerprint)

    def decode(self, value: bytes) -> DecodedRecord:
        """The record in `value` (a Kafka record value as the bridge wrote it).

        Raises UnknownSchemaError (a CodecError) naming the fingerprint or registry id when
        no schema is found, CodecError for bytes that are not a framed record of ours, and
        SchemaRegistryUnavailableError when the registry cannot be asked.
        """
        framing: Framing
        if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= 10:
            fingerprint = value[2:10]
            found = self._by_fingerprint.get(fingerprint)
            if found is None:
                raise UnknownSchemaError(
                    f"no schema with fingerprint {fingerprint.hex()}: not among the bundled"
                    " schemas nor schemas/released/ (written by a newer bridge? update"
                    " apizee-kafka-bridge)"
                )
            writer, framing, ref, start = found, "single-object", fingerprint.hex(), 10
        elif value[:1] == CONFLUENT_MAGIC and len(value) >= 5:
            schema_id = int.from_bytes(value[1:5], "big")
            writer = self._by_registry_id(schema_id)
            framing, ref, start = "confluent", str(schema_id), 5
        else:
            raise CodecError("not a single-object or Confluent framed Avro record")
        reader = self._readers.get(writer.full_name, writer.parsed)
        try:
            fields = schemaless_reader(BytesIO(value[start:]), writer.parsed, reader)
        except (ValueError, TypeError, EOFError, IndexError, UnicodeDecodeError) as exc:
            raise CodecError(f"corrupt {writer.full_name} record: {exc}") from None
        if not isinstance(fields, dict):
            raise CodecError(f"{writer.full_name} is not a record schema")
        return DecodedRecord(
            event_type=str(fields.get("eventType", "")),
            schema_name=writer.full_name,
            framing=framing,
            writer=ref,
            fields=fields,
        )

    def _by_registry_id(self, schema_id: int) -> _Writer:
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        schema = self._fetch(schema_id)
        writer = _Writer(_full_name(schema), parse_schema(schema))
        with self._lock:
            self._by_id[schema_id] = writer
        return writer

    def _fetch(self, schema_id: int) -> Schema:
        """GET /schemas/ids/{id}: the writer schema the registry holds under that id."""
        if self.registry_url is None:
            raise UnknownSchemaError(
                f"no schema with registry id {schema_id}: a Confluent-framed record, and this"
                " Decoder has no registry_url"
            )
        url = f"{self.registry_url}/schemas/ids/{schema_id}"
        request = urllib.request.Request(url, headers=self._headers)  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310 - http(s) URL given by the caller
                request, timeout=self._timeout, context=self._ssl
            ) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            message = error_message(exc.read())
            if exc.code == 404:
                raise UnknownSchemaError(
                    f"no schema with registry id {schema_id} in {self.registry_url}: {message}"
                ) from None
            raise SchemaRegistryUnavailableError(
                f"{self.registry_url} answered {exc.code} for schema id {schema_id}: {message}",
                outcome="client_error" if exc.code < 500 else "server_error",
                status=exc.code,
            ) from None
        except OSError as exc:
            raise SchemaRegistryUnavailableError(
                f"cannot reach {self.registry_url} for schema id {schema_id}: {exc}",
                outcome="connection_error",
            ) from None
        try:
            schema = json.loads(json.loads(body)["schema"])
        except (ValueError, KeyError, TypeError):
            raise SchemaRegistryUnavailableError(
                f"{self.registry_url} answered schema id {schema_id} without an Avro schema",
                outcome="client_error",
            ) from None
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise CodecError(f"registry schema id {schema_id} is not an Avro record schema")
        return schema
