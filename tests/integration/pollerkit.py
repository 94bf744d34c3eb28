"""Helpers of the poller's integration tests: bridges in this event loop whose ticket state and
poller the test can see, the simulated Apizee's ground truth, and readback of the topics.

`serve()` builds its Tracking (state store, state sync, poller) inside; `capture_tracking`
wraps `bridge.app.tracking` so that each replica's objects are handed to the test (by the
identity of the settings object the replica was started with) and every poll is logged.
Observation only: the objects under test run unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from prometheus_client import REGISTRY

import bridge.app
from bridge.app import Listening, Tracking, serve
from bridge.catalog import CATEGORIES, UNKNOWN_CATEGORY
from bridge.config import BridgeSettings, load_settings
from bridge.poller import PollResult
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import _merge
from tests.integration.readback import Record, transient

TOKEN: Final = "poller-test-token-0123456789"
START_TIMEOUT: Final = 30.0
# Longer than the ingress's shutdown grace (20 s) for in-flight webhooks.
STOP_TIMEOUT: Final = 25.0


def poller_settings(
    bootstrap: str, prefix: str, base_url: str, **sections: Mapping[str, Any]
) -> BridgeSettings:
    """A bridge with its poller on the simulator: fast intervals, loopback ports 0."""
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "topic_partitions": 4,
            "topic_replication_factor": 1,
        },
        "ingress": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "auth": {"token": TOKEN},
        "apizee": {
            "base_url": base_url,
            "token": "simulator-token",
            "rate_limit_per_second": 100,
            "rate_limit_burst": 20,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 2.0,
            "request_timeout_seconds": 5.0,
        },
        "poller": {
            "interval_seconds": 1.0,
            # The simulator's events are in the past: no webhook is still on its way.
            "settle_seconds": 0,
            "terminal_poll_delay_seconds": 0.3,
            "retire_grace_seconds": 1.0,
            "state_flush_seconds": 0.3,
            # A group of its own: tests that share a cluster must not rebalance each other.
            "group_id": f"{prefix}.bridge",
            "group_session_timeout_ms": 2000,
            "group_heartbeat_interval_ms": 300,
        },
        "log": {"level": "WARNING"},
    }
    return load_settings(**_merge(base, sections))


def event_topics(prefix: str) -> list[str]:
    names = TopicNames(prefix)
    return [names.category(c) for c in (*CATEGORIES, UNKNOWN_CATEGORY)]


# -- bridges in this loop --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Poll:
    ticket_id: int
    started: float  # time.monotonic()
    ended: float
    result: PollResult | None


@dataclass
class Captured:
    """Per replica (keyed by id(settings)): its Tracking and the polls its poller made."""

    tracking: dict[int, Tracking] = field(default_factory=dict)
    polls: dict[int, list[Poll]] = field(default_factory=dict)
    in_flight: dict[int, int] = field(default_factory=dict)


def capture_tracking(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Make every bridge started afterwards hand its Tracking to the test, polls logged."""
    captured = Captured()
    original = bridge.app.tracking

    @contextlib.asynccontextmanager
    async def tracking(settings: BridgeSettings, *args: Any) -> AsyncIterator[Tracking]:
        async with original(settings, *args) as tracker:
            key = id(settings)
            log: list[Poll] = captured.polls.setdefault(key, [])
            captured.in_flight[key] = 0
            poller = tracker.poller
            poll_ticket = poller.poll_ticket

            async def logged(ticket_id: int, **kwargs: Any) -> PollResult:
                started = time.monotonic()
                captured.in_flight[key] += 1
                result = None
                try:
                    result = await poll_ticket(ticket_id, **kwargs)
                    return result
                finally:
                    captured.in_flight[key] -= 1
                    log.append(Poll(ticket_id, started, time.monotonic(), result))

            # The scheduler calls self.poll_ticket: an instance attribute shadows the method.
            poller.poll_ticket = logged  # type: ignore[method-assign]
            captured.tracking[key] = tracker
            yield tracker

    monkeypatch.setattr(bridge.app, "tracking", tracking)
    return captured


@dataclass
class Replica:
    settings: BridgeSettings
    listening: Listening
    tracking: Tracking
    task: asyncio.Task[None]
    stop: asyncio.Event
    session: aiohttp.ClientSession
    captured: Captured

    @property
    def webhook_url(self) -> str:
        return self.listening.webhook_url

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.listening.admin_port}"

    @property
    def polls(self) -> list[Poll]:
        return self.captured.polls[id(self.settings)]

    @property
    def polls_in_flight(self) -> int:
        return self.captured.in_flight[id(self.settings)]

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.admin_url}/readyz") as response:
            return response.status, await response.json()

    async def metrics_text(self) -> str:
        async with self.session.get(f"{self.admin_url}/metrics") as response:
            assert response.status == 200
            return await response.text()

    async def wait_ready(self, within: float = START_TIMEOUT) -> None:
        async def ready() -> bool:
            return (await self.readyz())[0] == 200

        await wait_until(ready, within, "/readyz answers 200")

    async def shutdown(self) -> float:
        """Stop serve() and wait for it; the seconds it took."""
        started = time.monotonic()
        await _stop(self.task, self.stop)
        return time.monotonic() - started


async def _stop(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Set `stop` and wait for serve() to return: a bridge that does not stop fails the test
    (it is not cancelled into stopping, which could hide a hang)."""
    stop.set()
    done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise AssertionError(f"serve() did not return within {STOP_TIMEOUT:g}s of stop")
    task.result()


@contextlib.asynccontextmanager
async def replica(
    settings: BridgeSettings, captured: Captured, *, wait_ready: bool = True
) -> AsyncIterator[Replica]:
    """serve(settings) as a task of this loop until the block ends (or shutdown())."""
    stop = asyncio.Event()
    listening: asyncio.Future[Listening] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop=stop, on_listening=listening.set_result))
    try:
        waiting: set[asyncio.Future[Any]] = {task, listening}
        done, _ = await asyncio.wait(
            waiting, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()
            raise AssertionError("serve() returned before listening")
        if listening not in done:
            raise AssertionError(f"the bridge did not listen within {START_TIMEOUT:g}s")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            bridge = Replica(
                settings=settings,
                listening=listening.result(),
                tracking=captured.tracking[id(settings)],
                task=task,
                stop=stop,
                session=session,
                captured=captured,
            )
            if wait_ready:
                await bridge.wait_ready()
            yield bridge
    finally:
        await _stop(task, stop)


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    within: float,
    what: str | Callable[[], str],
    interval: float = 0.1,
) -> float:
    """Poll `condition` until it holds; the seconds it took. Fails naming `what`."""
    started = time.monotonic()
    deadline = started + within
    while not await condition():
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"not within {within:g}s: {text}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


# -- readback --------------------------------------------------------------------------------


@dataclass
class Census:
    """What the event topics hold, per event id."""

    records: list[Record]

    @property
    def counts(self) -> Counter[int]:
        return Counter(int(r.headers["event-id"]) for r in self.records)

    def missing(self, expected: Iterable[int]) -> set[int]:
        return set(expected) - set(self.counts)

    def duplicates(self) -> dict[int, int]:
        return {i: c for i, c in self.counts.items() if c > 1}

    def unexpected(self, expected: Iterable[int]) -> set[int]:
        return set(self.counts) - set(expected)

    def by_source(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for r in self.records:
            out.setdefault(r.headers["source"].decode(), set()).add(int(r.headers["event-id"]))
        return out


def read_to_end(bootstrap: str, topics: Iterable[str], timeout: float = 20.0) -> list[Record]:
    """Every record of `topics` up to their end offsets of now, with confluent-kafka.

    readback.consume, but the end offsets come in one ListOffsets request rather than one
    watermark query per partition (a second and a half for 32 partitions on tansu): these
    tests read the topics back many times while waiting.
    """
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=timeout)
    partitions = [
        TopicPartition(topic, p)
        for topic in sorted(set(topics))
        if topic in metadata.topics and metadata.topics[topic].error is None
        for p in metadata.topics[topic].partitions
    ]
    if not partitions:
        return []
    while True:
        latest = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions},  # type: ignore[no-untyped-call]
            request_timeout=timeout,
        )
        try:
            ends = {(tp.topic, tp.partition): f.result().offset for tp, f in latest.items()}
            break
        except KafkaException as exc:
            # Right after a topic's creation or a restart (NOT_LEADER, UNKNOWN_LEADER_EPOCH).
            if not transient(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    wanted = {tp: end for tp, end in ends.items() if end > 0}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"readback-{uuid.uuid4().hex[:8]}",  # unused: assign(), no group
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 50,
            "log.connection.close": False,
        }
    )
    records: list[Record] = []
    reached: dict[tuple[str, int], int] = {}
    try:
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in wanted])
        while any(reached.get(tp, 0) < end for tp, end in wanted.items()):
            if time.monotonic() >= deadline:
                raise AssertionError(f"read back not done within {timeout:g}s")
            messages = consumer.consume(num_messages=500, timeout=0.1)
            if not messages:
                # A transactional partition ends with a commit marker, never delivered: the
                # position (librdkafka moves it past markers) says the end was reached.
                for tp in consumer.position([TopicPartition(t, p) for t, p in wanted]):
                    reached[(tp.topic, tp.partition)] = max(
                        reached.get((tp.topic, tp.partition), 0), tp.offset
                    )
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                topic, partition = message.topic(), message.partition()
                assert topic is not None
                assert partition is not None
                offset = message.offset() or 0
                reached[(topic, partition)] = offset + 1
                headers = dict(message.headers() or [])
                records.append(
                    Record(
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        key=message.key(),
                        value=message.value(),
                        headers={
                            k: v.encode() if isinstance(v, str) else v or b""
                            for k, v in headers.items()
                        },
                    )
                )
    finally:
        consumer.close()
    return records


async def read_events(bootstrap: str, prefix: str, within: float = 20.0) -> Census:
    """Every record of the event topics, up to their end offsets now."""
    return Census(await asyncio.to_thread(read_to_end, bootstrap, event_topics(prefix), within))


async def wait_all_published(
    bootstrap: str, prefix: str, expected: Iterable[int], within: float
) -> tuple[Census, float]:
    """Read back until every expected id is in the event topics; the census and the time."""
    wanted = set(expected)
    last: list[Census] = []

    async def complete() -> bool:
        census = await read_events(bootstrap, prefix)
        last[:] = [census]
        return not census.missing(wanted)

    def why() -> str:
        missing = sorted(last[0].missing(wanted)) if last else sorted(wanted)
        return f"{len(missing)} of {len(wanted)} events missing, e.g. {missing[:10]}"

    took = await wait_until(complete, within, why, interval=0.5)
    return last[0], took


# -- metrics ---------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when the series does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(name: str, label: str) -> dict[str, float]:
    """Every series of a counter/gauge by one label's value."""
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name and label in s.labels:
                out[s.labels[label]] = s.value
    return out


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    keys = set(before) | set(after)
    return {k: d for k in keys if (d := after.get(k, 0.0) - before.get(k, 0.0))}
