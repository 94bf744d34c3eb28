"""Shared fixtures of the unit tests: the seed's examples and payload builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REPO = FIXTURES.parent.parent


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def webhook(event_type: str, attributes: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A webhook body shaped like the seed's example, for one event type."""
    body: dict[str, Any] = {
        "event": "create",
        "time": 1749581447,
        "object": "conversationevent",
        "objectId": 1266,
        "props": {
            "eventType": event_type,
            "eventCode": 41,
            "conversationId": 548,
            "ticketId": 361,
            **attributes,
        },
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="session")
def seed_props() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = load_fixture("seed_props_examples.json")
    return data
