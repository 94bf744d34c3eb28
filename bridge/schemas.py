"""Build the Avro schemas of every eventType from the catalog, and write them to schemas/.

Event schemas are self-contained (shared named types defined inline at first use), so any
Avro library can read one file alone; the shared types are also written on their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from apizee_session_events.framing import schema_fingerprint

from bridge.catalog import (
    ATTRIBUTES,
    EVENTS,
    NAMESPACE,
    UNKNOWN_RECORD_NAME,
    EventSpec,
)

Schema = dict[str, Any]

_TIMESTAMP_MILLIS: Final = {"type": "long", "logicalType": "timestamp-millis"}


def _shared_types() -> dict[str, Schema]:
    """Named types shared by several events, in dependency order (full name -> schema)."""
    person: Schema = {
        "type": "record",
        "name": "Person",
        "namespace": NAMESPACE,
        "doc": "An agent or a requestor. Apizee may send empty strings for unknown values.",
        "fields": [
            {"name": n, "type": ["null", "string"], "default": None, "doc": d}
            for n, d in (
                ("email", "E-mail address."),
                ("phone", "Phone number as Apizee stores it (free text, may be empty)."),
                ("firstname", "First name (may be empty)."),
                ("lastname", "Last name (may hold the whole name)."),
            )
        ],
    }
    geolocation: Schema = {
        "type": "record",
        "name": "GeoLocation",
        "namespace": NAMESPACE,
        "doc": "WGS84 coordinates in decimal degrees.",
        "fields": [
            {"name": "lat", "type": "double", "doc": "Latitude, -90..90."},
            {"name": "lng", "type": "double", "doc": "Longitude, -180..180."},
        ],
    }
    question: Schema = {
        "type": "record",
        "name": "SurveyQuestion",
        "namespace": NAMESPACE,
        "doc": "One answered survey question.",
        "fields": [
            {"name": "id", "type": "long", "doc": "SurveyQuestionAnswer id."},
            {
                "name": "label",
                "type": {"type": "map", "values": "string"},
                "default": {},
                "doc": "The question's text per language code (fr, en, ...).",
            },
            {
                "name": "answer",
                "type": ["null", "string"],
                "default": None,
                "doc": "The answer: Not satisfied, Satisfied, Very satisfied.",
            },
        ],
    }
    answer: Schema = {
        "type": "record",
        "name": "SurveyAnswer",
        "namespace": NAMESPACE,
        "doc": "The answers of a satisfaction survey.",
        "fields": [
            {
                "name": "questions",
                "type": {"type": "array", "items": f"{NAMESPACE}.SurveyQuestion"},
                "default": [],
                "doc": "Answered questions in Apizee's order.",
            },
            {
                "name": "feedback",
                "type": ["null", "string"],
                "default": None,
                "doc": "Free-text feedback.",
            },
        ],
    }
    source: Schema = {
        "type": "enum",
        "name": "EventSource",
        "namespace": NAMESPACE,
        "doc": "Which path brought the event: the webhook, or the poller filling a gap.",
        "symbols": ["WEBHOOK", "POLLER"],
    }
    return {f"{NAMESPACE}.{s['name']}": s for s in (source, person, geolocation, question, answer)}


SHARED_TYPES: Final[dict[str, Schema]] = _shared_types()


def _inline(type_name: str, defined: set[str]) -> Any:
    """The Avro type for `type_name`, defining shared named types inline at first use."""
    if type_name not in SHARED_TYPES:
        return type_name
    if type_name in defined:
        return type_name
    defined.add(type_name)
    schema = json.loads(json.dumps(SHARED_TYPES[type_name]))
    for fld in schema.get("fields", []):
        ftype = fld["type"]
        if isinstance(ftype, dict) and ftype.get("type") == "array":
            ftype["items"] = _inline(ftype["items"], defined)
    return schema


def _common_fields(defined: set[str]) -> list[Schema]:
    return [
        {
            "name": "eventId",
            "type": "long",
            "doc": "Apizee's event id (webhook objectId, REST id); the deduplication key.",
        },
        {"name": "eventType", "type": "string", "doc": "Apizee eventType, e.g. media.OCRDone."},
        {
            "name": "eventCode",
            "type": ["null", "int"],
            "default": None,
            "doc": "Apizee's numeric event code; only webhooks carry it.",
        },
        {"name": "ticketId", "type": "long", "doc": "Ticket the event belongs to (record key)."},
        {"name": "conversationId", "type": "long", "doc": "Apizee conversation id."},
        {
            "name": "occurredAt",
            "type": dict(_TIMESTAMP_MILLIS),
            "doc": "When Apizee recorded the event (webhook time / REST timestamp).",
        },
        {
            "name": "source",
            "type": _inline(f"{NAMESPACE}.EventSource", defined),
            "doc": "WEBHOOK or POLLER (a gap the poller filled from the REST API).",
        },
        {
            "name": "receivedAt",
            "type": dict(_TIMESTAMP_MILLIS),
            "doc": "When the bridge received the event.",
        },
        {
            "name": "extra",
            "type": ["null", "string"],
            "default": None,
            "doc": (
                "JSON object text (RFC 8259, numbers as Apizee wrote them) of everything "
                "Apizee sent that this schema has no field for (a key naming an attribute "
                "holds its unknown parts; '_envelope' holds unknown envelope fields; an "
                "attribute whose name starts with '_' is kept with one more '_' in front); "
                "null when nothing."
            ),
        },
    ]


def event_schema(spec: EventSpec) -> Schema:
    defined: set[str] = set()
    fields = _common_fields(defined)
    for name in spec.attributes:
        attr = ATTRIBUTES[name]
        # Attributes are optional: Apizee may omit one, and fields added later must be.
        fields.append(
            {
                "name": name,
                "type": ["null", _inline(attr.avro_type, defined)],
                "default": None,
                "doc": attr.doc,
            }
        )
    return {
        "type": "record",
        "name": spec.record_name,
        "namespace": NAMESPACE,
        "doc": f"{spec.event_type} ({spec.category}): {spec.doc}",
        "fields": fields,
    }


def unknown_schema() -> Schema:
    fields = _common_fields(set())
    return {
        "type": "record",
        "name": UNKNOWN_RECORD_NAME,
        "namespace": NAMESPACE,
        "doc": (
            "An event whose eventType the bridge's catalog does not know (topic "
            "{prefix}.unknown): all its attributes are kept as JSON text in 'extra'."
        ),
        "fields": fields,
    }


def all_event_schemas() -> dict[str, Schema]:
    """eventType -> self-contained schema, plus the generic schema under key ''."""
    schemas = {t: event_schema(spec) for t, spec in EVENTS.items()}
    schemas[""] = unknown_schema()
    return schemas


def render(schema: Schema) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def schema_path(event_type: str) -> str:
    """Where the schema of `event_type` ('' for the generic one) lives under schemas/."""
    return f"events/{event_type}.avsc" if event_type else f"generic/{UNKNOWN_RECORD_NAME}.avsc"


def schema_files() -> dict[str, str]:
    """Relative path under schemas/ -> file text: what `make schemas` writes."""
    files: dict[str, str] = {}
    for event_type, schema in all_event_schemas().items():
        files[schema_path(event_type)] = render(schema)
    for full_name, schema in SHARED_TYPES.items():
        files[f"shared/{full_name}.avsc"] = render(schema)
    # What a consumer of single-object encoded records needs: fingerprint -> schema file.
    index = {
        schema_fingerprint(schema).hex(): {
            "eventType": event_type or None,
            "fullName": f"{schema['namespace']}.{schema['name']}",
            "file": schema_path(event_type),
        }
        for event_type, schema in all_event_schemas().items()
    }
    files["fingerprints.json"] = json.dumps(index, indent=2, sort_keys=True) + "\n"
    return files


def write_schema_files(directory: Path) -> list[Path]:
    """Write every generated file under `directory`; stale .avsc files there are removed."""
    files = schema_files()
    written = []
    for sub in ("events", "generic", "shared"):
        for stale in (directory / sub).glob("*.avsc"):
            if str(stale.relative_to(directory)) not in files:
                stale.unlink()
    for rel, text in sorted(files.items()):
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
