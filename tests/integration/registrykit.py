"""The tests' side of the Schema Registry: plain HTTP calls to its Confluent-compatible API
(a client independent of the bridge's), and the seed webhooks of every event type."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from bridge.catalog import EVENTS
from bridge.codec import Codec
from bridge.publisher import TopicNames
from bridge.registry import CONTENT_TYPE, subject_name
from tests.integration.bridgeproc import webhook

FIXTURES: Final = Path(__file__).resolve().parents[1] / "fixtures"
SEED_PROPS: Final[dict[str, dict[str, Any]]] = json.loads(
    (FIXTURES / "seed_props_examples.json").read_text(encoding="utf-8")
)
UNKNOWN_TYPE: Final = "session.teleported"


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request to the registry."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": CONTENT_TYPE}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def subjects(url: str) -> set[str]:
    status, body = call("GET", f"{url}/subjects")
    assert status == 200, body
    return set(body)


def latest_id(url: str, subject: str) -> int:
    status, body = call("GET", f"{url}/subjects/{quote(subject, safe='')}/versions/latest")
    assert status == 200, (subject, body)
    schema_id: int = body["id"]
    return schema_id


def expected_subjects(prefix: str, strategy: str = "topic_record") -> dict[str, str]:
    """eventType ('' for the generic schema) -> the subject the bridge registers it under."""
    topics = TopicNames(prefix)
    out = {}
    for event_type, writer in Codec().writers.items():
        topic = topics.category(EVENTS[event_type].category) if event_type else topics.unknown
        out[event_type] = subject_name(strategy, topic, writer.full_name)  # type: ignore[arg-type]
    return out


def registered_ids(url: str, prefix: str, strategy: str = "topic_record") -> dict[str, int]:
    """eventType -> the id the registry holds for its subject."""
    return {t: latest_id(url, s) for t, s in expected_subjects(prefix, strategy).items()}


def preregister(url: str, prefix: str) -> dict[str, int]:
    """Register the bridge's 33 schemas under its subjects, as it would: eventType -> id."""
    ids = {}
    writers = Codec().writers
    for event_type, subject in expected_subjects(prefix).items():
        text = json.dumps(writers[event_type].schema, separators=(",", ":"), ensure_ascii=False)
        status, body = call(
            "POST",
            f"{url}/subjects/{quote(subject, safe='')}/versions",
            {"schemaType": "AVRO", "schema": text},
        )
        assert status == 200, (subject, body)
        ids[event_type] = int(body["id"])
    return ids


def seed_webhooks(ticket_id: int, first_event_id: int) -> list[dict[str, Any]]:
    """One webhook per seed example (the 32 event types, in the seed's order), then one of an
    eventType the catalog does not know; one ticket, times one second apart."""
    bodies = [
        webhook(
            event_type,
            props,
            event_id=first_event_id + n,
            ticket_id=ticket_id,
            time=1749581447 + n,
        )
        for n, (event_type, props) in enumerate(SEED_PROPS.items())
    ]
    bodies.append(
        webhook(
            UNKNOWN_TYPE,
            {"where": "moon"},
            event_id=first_event_id + len(bodies),
            ticket_id=ticket_id,
            time=1749581447 + len(bodies),
        )
    )
    return bodies


async def call_async(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    return await asyncio.to_thread(call, method, url, body)
