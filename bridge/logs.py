"""Structured logs (structlog): JSON lines in production, readable lines on a terminal.

The Kafka client's own warnings and errors (aiokafka logs each failed connection attempt,
dozens a second while a broker is down) become the bridge's lines: what they mean for the
bridge, at most one per broker and kind per 10 s, with how many were held back.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, Literal, TextIO, cast

import orjson
import structlog

log = structlog.get_logger(__name__)

# Repeated events are logged at most once per this interval, with the count since the last.
REPEAT_SECONDS: Final = 10.0


class Throttled:
    """One log line per interval for a repeated event, with the count since the last one."""

    __slots__ = ("_count", "_event", "_last", "_level")

    def __init__(self, event: str, level: str = "warning") -> None:
        self._event = event
        self._level = level
        self._count = 0
        self._last = 0.0

    def __call__(self, **fields: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= REPEAT_SECONDS:
            getattr(log, self._level)(self._event, count=self._count, **fields)
            self._count = 0
            self._last = now


# -- the Kafka client's logs -----------------------------------------------------------------

# Node id -> "host:port", from the cluster metadata the publisher reads (aiokafka's messages
# name brokers by node id; an operator knows them by address).
_BROKERS: dict[int, str] = {}


def name_brokers(brokers: Mapping[int, str]) -> None:
    """Remember the address of each broker node id (from cluster metadata)."""
    _BROKERS.update(brokers)


@dataclass(frozen=True, slots=True)
class _Meaning:
    """What a kind of client message means for the bridge."""

    event: str
    level: str
    meaning: str


_UNREACHABLE: Final = _Meaning(
    "kafka_client_broker_unreachable",
    "warning",
    "the Kafka client cannot reach this broker and retries by itself; meanwhile webhooks get"
    " 503 (Apizee retries, the poller fills the gaps once Kafka is back); /readyz says since"
    " when",
)
_COORDINATOR_PENDING: Final = _Meaning(
    "kafka_client_group_coordinator_pending",
    "info",
    "the poller's consumer group waits for Kafka to name its coordinator (normal at start,"
    " while Kafka creates its offsets topic); retried",
)
_COORDINATOR_LOST: Final = _Meaning(
    "kafka_client_group_coordinator_lost",
    "warning",
    "the poller's consumer group lost its coordinator (or has not found it yet, right after"
    " start); it joins again once Kafka names one, and if that takes longer than the group's"
    " session timeout this replica's tickets move to another replica",
)
_LEAVE_FAILED: Final = _Meaning(
    "kafka_client_leave_group_failed",
    "info",
    "could not leave the poller's consumer group at shutdown (Kafka unreachable): the other"
    " replicas take these tickets after the group's session timeout",
)
_LEADERSHIP_MOVING: Final = _Meaning(
    "kafka_client_leadership_moving",
    "info",
    "a partition has no leader yet or its leader moved (normal right after topics are created,"
    " and while Kafka fails over); the client refreshes its metadata and retries: a publish"
    " that cannot wait is answered 503 and counted apart",
)
_OTHER: Final = _Meaning("kafka_client_error", "", "")

# aiokafka 0.14's messages (formatted), first match wins.
_KINDS: Final = (
    (re.compile(r"^LeaveGroup request failed"), _LEAVE_FAILED),
    (
        re.compile(r"NodeNotReady|KafkaConnectionError|Unable connect|Connection refused"),
        _UNREACHABLE,
    ),
    (re.compile(r"^Unable to (request|update) metadata|^Failed fetch messages"), _UNREACHABLE),
    (re.compile(r"^Heartbeat|[Mm]arking (the )?coordinator dead"), _COORDINATOR_LOST),
    (re.compile(r"CoordinatorNotAvailable|CoordinatorLoadInProgress"), _COORDINATOR_PENDING),
    (
        re.compile(r"NotLeaderForPartition|LeaderNotAvailable|UnknownTopicOrPartition"),
        _LEADERSHIP_MOVING,
    ),
)
# Where a message names its broker: a node id, or "host:port".
_NODE: Final = re.compile(r"node(?: with)? id (\d+)|\(node (\d+)\)|to node (\d+)|from \[?(\d+)")
_ADDRESS: Final = re.compile(r'"([^"\s]+:\d+)"')
_MESSAGE_CHARS: Final = 300


def _broker(message: str) -> str:
    if found := _ADDRESS.search(message):
        return found.group(1)
    if found := _NODE.search(message):
        node = int(next(g for g in found.groups() if g is not None))
        return _BROKERS.get(node, f"node {node}")
    return "cluster"


class KafkaClientLogs(logging.Filter):
    """aiokafka's warnings and errors as the bridge's lines, one per broker and kind per 10 s.

    Each becomes an event saying what it means for the bridge (`kafka_client_*`, at warning
    or info: the bridge handles them), naming the broker by address; within 10 s of a line
    of that kind for that broker, further ones are counted, not written, and the next line
    says how many (`repeated`). Messages that name no broker count as "cluster".
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno < logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        broker = _broker(message)
        kind = next((k for pattern, k in _KINDS if pattern.search(message)), _OTHER)
        key = (broker, kind.event)
        now = time.monotonic()
        if now - self._last.get(key, -REPEAT_SECONDS) < REPEAT_SECONDS:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        level = kind.level or record.levelname.lower()
        fields: dict[str, Any] = {
            "broker": broker,
            "client_message": message[:_MESSAGE_CHARS],
            # Held back since the previous line of this kind for this broker.
            "repeated": self._held.pop(key, 0),
        }
        if kind.meaning:
            fields["meaning"] = kind.meaning
        getattr(log, level if level in ("info", "warning", "error", "critical") else "warning")(
            kind.event, **fields
        )
        return False


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (text, or its buffer for bytes).

    Loggers are cached on first use; bound to the stream object of that moment, they would
    keep writing to it after it was replaced (and closed), as test runners' captures are.
    """

    def __init__(self, binary: bool) -> None:
        self._binary = binary

    def write(self, data: Any) -> int:
        stream: Any = sys.stderr.buffer if self._binary else sys.stderr
        written: int = stream.write(data)
        return written

    def flush(self) -> None:
        (sys.stderr.buffer if self._binary else sys.stderr).flush()


def configure_logging(level: str, fmt: Literal["json", "console"]) -> None:
    """Configure structlog, and render the libraries' stdlib logging the same way."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    stdlib_renderer: structlog.typing.Processor
    factory: Any
    if fmt == "json":
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(
            serializer=orjson.dumps
        )
        stdlib_renderer = structlog.processors.JSONRenderer()
        factory = structlog.BytesLoggerFactory(cast(BinaryIO, _CurrentStderr(binary=True)))
    else:
        renderer = stdlib_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(cast(TextIO, _CurrentStderr(binary=False)))
    structlog.configure(
        processors=[*shared, renderer],
        # Filtering bound loggers drop below-level calls at almost no cost on the hot path.
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(cast(TextIO, _CurrentStderr(binary=False)))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                stdlib_renderer,
            ],
        )
    )
    handler.addFilter(KafkaClientLogs())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # aiokafka and aiohttp are chatty at INFO: their warnings and errors, unless debugging.
    root.setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    # At DEBUG aiokafka's connection logger prints every request, SASL PLAIN credentials
    # included: never below INFO.
    logging.getLogger("aiokafka.conn").setLevel(max(numeric, logging.INFO))


def configure_command_logging(level: str) -> None:
    """Logs of an operator command (check, tail, replay, backfill).

    Their result is their output (stdout, and their own messages on stderr); log lines would
    only interleave with it. So: readable lines on stderr, warnings and errors only, whatever
    BRIDGE_LOG_FORMAT says (that is for the service's log shipper); BRIDGE_LOG_LEVEL=DEBUG
    still shows everything.
    """
    configure_logging("DEBUG" if level.upper() == "DEBUG" else "WARNING", "console")
