"""The schemas this package bundles: the bridge's current set and every released one.

They are the files of the repository's `schemas/` (one source of truth), shipped as package
data: `events/{eventType}.avsc`, `generic/UnknownEvent.avsc`, `shared/`, `fingerprints.json`
(fingerprint -> file) and `released/v*/` with the same layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final

UNKNOWN_CATEGORY: Final = "unknown"
"""The category of events whose eventType the bridge's catalog does not know."""


@dataclass(frozen=True, slots=True)
class SchemaFile:
    """One entry of a fingerprints.json index."""

    fingerprint: bytes
    event_type: str | None
    """None for the generic UnknownEvent schema."""
    full_name: str
    schema: dict[str, Any]


def bundled_dir() -> Traversable:
    """The bundled copy of `schemas/`."""
    return resources.files(__package__).joinpath("schemas")


def read_set(directory: Traversable) -> list[SchemaFile]:
    """Every schema a `fingerprints.json` in `directory` lists, with its fingerprint."""
    index: dict[str, dict[str, Any]] = json.loads(
        directory.joinpath("fingerprints.json").read_text(encoding="utf-8")
    )
    found = []
    for fingerprint_hex, entry in sorted(index.items()):
        schema = json.loads(directory.joinpath(entry["file"]).read_text(encoding="utf-8"))
        found.append(
            SchemaFile(
                fingerprint=bytes.fromhex(fingerprint_hex),
                event_type=entry.get("eventType"),
                full_name=full_name(schema),
                schema=schema,
            )
        )
    return found


def current_schemas() -> list[SchemaFile]:
    """The schemas the bridge of this package's version writes."""
    return read_set(bundled_dir())


def released_sets() -> dict[str, list[SchemaFile]]:
    """Every released set (`v1`, `v2`, ...) by name, oldest first."""
    released = bundled_dir().joinpath("released")
    if not released.is_dir():
        return {}
    sets = sorted(
        (d for d in released.iterdir() if d.joinpath("fingerprints.json").is_file()),
        key=lambda d: (len(d.name), d.name),
    )
    return {d.name: read_set(d) for d in sets}


def event_types() -> list[str]:
    """The eventTypes the bridge's catalog knows (one schema each), sorted."""
    return sorted(s.event_type for s in current_schemas() if s.event_type)


def categories() -> list[str]:
    """The categories (topic suffixes) of the known eventTypes: the part before the first dot."""
    return sorted({t.split(".", 1)[0] for t in event_types()})


def event_topics(prefix: str = "apizee.session-events") -> list[str]:
    """The topics holding Avro records under `prefix` (the bridge's BRIDGE_KAFKA_TOPIC_PREFIX):
    one per category and `{prefix}.unknown`. Not `{prefix}.dlq` (raw bodies that failed
    validation) nor `{prefix}.bridge-state` (the bridge's own state)."""
    return [f"{prefix}.{category}" for category in (*categories(), UNKNOWN_CATEGORY)]


def full_name(schema: dict[str, Any]) -> str:
    """A named schema's full name (namespace + name)."""
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name
