"""Write the cross-language test vectors: framed Avro records and the fields they decode to.

`python -m tests.vectors.generate [DIR]` (`make vectors`) writes under DIR (default: this
folder) one `.bin` (the framed bytes, exactly what the bridge puts in a Kafka record value)
and one `.json` (the expected decoded fields, in the stable form of `stable()`) per record.
tests/vectors/test_vectors.py proves the committed files are what this writes today.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from bridge.codec import SINGLE_OBJECT_MAGIC, Codec
from bridge.devtools.simulator import EVENT_CODES
from bridge.models import (
    CanonicalEvent,
    from_rest,
    from_webhook,
    parse_rest_item,
    parse_webhook,
)
from bridge.schemas import schema_fingerprint, schema_path

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parent.parent
FIXTURES: Final = REPO / "tests" / "fixtures"
SCHEMAS: Final = REPO / "schemas"
# The released set the evolution writers are derived from (see EVOLUTION below).
RELEASED_BASE: Final = SCHEMAS / "released" / "v1"

TICKET_ID: Final = 361
CONVERSATION_ID: Final = 548
FIRST_EVENT_ID: Final = 1266
FIRST_TIME_S: Final = 1749581447
RECEIVED_AT_MS: Final = 1_749_581_448_123
UNKNOWN_EVENT_TYPE: Final = "whiteboard.drawn"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLI: Final = timedelta(milliseconds=1)
_CODEC: Final = Codec()


def stable(value: Any) -> Any:
    """The stable JSON form both languages compare: timestamps as epoch millis.

    Records and maps are objects, arrays are lists, enums their symbol, a union its branch's
    value (every union here is null or one type), numbers and strings as they are. `extra`
    stays the JSON text the record carries.
    """
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MILLI
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def seed_props() -> dict[str, dict[str, Any]]:
    props: dict[str, dict[str, Any]] = json.loads(
        (FIXTURES / "seed_props_examples.json").read_text(encoding="utf-8")
    )
    return props


def seed_webhooks() -> list[dict[str, Any]]:
    """The 32 seed examples as webhook bodies, shaped like the seed's example payload.

    One ticket (361), in catalog order, one second apart, distinct event ids from the
    seed's 1266 on: what tests/vectors and the end-to-end test post.
    """
    bodies = []
    for n, (event_type, attributes) in enumerate(seed_props().items()):
        bodies.append(
            {
                "event": "create",
                "time": FIRST_TIME_S + n,
                "object": "conversationevent",
                "objectId": FIRST_EVENT_ID + n,
                "props": {
                    "eventType": event_type,
                    "eventCode": EVENT_CODES[event_type],
                    "conversationId": CONVERSATION_ID,
                    "ticketId": TICKET_ID,
                    **attributes,
                },
            }
        )
    return bodies


def unknown_webhook() -> dict[str, Any]:
    """An event type the catalog does not know: every prop lands in `extra`."""
    return {
        "event": "create",
        "time": FIRST_TIME_S + 40,
        "object": "conversationevent",
        "objectId": FIRST_EVENT_ID + 40,
        "props": {
            "eventType": UNKNOWN_EVENT_TYPE,
            "eventCode": 99,
            "conversationId": CONVERSATION_ID,
            "ticketId": TICKET_ID,
            "color": "#ff0000",
            "strokes": [[1, 2], [3.5, -4]],
            "by": {"firstname": "François", "lastname": "Le Goff"},
        },
    }


def _event_from_webhook(body: dict[str, Any], received_at_ms: int) -> CanonicalEvent:
    return from_webhook(parse_webhook(json.dumps(body).encode()), received_at_ms)


@dataclass(frozen=True, slots=True)
class Vector:
    """One record: where it goes (relative path without suffix), its bytes, its fields."""

    name: str
    data: bytes
    expected: dict[str, Any]

    def files(self) -> dict[str, bytes]:
        text = json.dumps(self.expected, indent=2, ensure_ascii=False) + "\n"
        return {f"{self.name}.bin": self.data, f"{self.name}.json": text.encode()}


def _codec_vector(name: str, event: CanonicalEvent) -> Vector:
    data = _CODEC.encode(event)
    writer, _ = _CODEC.writer_of(data)
    path = f"schemas/{schema_path(writer.event_type)}"
    return Vector(
        name,
        data,
        {
            "framing": "single-object",
            "fingerprint": writer.fingerprint_hex,
            "schema": writer.full_name,
            "writerSchema": path,
            "readerSchema": path,
            "record": stable(_CODEC.decode_record(data)),
        },
    )


def codec_vectors() -> Iterator[Vector]:
    """What the bridge writes: the 32 seed webhooks, the unknown type, the REST seed items."""
    for n, body in enumerate(seed_webhooks()):
        event_type = body["props"]["eventType"]
        yield _codec_vector(f"events/{event_type}", _event_from_webhook(body, RECEIVED_AT_MS + n))
    yield _codec_vector("unknown/" + UNKNOWN_EVENT_TYPE, _event_from_webhook(unknown_webhook(), 1))
    items = json.loads((FIXTURES / "seed_rest_example.json").read_text(encoding="utf-8"))
    for n, item in enumerate(items):
        event = from_rest(parse_rest_item(item), TICKET_ID, RECEIVED_AT_MS + 100 + n)
        yield _codec_vector(f"rest/{item['id']}.{item['eventType']}", event)


# --- Schema evolution -------------------------------------------------------------------
#
# schemas/released/v1 is the one released set, and it equals the current schemas: a v1
# record is byte for byte a current record. So the evolution cases use writer schemas
# *derived* from released/v1 (kept in evolution/schemas/, never released): older writers
# without fields the current schema has (the reader fills the defaults), newer writers
# with fields it does not have and another field order (the reader skips and reorders).


def _drop_fields(record: dict[str, Any], names: set[str]) -> None:
    record["fields"] = [f for f in record["fields"] if f["name"] not in names]


def _named(schema: Any, full_name: str) -> dict[str, Any]:
    """The inline definition of a named type inside `schema`."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("name")
            if node.get("type") in ("record", "enum") and (
                f"{node.get('namespace')}.{name}" == full_name or name == full_name
            ):
                return node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise KeyError(full_name)


def _older_priority_changed(s: dict[str, Any]) -> None:
    _drop_fields(s, {"oldPriority", "newPriority"})


def _older_survey(s: dict[str, Any]) -> None:
    _drop_fields(_named(s, "com.apizee.sessionevents.SurveyQuestion"), {"label"})
    _drop_fields(_named(s, "com.apizee.sessionevents.SurveyAnswer"), {"feedback"})


def _older_consent(s: dict[str, Any]) -> None:
    _drop_fields(s, {"eventCode", "extra"})


def _newer_ocr(s: dict[str, Any]) -> None:
    s["fields"].append(
        {"name": "language", "type": ["null", "string"], "default": None, "doc": "OCR language."}
    )


def _newer_person(s: dict[str, Any]) -> None:
    person = _named(s, "com.apizee.sessionevents.Person")
    person["fields"].reverse()
    person["fields"].append({"name": "title", "type": "string", "default": ""})
    s["fields"].reverse()


@dataclass(frozen=True, slots=True)
class Evolution:
    """A writer schema derived from a released one, and the values only it has."""

    name: str
    event_type: str
    derive: Any
    doc: str
    added: dict[str, Any]


EVOLUTION: Final[tuple[Evolution, ...]] = (
    Evolution(
        "ticket.priorityChanged.older-no-priorities",
        "ticket.priorityChanged",
        _older_priority_changed,
        "older writer without oldPriority/newPriority: the reader fills null",
        {},
    ),
    Evolution(
        "survey.answered.older-nested",
        "survey.answered",
        _older_survey,
        "older writer whose SurveyQuestion has no label and SurveyAnswer no feedback: "
        "the reader fills {} and null inside the nested records",
        {},
    ),
    Evolution(
        "consent.accepted.older-no-code-no-extra",
        "consent.accepted",
        _older_consent,
        "older writer without eventCode and extra: the reader fills null",
        {},
    ),
    Evolution(
        "media.OCRDone.newer-language",
        "media.OCRDone",
        _newer_ocr,
        "newer writer with a `language` field: the reader skips it",
        {"language": "fr"},
    ),
    Evolution(
        "session.established.newer-reordered",
        "session.established",
        _newer_person,
        "newer writer, fields in reverse order, Person with a `title` field: the reader "
        "matches fields by name and skips title",
        {"requestor.title": "Dr"},
    ),
)


def _writer_record(current: dict[str, Any], writer: dict[str, Any], added: dict[str, Any]) -> Any:
    """The current record's values shaped for `writer` (fields it lacks dropped)."""

    def shape(value: Any, schema: Any, prefix: str) -> Any:
        if isinstance(schema, list):
            branch = next((b for b in schema if b != "null"), None)
            return None if value is None else shape(value, branch, prefix)
        if isinstance(schema, dict) and schema.get("type") == "record":
            out = {}
            for fld in schema["fields"]:
                key = f"{prefix}{fld['name']}"
                if key in added:
                    out[fld["name"]] = added[key]
                else:
                    out[fld["name"]] = shape(value[fld["name"]], fld["type"], key + ".")
            return out
        if isinstance(schema, dict) and schema.get("type") == "array":
            return [shape(v, schema["items"], prefix) for v in value]
        if isinstance(schema, str) and schema.startswith("com.apizee.sessionevents."):
            return shape(value, _named(writer, schema), prefix)
        return value

    return shape(current, writer, "")


def evolution_vectors() -> Iterator[tuple[Vector, str]]:
    """(vector, writer schema text) per case, from the seed webhook of its event type."""
    bodies = {b["props"]["eventType"]: (n, b) for n, b in enumerate(seed_webhooks())}
    for case in EVOLUTION:
        n, body = bodies[case.event_type]
        current = _CODEC.decode_record(_CODEC.encode(_event_from_webhook(body, RECEIVED_AT_MS + n)))
        released = json.loads((RELEASED_BASE / schema_path(case.event_type)).read_text())
        writer = copy.deepcopy(released)
        case.derive(writer)
        writer["doc"] = f"DERIVED for tests/vectors, never released: {case.doc}. {writer['doc']}"
        buf = BytesIO()
        buf.write(SINGLE_OBJECT_MAGIC + schema_fingerprint(writer))
        schemaless_writer(buf, parse_schema(writer), _writer_record(current, writer, case.added))
        data = buf.getvalue()
        reader_path = f"schemas/{schema_path(case.event_type)}"
        reader = json.loads((REPO / reader_path).read_text())
        parsed_reader = parse_schema(reader)
        resolved = schemaless_reader(BytesIO(data[10:]), parse_schema(writer), parsed_reader)
        # fastavro keeps the writer's field order; the JSON shows the reader's.
        reordered = BytesIO()
        schemaless_writer(reordered, parsed_reader, resolved)
        reordered.seek(0)
        resolved = schemaless_reader(reordered, parsed_reader, None)
        vector = Vector(
            f"evolution/{case.name}",
            data,
            {
                "framing": "single-object",
                "fingerprint": schema_fingerprint(writer).hex(),
                "schema": _CODEC.writer_for(case.event_type).full_name,
                "writerSchema": f"tests/vectors/evolution/schemas/{case.name}.avsc",
                "readerSchema": reader_path,
                "evolution": case.doc,
                "record": stable(resolved),
            },
        )
        yield vector, json.dumps(writer, indent=2, ensure_ascii=False) + "\n"


def all_files() -> dict[str, bytes]:
    """Relative path under tests/vectors -> file bytes: every generated file."""
    files: dict[str, bytes] = {}
    for vector in codec_vectors():
        files.update(vector.files())
    for vector, writer_text in evolution_vectors():
        files.update(vector.files())
        files[f"evolution/schemas/{vector.name.split('/', 1)[1]}.avsc"] = writer_text.encode()
    return files


GENERATED_DIRS: Final = ("events", "unknown", "rest", "evolution")


def write(directory: Path) -> list[Path]:
    """Write every vector under `directory`, removing stale generated files there."""
    files = all_files()
    for sub in GENERATED_DIRS:
        for stale in (directory / sub).rglob("*"):
            if stale.is_file() and str(stale.relative_to(directory)) not in files:
                stale.unlink()
    written = []
    for rel, data in sorted(files.items()):
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else HERE
    written = write(directory)
    print(f"{len(written)} files under {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
