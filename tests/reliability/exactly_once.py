"""exactly_once under faults: every id once for a read_committed reader, whatever happens.

Bridges run as `apizee-bridge run` processes with BRIDGE_DELIVERY_GUARANTEE=exactly_once
(SIGKILL and SIGSTOP are real signals to real processes). A sender posts every webhook
until it is answered 200: to the replica the balancer picked, and after an error or a 503
to the next one, as a load balancer's retries would. Then confluent-kafka reads the event
topics back with isolation.level=read_committed:

    missing    = ids answered 200 - ids in Kafka              (must be 0)
    duplicates = records beyond the first per event id         (must be 0)
    unexpected = ids in Kafka that were never sent             (must be 0)

tests/integration/test_exactly_once.py runs these at CI size; `make reliability` at full size.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from tests.integration.bridgeproc import (
    TOKEN,
    TOKEN_HEADER,
    BridgeClient,
    BridgeProcess,
    process_env,
    webhook,
)
from tests.integration.pollerkit import read_events
from tests.reliability.cluster import SEED_PROPS
from tests.reliability.scenarios import Row

SESSION_TIMEOUT_MS: Final = 2000  # the intake group's, short: the tests wait for it
PARTITIONS: Final = 4
START_WITHIN: Final = 60.0


@dataclass(frozen=True, slots=True)
class Size:
    webhooks: int = 600
    concurrency: int = 16
    tickets: int = 40
    retry_within: float = 90.0


CI: Final = Size()
FULL: Final = Size(webhooks=4000, concurrency=32, tickets=200, retry_within=180.0)


def bodies(size: Size, first_id: int = 1) -> list[dict[str, Any]]:
    """Seed-shaped webhooks of every event type, spread over the tickets."""
    types = list(SEED_PROPS)
    return [
        webhook(
            types[n % len(types)],
            SEED_PROPS[types[n % len(types)]],
            event_id=first_id + n,
            ticket_id=300_000 + n % size.tickets,
        )
        for n in range(size.webhooks)
    ]


def env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    return process_env(
        bootstrap,
        prefix,
        BRIDGE_DELIVERY_GUARANTEE="exactly_once",
        BRIDGE_KAFKA_TOPIC_PARTITIONS=str(PARTITIONS),
        BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS="5",
        BRIDGE_INGRESS_RETRY_AFTER_SECONDS="1",
        BRIDGE_INGRESS_ACCESS_LOG="false",
        BRIDGE_POLLER_GROUP_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
        BRIDGE_POLLER_GROUP_HEARTBEAT_INTERVAL_MS="300",
        BRIDGE_DELIVERY_TRANSACTION_TIMEOUT_MS="5000",
        **extra,
    )


@dataclass
class Replica:
    process: BridgeProcess
    client: BridgeClient

    def owned(self) -> int:
        """Intake partitions this replica owns now, by its last log line that says."""
        lines = [
            line
            for line in self.process.lines
            if '"intake_partition_owned"' in line or '"intake_partitions_revoked"' in line
        ]
        return len(json.loads(lines[-1])["owned"]) if lines else 0


class Replicas:
    """Bridge processes on one topic prefix; every one killed on exit."""

    def __init__(self, bootstrap: str, prefix: str, logs: Path, **extra: str) -> None:
        self.bootstrap, self.prefix, self.logs, self.extra = bootstrap, prefix, logs, extra
        self.all: list[Replica] = []
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Replicas:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for replica in self.all:
            await replica.process.kill()
        if self.session is not None:
            await self.session.close()

    async def start(self) -> Replica:
        log = self.logs / f"{self.prefix}.bridge-{len(self.all)}.log"
        process = await BridgeProcess.start(
            ["run"], env(self.bootstrap, self.prefix, **self.extra), log
        )
        assert self.session is not None
        try:
            (where,) = (await process.wait_events("listening", 1, START_WITHIN))[-1:]
            client = BridgeClient(
                where["webhook_url"], f"http://127.0.0.1:{where['admin_port']}", self.session
            )
            await client.wait_ready(START_WITHIN)
        except BaseException:
            await process.kill()
            raise
        replica = Replica(process, client)
        self.all.append(replica)
        return replica


@dataclass
class Load:
    """Posts each body until 200: first to the replica its turn names, after an error or a
    503 to the next (a balancer's retry), `concurrency` at a time. `both` posts each body to
    every replica at once (Apizee resending to another replica while the first is busy)."""

    urls: list[str]
    bodies: list[dict[str, Any]]
    concurrency: int
    retry_within: float = 90.0
    both: bool = False
    client_timeout: float = 8.0
    acked: set[int] = field(default_factory=set)
    sent: set[int] = field(default_factory=set)
    statuses: Counter[int | str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    gave_up: set[int] = field(default_factory=set)
    done: int = 0

    async def run(self) -> Load:
        queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        for n, body in enumerate(self.bodies):
            queue.put_nowait((n, body))
        timeout = aiohttp.ClientTimeout(total=self.client_timeout)
        connector = aiohttp.TCPConnector(limit=self.concurrency * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._worker(session, queue) for _ in range(self.concurrency)))
        return self

    async def _worker(
        self, session: aiohttp.ClientSession, queue: asyncio.Queue[tuple[int, dict[str, Any]]]
    ) -> None:
        while not queue.empty():
            n, body = queue.get_nowait()
            data = json.dumps(body).encode()
            if self.both:
                await asyncio.gather(
                    *(self._until_200(session, body, data, i) for i in range(len(self.urls)))
                )
            else:
                await self._until_200(session, body, data, n)
            self.done += 1

    async def _until_200(
        self, session: aiohttp.ClientSession, body: dict[str, Any], data: bytes, turn: int
    ) -> None:
        headers = {"Content-Type": "application/json", TOKEN_HEADER: TOKEN}
        deadline = time.monotonic() + self.retry_within
        event_id = body["objectId"]
        for attempt in itertools.count(turn):
            url = self.urls[attempt % len(self.urls)]
            self.sent.add(event_id)
            try:
                async with session.post(url, data=data, headers=headers) as response:
                    answer = await response.read()
                    status: int | str = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
                answer = b""
            self.statuses[status] += 1
            if status == 200:
                self.acked.add(event_id)
                self.answers[json.loads(answer)["status"]] += 1
                return
            if isinstance(status, int) and status != 503:
                raise AssertionError(f"event {event_id}: HTTP {status} {answer[:200]!r}")
            if time.monotonic() >= deadline:
                self.gave_up.add(event_id)
                return
            await asyncio.sleep(0.1)


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.05)


async def _row(name: str, bootstrap: str, prefix: str, load: Load, note: str) -> Row:
    """Read back (read_committed) until every acked id is there, or a deadline."""
    deadline = time.monotonic() + 60
    while True:
        census = await read_events(bootstrap, prefix, within=60)
        if not census.missing(load.acked) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(1.0)
    missing = census.missing(load.acked)
    row = Row(
        guarantee="exactly_once",
        scenario=name,
        events=len(load.bodies),
        sent=len(load.sent),
        acked=len(load.acked),
        in_kafka=len(census.counts),
        missing=len(missing),
        duplicates=sum(census.counts.values()) - len(census.counts),
        recover_s=None,
        missing_ids=sorted(missing)[:20],
        note=(
            f"{note}; answers {dict(load.answers)}, statuses {dict(load.statuses)};"
            f" {len(load.gave_up)} given up"
        ),
    )
    row.details.update(unexpected=len(census.unexpected(load.sent)), gave_up=len(load.gave_up))
    return row


@contextlib.asynccontextmanager
async def _replicas(
    bootstrap: str, prefix: str, logs: Path, count: int
) -> AsyncIterator[tuple[Replicas, list[Replica]]]:
    async with Replicas(bootstrap, prefix, logs) as group:
        started = [await group.start() for _ in range(count)]
        # Every intake partition owned before the load: the replicas' first rebalance done.
        await _until(
            lambda: (
                sum(r.owned() for r in started) == PARTITIONS
                and all(r.owned() > 0 for r in started)
            ),
            START_WITHIN,
            "the intake partitions shared out",
        )
        yield group, started


# -- the same webhook posted to two replicas at once ------------------------------------------


async def same_webhook_two_replicas(bootstrap: str, prefix: str, logs: Path, size: Size) -> Row:
    async with _replicas(bootstrap, prefix, logs, 2) as (_, (a, b)):
        load = Load(
            [a.client.webhook_url, b.client.webhook_url],
            bodies(size),
            size.concurrency,
            size.retry_within,
            both=True,
        )
        await load.run()
        row = await _row(
            "E1 same webhook to 2 replicas at once",
            bootstrap,
            prefix,
            load,
            "every webhook posted to both replicas concurrently",
        )
    return row


# -- a replica SIGKILLed mid-load ---------------------------------------------------------------


async def replica_killed(bootstrap: str, prefix: str, logs: Path, size: Size) -> Row:
    async with _replicas(bootstrap, prefix, logs, 2) as (_, (a, b)):
        load = Load(
            [a.client.webhook_url, b.client.webhook_url],
            bodies(size),
            size.concurrency,
            size.retry_within,
        )
        sending = asyncio.create_task(load.run())
        await _until(lambda: load.done >= size.webhooks // 3, 120, "a third answered")
        await a.process.kill()
        killed_at = time.monotonic()
        # The group gives the dead replica's partitions to the survivor after the session
        # timeout; its producers fence the dead one's transactional ids.
        await _until(lambda: b.owned() == PARTITIONS, 60, "the survivor owns every partition")
        takeover = time.monotonic() - killed_at
        await sending
        assert b.process.process.returncode is None, b.process.transcript()
        row = await _row(
            "E2 replica SIGKILLed mid-load",
            bootstrap,
            prefix,
            load,
            f"replica killed after {size.webhooks // 3} answers; its partitions owned by the"
            f" other {takeover:.1f}s later (session timeout {SESSION_TIMEOUT_MS / 1000:g}s)",
        )
    row.details.update(takeover_ms=round(takeover * 1000))
    return row


# -- a zombie: SIGSTOPped past the session timeout, resumed once its partitions moved ----------


async def zombie(bootstrap: str, prefix: str, logs: Path, size: Size) -> Row:
    async with _replicas(bootstrap, prefix, logs, 2) as (_, (a, b)):
        load = Load(
            [a.client.webhook_url, b.client.webhook_url],
            bodies(size),
            size.concurrency,
            size.retry_within,
            client_timeout=4.0,
        )
        sending = asyncio.create_task(load.run())
        await _until(lambda: load.done >= size.webhooks // 4, 120, "a quarter answered")
        a.process.signal(signal.SIGSTOP)  # a zombie: connections open, nothing answered
        stopped_at = time.monotonic()
        try:
            await _until(lambda: b.owned() == PARTITIONS, 60, "the other owns every partition")
            moved = time.monotonic() - stopped_at
            # Some load while the zombie sleeps, then it wakes up believing it owns them.
            done = load.done
            await _until(lambda: load.done >= done + size.webhooks // 8, 120, "load meanwhile")
        finally:
            before_wake = len(a.process.lines)
            a.process.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        await sending
        assert a.process.process.returncode is None, a.process.transcript()
        woken = [json.loads(x) for x in a.process.lines[before_wake:] if x.startswith("{")]
        failed = [e for e in woken if e.get("event") == "intake_transaction_failed"]
        fenced = sum(1 for e in failed if e.get("fenced"))
        errors = Counter(str(e.get("error")) for e in failed)
        revoked = sum(1 for e in woken if e.get("event") == "intake_partitions_revoked")
        row = await _row(
            "E3 zombie replica (SIGSTOP, SIGCONT)",
            bootstrap,
            prefix,
            load,
            f"replica stopped {resumed_at - stopped_at:.1f}s; its partitions owned by the other"
            f" {moved:.1f}s after the stop; on waking: transactions failed {dict(errors)}"
            f" ({fenced} fenced), {revoked} revocations",
        )
    row.details.update(moved_ms=round(moved * 1000), zombie_fenced=fenced, revoked=revoked)
    return row


# -- replicas scaled 1 -> 3 -> 1 under load --------------------------------------------------


async def scaled(bootstrap: str, prefix: str, logs: Path, size: Size) -> Row:
    """One replica, two more join under load (the group moves partitions to them), then those
    two get SIGTERM (they commit what is open and leave) while the load goes on."""
    async with _replicas(bootstrap, prefix, logs, 1) as (group, (a,)):
        load = Load([a.client.webhook_url], bodies(size), size.concurrency, size.retry_within)
        sending = asyncio.create_task(load.run())
        await _until(lambda: load.done >= size.webhooks // 4, 120, "a quarter answered")
        b, c = await group.start(), await group.start()
        load.urls += [b.client.webhook_url, c.client.webhook_url]
        await _until(
            lambda: (
                sum(r.owned() for r in (a, b, c)) == PARTITIONS
                and all(r.owned() > 0 for r in (a, b, c))
            ),
            60,
            "the partitions shared by three",
        )
        at_three = load.done
        await _until(lambda: load.done >= at_three + size.webhooks // 4, 120, "load on three")
        for replica in (b, c):
            replica.process.signal(signal.SIGTERM)
        codes = [await replica.process.stopped(60) for replica in (b, c)]
        load.urls[:] = [a.client.webhook_url]
        await _until(lambda: a.owned() == PARTITIONS, 60, "one replica owns every partition")
        await sending
        row = await _row(
            "E4 replicas 1 -> 3 -> 1 under load",
            bootstrap,
            prefix,
            load,
            f"two replicas joined after {size.webhooks // 4} answers, left (SIGTERM, exit"
            f" {codes}) {size.webhooks // 4} answers later",
        )
    row.details.update(exits=sum(abs(code) for code in codes))
    return row
