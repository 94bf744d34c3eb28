"""Logging setup (bridge/logs.py): JSON lines, and no credential-bearing debug output."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from bridge.logs import configure_logging


def test_aiokafka_connection_debug_is_never_enabled() -> None:
    # aiokafka.conn at DEBUG prints SASL PLAIN authenticate requests with the password.
    configure_logging("DEBUG", "json")
    try:
        assert logging.getLogger("aiokafka.conn").getEffectiveLevel() >= logging.INFO
        assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    finally:
        configure_logging("INFO", "console")


def test_json_lines_carry_the_event_and_fields(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    try:
        structlog.get_logger("t").info("webhook_refused", status=401, reason="bad_token")
        structlog.get_logger("t").debug("hidden")
    finally:
        configure_logging("INFO", "console")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    assert [(r["event"], r["status"], r["level"]) for r in lines] == [
        ("webhook_refused", 401, "info")
    ]
