"""schemas/: the files consumers read agree with the catalog, and evolve compatibly."""

from __future__ import annotations

import copy
import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from bridge.catalog import ATTRIBUTES, EVENTS
from bridge.cli import main
from bridge.codec import Codec
from bridge.models import from_webhook, parse_webhook
from bridge.schemas import schema_files, schema_path
from tests.unit.conftest import REPO, webhook

SCHEMAS = REPO / "schemas"
RELEASED = SCHEMAS / "released"
COMMON = [
    "eventId",
    "eventType",
    "eventCode",
    "ticketId",
    "conversationId",
    "occurredAt",
    "source",
    "receivedAt",
    "extra",
]
CODEC = Codec()


def _load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def test_committed_files_are_exactly_what_the_catalog_generates() -> None:
    generated = schema_files()
    committed = {
        str(p.relative_to(SCHEMAS))
        for p in SCHEMAS.rglob("*")
        if p.is_file() and RELEASED not in p.parents and p.suffix in {".avsc", ".json"}
    }
    assert committed == set(generated), "run `make schemas`"
    for rel, text in generated.items():
        assert (SCHEMAS / rel).read_text(encoding="utf-8") == text, f"{rel}: run `make schemas`"


def test_cli_check_detects_a_stale_file(tmp_path: Path) -> None:
    assert main(["schemas", str(tmp_path), "--write"]) == 0
    assert main(["schemas", str(tmp_path), "--check"]) == 0
    target = tmp_path / schema_path("media.OCRDone")
    target.write_text(target.read_text().replace("OCR", "ocr"))
    assert main(["schemas", str(tmp_path), "--check"]) == 1


def test_each_event_schema_has_common_fields_first_then_optional_attributes() -> None:
    for event_type, spec in EVENTS.items():
        schema = _load(SCHEMAS / schema_path(event_type))
        parse_schema(schema)  # each file stands alone
        names = [f["name"] for f in schema["fields"]]
        assert names == COMMON + list(spec.attributes), event_type
        assert all(f.get("doc") for f in schema["fields"]), event_type
        assert schema["doc"].startswith(event_type)
        for fld in schema["fields"][len(COMMON) :]:
            assert fld["type"][0] == "null"
            assert fld["default"] is None
            assert fld["doc"] == ATTRIBUTES[fld["name"]].doc
        for ts in ("occurredAt", "receivedAt"):
            fld = schema["fields"][COMMON.index(ts)]
            assert fld["type"] == {"type": "long", "logicalType": "timestamp-millis"}


def _named_definitions(node: Any, found: dict[str, Any]) -> None:
    """Collect every inline named type definition by full name."""
    if isinstance(node, list):
        for item in node:
            _named_definitions(item, found)
    elif isinstance(node, dict):
        for value in node.values():
            _named_definitions(value, found)
        if node.get("type") in ("record", "enum") and "name" in node:
            found[f"{node['namespace']}.{node['name']}"] = node


def _by_name(node: Any) -> Any:
    """A definition with nested named definitions replaced by references."""
    if isinstance(node, list):
        return [_by_name(i) for i in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum") and "name" in node:
            return f"{node['namespace']}.{node['name']}"
        return {k: _by_name(v) for k, v in node.items()}
    return node


def test_shared_files_match_the_inline_definitions() -> None:
    inline: dict[str, Any] = {}
    for event_type in EVENTS:
        _named_definitions(_load(SCHEMAS / schema_path(event_type)), inline)
    shared = {p.stem: _load(p) for p in (SCHEMAS / "shared").glob("*.avsc")}
    assert set(shared) <= set(inline)
    for name, schema in shared.items():
        definition = inline[name]
        flat = {k: _by_name(v) if k == "fields" else v for k, v in definition.items()}
        assert flat == schema, name


def _samples(event_type: str) -> list[dict[str, Any]]:
    """Avro records of one type: every attribute absent, and every attribute present."""
    full = {
        "agent": {"email": "a@b.c", "phone": "", "firstname": "A", "lastname": "B"},
        "requestor": {"email": "r@b.c", "phone": "06", "firstname": "", "lastname": "R"},
        "geoloc": {"lat": 48.65, "lng": -3.36},
        "mediaId": 342432,
        "text": "Lorem\nipsum",
        "oldPriority": 1,
        "newPriority": 0,
        "surveyAnswer": {"questions": [{"id": 12, "label": {"fr": "Q"}}], "feedback": "ok"},
        "unknownThing": 1,
    }
    spec = EVENTS.get(event_type)
    attrs = {k: v for k, v in full.items() if spec is None or k in spec.attributes}
    type_name = event_type or "whiteboard.drawn"
    return [
        CODEC.decode_record(CODEC.encode(from_webhook(parse_webhook(body), 1)))
        for body in (
            json.dumps(webhook(type_name, {})).encode(),
            json.dumps(webhook(type_name, attrs)).encode(),
        )
    ]


def _resolve(writer: dict[str, Any], reader: dict[str, Any], record: dict[str, Any]) -> None:
    buf = BytesIO()
    schemaless_writer(buf, parse_schema(writer), record)
    buf.seek(0)
    schemaless_reader(buf, parse_schema(writer), parse_schema(reader))


def check_compatible(old: dict[str, Any], new: dict[str, Any], samples: list[Any]) -> None:
    """Old readers read new data and new readers read old data (fastavro resolution)."""
    for record in samples:
        _resolve(old, new, record)
        _resolve(new, old, record)


def _released_versions() -> list[Path]:
    return sorted(p for p in RELEASED.iterdir() if p.is_dir())


def test_released_versions_are_kept() -> None:
    versions = _released_versions()
    assert versions, "schemas/released/ must hold the released schema sets"
    for version in versions:
        for path in version.rglob("*.avsc"):
            # A released schema is never deleted: consumers may still hold its data.
            assert (SCHEMAS / path.relative_to(version)).is_file(), path


@pytest.mark.parametrize("event_type", [*sorted(EVENTS), ""])
def test_current_schema_is_compatible_with_every_released_version(event_type: str) -> None:
    current = _load(SCHEMAS / schema_path(event_type))
    for version in _released_versions():
        released = version / schema_path(event_type)
        if released.is_file():
            check_compatible(_load(released), current, _samples(event_type))


def test_the_compatibility_check_catches_a_required_field_added() -> None:
    old = _load(SCHEMAS / schema_path("media.OCRDone"))
    new = copy.deepcopy(old)
    new["fields"].append({"name": "language", "type": "string"})
    with pytest.raises(SchemaResolutionError):
        check_compatible(old, new, _samples("media.OCRDone"))
    optional = copy.deepcopy(old)
    optional["fields"].append({"name": "language", "type": ["null", "string"], "default": None})
    check_compatible(old, optional, _samples("media.OCRDone"))


def test_the_compatibility_check_catches_a_changed_type() -> None:
    old = _load(SCHEMAS / schema_path("media.pictureTaken"))
    new = copy.deepcopy(old)
    new["fields"][-1]["type"] = ["null", "string"]
    with pytest.raises(SchemaResolutionError):
        check_compatible(old, new, _samples("media.pictureTaken"))
