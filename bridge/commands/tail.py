"""`apizee-bridge tail`: the bridge's topics, decoded, as records land (or from the beginning),
filtered by ticket, event type, source or topic, as text lines or JSON objects.

The console consumer of `make run` does the reading and the formatting (bridge/commands/console.py);
no consumer group is joined, nothing is committed, no other reader is disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.catalog import CATEGORIES, UNKNOWN_CATEGORY
from bridge.commands.cluster import (
    AclOperation,
    ClusterClient,
    ClusterError,
    explain,
    principal,
    quiet_client_logs,
)
from bridge.commands.console import ConsoleConsumer, Decoded, EventDecoder, ReadDeniedError
from bridge.config import KafkaSettings
from bridge.errors import BridgeError
from bridge.publisher import DLQ_SUFFIX, TopicNames

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


class TailArgumentError(BridgeError):
    """An option names something this bridge does not have (a topic, a source)."""


def topic_names(settings: KafkaSettings, wanted: Sequence[str]) -> list[str]:
    """The topics named by `--topic` (a category, `unknown`, `dlq`, or a full name); every
    event topic and the DLQ when none is named."""
    topics = TopicNames(settings.topic_prefix)
    known = topics.events()
    if not wanted:
        return known
    names: list[str] = []
    for item in wanted:
        name = item if item in known else topics.category(item)
        if name not in known:
            suffixes = ", ".join((*CATEGORIES, UNKNOWN_CATEGORY, DLQ_SUFFIX))
            raise TailArgumentError(
                f"--topic {item}: not a topic of this bridge (one of {suffixes}, or the full"
                f" name {topics.prefix}.<one of them>)"
            )
        if name not in names:
            names.append(name)
    return names


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records to show; an empty set lets everything through."""

    tickets: frozenset[int] = frozenset()
    types: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()

    def matches(self, decoded: Decoded) -> bool:
        if self.tickets and decoded.ticket_id not in self.tickets:
            return False
        if self.types and decoded.event_type not in self.types:
            return False
        return not self.sources or decoded.source in self.sources


@dataclass
class Tail:
    """Prints what matches through `out`, until stopped or `count` records were printed."""

    settings: KafkaSettings
    topics: list[str]
    decode: EventDecoder | None = None
    where: Filter = field(default_factory=Filter)
    as_json: bool = False
    from_beginning: bool = False
    count: int | None = None
    connect_timeout: float = 15.0
    out: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    err: Callable[[str], None] = field(
        default=lambda line: print(line, file=sys.stderr, flush=True)
    )
    printed: int = 0

    async def run(self, stop: asyncio.Event) -> int:
        problem = await self._preflight()
        if problem is not None:
            self.err(f"apizee-bridge tail: {problem}")
            return EXIT_FAILED
        consumer = ConsoleConsumer(
            self.settings,
            decode=self.decode,
            topics=self.topics,
            from_beginning=self.from_beginning,
            emit=lambda record: self._emit(consumer, record, stop),
            fail_on_denied=True,
            client_id_suffix="tail",
        )
        reading = asyncio.create_task(consumer.run(stop), name="tail")
        stopping = asyncio.create_task(stop.wait())
        announcing = asyncio.create_task(self._announce(consumer))
        try:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            # The consumer notices the stop within one poll.
            await asyncio.wait({reading}, timeout=5.0)
        finally:
            stopping.cancel()
            announcing.cancel()
            if not reading.done():
                reading.cancel()
            outcome = await asyncio.gather(reading, stopping, return_exceptions=True)
        failure = outcome[0]
        if isinstance(failure, ReadDeniedError):
            who = principal(self.settings)
            self.err(
                f"apizee-bridge tail: {who} may not read these topics ({failure}). Fix:"
                f" kafka-acls.sh --add --allow-principal {who} --operation Read --topic ..."
            )
            return EXIT_FAILED
        if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
            raise failure
        return EXIT_OK

    async def _announce(self, consumer: ConsoleConsumer) -> None:
        await consumer.connected.wait()
        start = "beginning" if self.from_beginning else "end (what lands from now on)"
        self.err(
            f"apizee-bridge tail: reading {len(self.topics)} topic(s) from their {start};"
            " Ctrl-C to stop"
        )

    async def _preflight(self) -> str | None:
        """Kafka reachable, and every topic readable by this principal (missing topics are
        waited for: the bridge creates them at start-up)."""
        try:
            with quiet_client_logs():
                async with asyncio.timeout(self.connect_timeout):
                    async with ClusterClient(self.settings) as cluster:
                        info = await cluster.describe(self.topics)
        except ClusterError as exc:
            return f"cannot reach Kafka: {exc.what}. Fix: {exc.fix}"
        except TimeoutError as exc:
            found = explain(exc, self.settings, "Kafka")
            return f"cannot reach Kafka within {self.connect_timeout:g}s: {found.fix}"
        who = principal(self.settings)
        denied = [
            t
            for t in self.topics
            if info.topics[t].denied or info.topics[t].may(AclOperation.READ) is False
        ]
        if denied:
            return (
                f"{who} may not read {', '.join(denied)}. Fix: kafka-acls.sh --add"
                f" --allow-principal {who} --operation Read --topic <each of them>"
            )
        missing = [t for t in self.topics if not info.topics[t].exists]
        if missing:
            self.err(f"apizee-bridge tail: waiting for {', '.join(missing)} (not created yet)")
        return None

    def _emit(self, consumer: ConsoleConsumer, record: Any, stop: asyncio.Event) -> None:
        if self.count is not None and self.printed >= self.count:
            return
        decoded = consumer.decode(record)
        if not self.where.matches(decoded):
            return
        self.out(consumer.json(decoded) if self.as_json else consumer.line(decoded))
        self.printed += 1
        if self.count is not None and self.printed >= self.count:
            stop.set()


async def run_tail(tail: Tail) -> int:
    """Run until Ctrl-C, SIGTERM or `count` records; 0 then."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        return await tail.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
