"""read_events' behaviour that needs no broker: it says when Kafka cannot be reached, refuses
settings that would silently replace its arguments, and names the extra when confluent-kafka
is missing. Against Apache Kafka: tests/integration/test_read_events.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("confluent_kafka")

from apizee_session_events.kafka import read_events


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.mark.parametrize("group_id", [None, "a-group"])
def test_no_kafka_within_the_join_timeout_is_an_error_that_says_why(group_id: str | None) -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        list(
            read_events(
                bootstrap, group_id=group_id, join_timeout_seconds=2, idle_timeout_seconds=1
            )
        )
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith(f"no partitions assigned within 2 s from {bootstrap}"), message
    assert "last error:" in message
    assert 2 <= elapsed < 10


@pytest.mark.parametrize(
    "key", ["isolation.level", "auto.offset.reset", "group.id", "bootstrap.servers"]
)
def test_config_may_not_replace_what_the_arguments_set(key: str) -> None:
    with pytest.raises(ValueError, match=f"set {key} with read_events' arguments"):
        next(read_events("127.0.0.1:9", config={key: "x", "client.id": "mine"}))


def test_without_confluent_kafka_the_import_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['confluent_kafka'] = None  # as if it were not installed\n"
        "import apizee_session_events.kafka\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: apizee_session_events.kafka needs confluent-kafka:"
        " pip install 'apizee-session-events[kafka]'"
    )
