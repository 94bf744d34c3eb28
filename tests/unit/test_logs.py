"""Logging setup (bridge/logs.py): JSON lines, and no credential-bearing debug output."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from bridge import logs
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


def _client_record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_kafka_client_errors_become_one_line_per_broker_and_kind_per_10s(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    logs.name_brokers({1: "10.0.0.1:9092"})
    configure_logging("INFO", "json")
    aiokafka = logging.getLogger("aiokafka")
    try:
        for _ in range(50):  # 5 s of a dead broker's reconnects, 10 a second
            aiokafka.error("Unable connect to node with id %s: %s", 1, "Connection refused")
            aiokafka.error('Unable connect to "%s:%s": %s', "10.0.0.2", 9092, "timeout")
            clock[0] += 0.1
        logging.getLogger("aiokafka.consumer.group_coordinator").error(
            "Group Coordinator Request failed: %s",
            "[Error 15] GroupCoordinatorNotAvailableError",
        )
        # Right after topics are created (a normal start on Apache Kafka): not an error.
        logging.getLogger("aiokafka.consumer.fetcher").error(
            "Failed fetch offsets from %s: %s",
            1,
            "[Error 6] NotLeaderForPartitionError: TopicPartition(topic='t', partition=0)",
        )
        clock[0] += 6  # 11 s after the first line
        aiokafka.error("Unable connect to node with id %s: %s", 1, "Connection refused")
        logging.getLogger("aiokafka.producer").warning("Something else: %s", "x")
    finally:
        configure_logging("INFO", "console")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    seen = [(r["event"], r["level"], r["broker"], r["repeated"]) for r in lines]
    assert seen == [
        ("kafka_client_broker_unreachable", "warning", "10.0.0.1:9092", 0),
        ("kafka_client_broker_unreachable", "warning", "10.0.0.2:9092", 0),
        ("kafka_client_group_coordinator_pending", "info", "cluster", 0),
        ("kafka_client_leadership_moving", "info", "10.0.0.1:9092", 0),
        ("kafka_client_broker_unreachable", "warning", "10.0.0.1:9092", 49),
        ("kafka_client_error", "warning", "cluster", 0),
    ], seen
    assert "logger" not in lines[0]
    assert lines[0]["client_message"] == "Unable connect to node with id 1: Connection refused"
    assert "retries by itself" in lines[0]["meaning"]
