"""The registry client's pure parts: subject names, outcome labels, error messages."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping

import pytest

from bridge import metrics
from bridge.config import load_settings
from bridge.devtools.devbroker import free_port
from bridge.registry import (
    SchemaRegistration,
    SchemaToRegister,
    basic_auth_header,
    error_message,
    outcome_of,
    subject_name,
)


def test_subject_names_follow_the_strategy() -> None:
    full_name = "com.apizee.sessionevents.TicketNew"
    assert (
        subject_name("topic_record", "apizee.session-events.ticket", full_name)
        == "apizee.session-events.ticket-com.apizee.sessionevents.TicketNew"
    )
    assert subject_name("record", "apizee.session-events.ticket", full_name) == full_name


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (409, "conflict"),
        (422, "invalid"),
        (401, "unauthorized"),
        (403, "unauthorized"),
        (404, "not_found"),
        (400, "client_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_outcomes_are_bounded_labels(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome
    assert outcome in metrics.SCHEMA_REGISTRY_OUTCOMES


def test_error_message_takes_the_registry_message_and_bounds_it() -> None:
    body = json.dumps({"error_code": 409, "message": "Schema being registered is incompatible"})
    assert error_message(body.encode()) == "Schema being registered is incompatible"
    assert error_message(b"<html>\n  Bad   Gateway\n</html>") == "<html> Bad Gateway </html>"
    assert error_message(b"") == "(empty answer)"
    long = error_message(json.dumps({"message": "x" * 5000}).encode())
    assert len(long) == 500
    assert long.endswith("...")


def test_basic_auth_header() -> None:
    header = basic_auth_header("bridge", "p@ss:word")
    assert header.startswith("Basic ")
    assert base64.b64decode(header.removeprefix("Basic ")) == b"bridge:p@ss:word"


async def test_registration_against_an_unreachable_registry_says_why_and_keeps_trying() -> None:
    # A loopback port nobody listens on: connections are refused, for real.
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    settings = load_settings(
        auth={"insecure_no_auth": True},
        schema={"registry_url": url, "registry_retry_max_seconds": 0.1},
    )
    registered: list[Mapping[str, int]] = []
    schemas = [SchemaToRegister("ticket.new", "p.ticket-x.TicketNew", '{"type":"string"}')]
    registration = SchemaRegistration(settings.schema, schemas, registered.append)
    await registration.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while "attempt 3" not in (registration.not_ready_reason or ""):
            assert asyncio.get_running_loop().time() < deadline, registration.not_ready_reason
            await asyncio.sleep(0.05)
        reason = registration.not_ready_reason
        assert reason is not None
        assert "(0/1, attempt 3)" in reason
        assert f"cannot reach {url}" in reason
        assert not registration.finished.done()
    finally:
        await registration.stop()
    assert registered == []
    assert registration.schema_ids == {}
