"""Failover scenarios that only a real cluster can carry: 3 Apache Kafka nodes (KRaft, combined
broker+controller), the bridge's topics at replication factor 3 with min.insync.replicas=2,
and the bridge as a process (`apizee-bridge run`, default producer: idempotent, acks=all).

A sender posts every webhook until it is answered 200 (503s and connection errors retried
after a short pause, as Apizee retries), `concurrency` at a time, while a node is killed,
restarted or two are taken down. Then confluent-kafka reads the event topics back:

    missing = ids answered 200 - ids in Kafka          (must be 0)
    duplicates = records beyond the first per event id (reported: at-least-once)

plus the 503s the sender met and the longest time without any 200 during the load.
tests/integration/test_cluster.py runs these at CI size; `make reliability` at full size.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from bridge.catalog import EVENTS
from bridge.devtools.devbroker import KafkaCluster
from bridge.publisher import TopicNames
from bridge.state import partition_for
from tests.integration import kafkakit
from tests.integration.bridgeproc import (
    TOKEN,
    TOKEN_HEADER,
    BridgeClient,
    BridgeProcess,
    process_env,
    webhook,
)
from tests.integration.pollerkit import read_events
from tests.reliability.scenarios import Row

_FIXTURES: Final = Path(__file__).parents[1] / "fixtures"
SEED_PROPS: Final[dict[str, dict[str, Any]]] = json.loads(
    (_FIXTURES / "seed_props_examples.json").read_text()
)
START_WITHIN: Final = 60.0


@dataclass(frozen=True, slots=True)
class LoadSize:
    webhooks: int = 2000
    concurrency: int = 32
    tickets: int = 60
    settle_within: float = 90.0  # every 200'd id read back within this


CI: Final = LoadSize()
FULL: Final = LoadSize(webhooks=10_000, concurrency=32, tickets=200, settle_within=180.0)


def bodies(size: LoadSize, first_id: int = 1) -> list[dict[str, Any]]:
    """`size.webhooks` seed-shaped webhooks of every event type, spread over the tickets."""
    types = list(SEED_PROPS)
    return [
        webhook(
            types[n % len(types)],
            SEED_PROPS[types[n % len(types)]],
            event_id=first_id + n,
            ticket_id=100_000 + n % size.tickets,
        )
        for n in range(size.webhooks)
    ]


def busiest_topic(prefix: str) -> str:
    """The category topic that gets the most of `bodies()` (the most event types)."""
    categories = Counter(EVENTS[t].category for t in SEED_PROPS)
    return TopicNames(prefix).category(categories.most_common(1)[0][0])


@dataclass
class Load:
    """Posts each body until 200 (or the deadline), `concurrency` at a time."""

    url: str
    bodies: list[dict[str, Any]]
    concurrency: int
    retry_within: float = 120.0
    acked: set[int] = field(default_factory=set)
    statuses: Counter[int | str] = field(default_factory=Counter)
    ok_times: list[float] = field(default_factory=list)
    gave_up: set[int] = field(default_factory=set)
    started: float = 0.0
    ended: float = 0.0

    async def run(self) -> Load:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for body in self.bodies:
            queue.put_nowait(body)
        self.started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._worker(session, queue) for _ in range(self.concurrency)))
        self.ended = time.monotonic()
        return self

    async def _worker(
        self, session: aiohttp.ClientSession, queue: asyncio.Queue[dict[str, Any]]
    ) -> None:
        headers = {"Content-Type": "application/json", TOKEN_HEADER: TOKEN}
        while not queue.empty():
            body = queue.get_nowait()
            data = json.dumps(body).encode()
            deadline = time.monotonic() + self.retry_within
            while True:
                try:
                    async with session.post(self.url, data=data, headers=headers) as response:
                        await response.read()
                        status: int | str = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                self.statuses[status] += 1
                if status in (200, 202):
                    self.acked.add(body["objectId"])
                    self.ok_times.append(time.monotonic())
                    break
                if status != 503 and isinstance(status, int):
                    raise AssertionError(f"event {body['objectId']}: HTTP {status}")
                if time.monotonic() >= deadline:
                    self.gave_up.add(body["objectId"])
                    break
                await asyncio.sleep(0.2)

    def longest_without_200(self, since: float | None = None) -> float:
        """The longest stretch of the load with no 200 answered (seconds)."""
        start = since or self.started
        times = sorted([start, *(t for t in self.ok_times if t > start), self.ended or start])
        return max(b - a for a, b in itertools.pairwise(times))


@contextlib.asynccontextmanager
async def bridge_on(
    cluster: KafkaCluster, prefix: str, logs: Path, **variables: str
) -> AsyncIterator[tuple[BridgeProcess, BridgeClient]]:
    """`apizee-bridge run` on the cluster, default producer and topic settings, no poller."""
    defaults = {
        "BRIDGE_INGRESS_ACCESS_LOG": "false",
        "BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS": "5",
        "BRIDGE_INGRESS_RETRY_AFTER_SECONDS": "1",
    }
    env = process_env(cluster.bootstrap_servers, prefix, **{**defaults, **variables})
    process = await BridgeProcess.start(["run"], env, logs / f"{prefix}.bridge.log")
    try:
        (where,) = (await process.wait_events("listening", 1, START_WITHIN))[-1:]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            client = BridgeClient(
                where["webhook_url"], f"http://127.0.0.1:{where['admin_port']}", session
            )
            await client.wait_ready(START_WITHIN)
            yield process, client
    finally:
        await process.kill()


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.05)


async def _row(
    name: str, cluster: KafkaCluster, prefix: str, load: Load, size: LoadSize, fault_at: float
) -> Row:
    """Read back until every 200'd id is there (or the deadline); the table row."""
    deadline = time.monotonic() + size.settle_within
    while True:
        census = await read_events(cluster.bootstrap_servers, prefix, within=60)
        missing = census.missing(load.acked)
        if not missing or time.monotonic() >= deadline:
            break
        await asyncio.sleep(1.0)
    row = Row(
        scenario=name,
        events=len(load.bodies),
        sent=len(load.bodies),
        acked=len(load.acked),
        in_kafka=len(census.counts),
        missing=len(missing),
        duplicates=sum(census.counts.values()) - len(census.counts),
        recover_s=None,
        missing_ids=sorted(missing)[:20],
    )
    outage = load.longest_without_200(since=fault_at)
    row.details.update(
        status_503=load.statuses[503],
        errors=sum(v for k, v in load.statuses.items() if not isinstance(k, int)),
        gave_up=len(load.gave_up),
        longest_without_200_ms=round(outage * 1000),
    )
    row.recover_s = outage
    row.note = (
        f"{load.statuses[503]} answers 503, {row.details['errors']} connection errors;"
        f" longest without a 200: {outage:.1f}s; load {load.ended - load.started:.1f}s at"
        f" concurrency {load.concurrency}"
    )
    return row


# -- the leader of a busy partition SIGKILLed mid-load ---------------------------------------


async def leader_kill(
    cluster: KafkaCluster,
    prefix: str,
    logs: Path,
    size: LoadSize,
    guarantee: str = "at_least_once",
) -> Row:
    variables = {"BRIDGE_DELIVERY_GUARANTEE": guarantee}
    async with bridge_on(cluster, prefix, logs, **variables) as (_, client):
        load = Load(client.webhook_url, bodies(size), size.concurrency)
        sending = asyncio.create_task(load.run())
        await _until(lambda: len(load.acked) >= size.webhooks // 3, 120, "a third acked")
        topic = busiest_topic(prefix)
        leader = (await asyncio.to_thread(kafkakit.leaders, cluster.bootstrap_servers, topic))[0]
        fault_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, leader)
        acked_at_kill = len(load.acked)
        await sending
        row = await _row("7 partition leader SIGKILLed", cluster, prefix, load, size, fault_at)
        row.guarantee = guarantee
    await asyncio.to_thread(cluster.start_node, leader)
    row.details.update(killed_node=leader, acked_before_kill=acked_at_kill)
    row.note = f"node {leader} (leader of {topic}-0) killed after {acked_at_kill} acks; " + row.note
    return row


# -- every node restarted in turn under load -------------------------------------------------


async def rolling_restart(
    cluster: KafkaCluster,
    prefix: str,
    logs: Path,
    size: LoadSize,
    guarantee: str = "at_least_once",
) -> Row:
    topics = TopicNames(prefix).events()
    variables = {"BRIDGE_DELIVERY_GUARANTEE": guarantee}
    async with bridge_on(cluster, prefix, logs, **variables) as (_, client):
        load = Load(client.webhook_url, bodies(size), size.concurrency)
        sending = asyncio.create_task(load.run())
        await _until(lambda: len(load.acked) >= size.webhooks // 10, 120, "a tenth acked")
        fault_at = time.monotonic()
        restarted = 0
        for node in cluster.nodes:
            # As an operator would: the next node goes down only once every partition has its
            # three replicas in sync again.
            await asyncio.to_thread(cluster.restart, node.node_id)
            await asyncio.to_thread(
                kafkakit.wait_fully_replicated, cluster.bootstrap_servers, topics, 3, 90
            )
            restarted += 1
        restart_seconds = time.monotonic() - fault_at
        await sending
        row = await _row("8 rolling restart of 3 nodes", cluster, prefix, load, size, fault_at)
        row.guarantee = guarantee
    row.details.update(restarted=restarted)
    row.note = f"{restarted} nodes restarted in {restart_seconds:.0f}s; " + row.note
    return row


# -- two of three nodes down: below min.insync.replicas --------------------------------------


@dataclass
class IsrOutage:
    row: Row
    answers_during: Counter[int | str]
    readyz_during: dict[str, Any]
    recovered_within: float


async def isr_outage(
    cluster: KafkaCluster,
    prefix: str,
    logs: Path,
    size: LoadSize,
    outage_seconds: float = 15.0,
    guarantee: str = "at_least_once",
) -> IsrOutage:
    """Two nodes killed: no write can reach min.insync.replicas=2. The bridge must answer 503
    (never 200), say why on /readyz, and publish again by itself once one node is back."""
    variables = {
        "BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS": "3",
        "BRIDGE_DELIVERY_GUARANTEE": guarantee,
    }
    async with bridge_on(cluster, prefix, logs, **variables) as (
        process,
        client,
    ):
        before = await Load(client.webhook_url, bodies(LoadSize(webhooks=100)), 8).run()
        assert len(before.acked) == 100, before.statuses
        down = [n.node_id for n in cluster.nodes[1:]]
        fault_at = time.monotonic()
        for node_id in down:
            await asyncio.to_thread(cluster.kill, node_id)
        # During the outage: each webhook answered once (no retry), none may be a 200.
        during = Load(
            client.webhook_url,
            bodies(LoadSize(webhooks=size.concurrency * 4), first_id=500_000),
            size.concurrency,
            retry_within=0.0,
        )
        sending = asyncio.create_task(during.run())
        await client.wait_ready(60, ready=False)
        readyz = await client.readyz()
        assert readyz is not None
        await sending
        await asyncio.sleep(max(0.0, fault_at + outage_seconds - time.monotonic()))
        returned_at = time.monotonic()
        await asyncio.to_thread(cluster.start_node, down[0])
        # Recovery: the same process, no restart; a sender retrying as Apizee does.
        await client.wait_ready(120)
        after = await Load(
            client.webhook_url, bodies(LoadSize(webhooks=300), first_id=600_000), 16
        ).run()
        recovered = time.monotonic() - returned_at
        assert process.process.returncode is None, "the bridge exited"
        acked = before.acked | during.acked | after.acked
        merged = Load(
            client.webhook_url, [*before.bodies, *during.bodies, *after.bodies], size.concurrency
        )
        merged.acked, merged.statuses = acked, during.statuses + after.statuses
        merged.ok_times = [*during.ok_times, *after.ok_times]
        merged.started, merged.ended = fault_at, time.monotonic()
        row = await _row("9 2 of 3 nodes down (ISR<min)", cluster, prefix, merged, size, fault_at)
        row.guarantee = guarantee
    await asyncio.to_thread(cluster.start_node, down[1])
    row.details.update(readyz_status=readyz.status, recovered_ms=round(recovered * 1000))
    row.note = (
        f"nodes {down} killed for {returned_at - fault_at:.0f}s: answers {dict(during.statuses)};"
        f" ready and 200 again {recovered:.1f}s after node {down[0]} returned; " + row.note
    )
    return IsrOutage(row, during.statuses, readyz.json(), recovered)


# -- the leader of some partitions SIGSTOPped (hung, not dead) --------------------------------


class LeaderWatch:
    """Partition leaders and ISRs of one topic as the *live* nodes report them, every 100 ms.

    Asked of each live node on a connection of its own (aiokafka's protocol, not the bridge's
    client): the frozen node is never asked, so the watch sees Kafka's failover as soon as the
    controller made it.
    """

    def __init__(self, cluster: KafkaCluster, topic: str, frozen: int) -> None:
        self.cluster, self.topic, self.frozen = cluster, topic, frozen
        self.led: set[int] = set()  # partitions the frozen node led when the watch began
        self.moved_at: dict[int, float] = {}  # partition -> when another leader was seen
        self.isr_shrunk_at: dict[int, float] = {}  # partition -> frozen node out of its ISR
        self._task: asyncio.Task[None] | None = None
        self._conns: list[Any] = []

    async def start(self) -> None:
        self._conns = [
            await create_conn(node.host, node.port, request_timeout_ms=1000)
            for node in self.cluster.nodes
            if node.node_id != self.frozen
        ]
        first = await self._ask()
        assert first is not None, "no live node answered metadata"
        self.led = {p for p, (leader, _) in first.items() if leader == self.frozen}
        self._task = asyncio.create_task(self._watch())

    async def _ask(self) -> dict[int, tuple[int, list[int]]] | None:
        for conn in self._conns:
            try:
                response = await conn.send(MetadataRequest([self.topic]))
            except (KafkaError, TimeoutError):
                continue
            (topic,) = response.topics
            partitions = topic[-1]
            return {p[1]: (p[2], list(p[4])) for p in partitions}
        return None

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            seen = await self._ask()
            for partition, (leader, isr) in (seen or {}).items():
                if partition in self.led and leader not in (self.frozen, -1):
                    self.moved_at.setdefault(partition, now)
                if self.frozen not in isr:
                    self.isr_shrunk_at.setdefault(partition, now)
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for conn in self._conns:
            conn.close()


@dataclass
class PartitionLoad:
    """Senders per ticket (hence per partition), each posting distinct events one after the
    other; a 503 is retried with the same body after a short pause, as Apizee would."""

    url: str
    tickets: dict[int, int]  # ticket -> partition
    senders_per_ticket: int = 1
    pause: float = 0.02
    oks: dict[int, list[float]] = field(default_factory=dict)  # partition -> 200 times
    refusals: dict[int, Counter[str]] = field(default_factory=dict)  # partition -> 503 reasons
    acked: set[int] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=len(self.tickets) * self.senders_per_ticket)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(
                *(
                    self._sender(session, ticket, n)
                    for n, ticket in enumerate(
                        [t for t in self.tickets for _ in range(self.senders_per_ticket)]
                    )
                )
            )

    async def _sender(self, session: aiohttp.ClientSession, ticket: int, n: int) -> None:
        headers = {"Content-Type": "application/json", TOKEN_HEADER: TOKEN}
        partition = self.tickets[ticket]
        oks = self.oks.setdefault(partition, [])
        refusals = self.refusals.setdefault(partition, Counter())
        for seq in itertools.count():
            if self.stop.is_set():
                return
            event_id = 1_000_000 * (n + 1) + seq
            body = webhook("ticket.assigned", event_id=event_id, ticket_id=ticket)
            data = json.dumps(body).encode()
            while not self.stop.is_set():
                try:
                    async with session.post(self.url, data=data, headers=headers) as response:
                        answer = await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    refusals[type(exc).__name__] += 1
                    await asyncio.sleep(0.1)
                    continue
                if status == 200:
                    oks.append(time.monotonic())
                    self.acked.add(event_id)
                    break
                if status != 503:
                    raise AssertionError(f"event {event_id}: HTTP {status} {answer[:200]!r}")
                refusals[json.loads(answer)["reason"].rsplit(" ", 1)[-1]] += 1
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.pause)

    def longest_without_200(self, partition: int, since: float, until: float) -> float:
        times = sorted([since, *(t for t in self.oks.get(partition, []) if since < t < until)])
        return max(b - a for a, b in itertools.pairwise([*times, until]))


@dataclass
class FrozenLeader:
    row: Row
    frozen: int
    led: set[int]
    failover: dict[int, float]  # partition it led -> seconds from the freeze to a new leader
    isr_shrunk: float | None  # seconds from the freeze until it left every ISR
    gaps: dict[int, float]  # partition -> longest time without a 200 from the freeze on
    refusals: dict[int, Counter[str]]  # partition -> 503 reasons (and connection errors)


async def transaction_coordinator(cluster: KafkaCluster, transactional_id: str) -> int:
    """The node coordinating `transactional_id`'s transactions (FindCoordinator, key type 1)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    await admin.start()
    try:
        node: int = await admin.find_coordinator(transactional_id, 1)
    finally:
        await admin.close()
    return node


# Brokers' request.timeout.ms for exactly_once (docs/exactly-once.md): a transaction
# coordinator's markers to a frozen partition leader wait that long, and the transactional
# id's next transaction with them (Kafka's default is 30000).
RECOMMENDED_FOR_EXACTLY_ONCE: Final = {"request.timeout.ms": "5000"}


def _tickets_per_partition(partitions: int, per_partition: int) -> dict[int, int]:
    tickets: dict[int, int] = {}
    counts: Counter[int] = Counter()
    for ticket in itertools.count(200_000):
        partition = partition_for(ticket, partitions)
        if counts[partition] < per_partition:
            tickets[ticket] = partition
            counts[partition] += 1
        if len(tickets) == partitions * per_partition:
            return tickets
    raise AssertionError("unreachable")


async def leader_frozen(
    cluster: KafkaCluster,
    prefix: str,
    logs: Path,
    freeze_seconds: float = 20.0,
    after_seconds: float = 5.0,
    partitions: int = 6,
    coordinator: bool = False,
    **variables: str,
) -> FrozenLeader:
    """The leader of some partitions SIGSTOPped for `freeze_seconds`, under load on every
    partition, with the bridge's default producer and timeouts (`variables` override them).

    Kafka fences the frozen node after broker.session.timeout.ms and moves its leaderships;
    the watch (live nodes' metadata) says when. Per partition: the longest time without a
    200 from the freeze on, against that failover time; and the 503s it got.
    `coordinator`: freeze instead the transaction coordinator of intake partition 0's
    transactional id (exactly_once), the node its commits wait for.
    """
    topic = TopicNames(prefix).category("ticket")
    variables = {
        "BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS": "10",  # the default, not bridge_on's
        "BRIDGE_KAFKA_TOPIC_PARTITIONS": str(partitions),
        **variables,
    }
    async with bridge_on(cluster, prefix, logs, **variables) as (process, client):
        tickets = _tickets_per_partition(partitions, 2)
        load = PartitionLoad(client.webhook_url, tickets)
        sending = asyncio.create_task(load.run())
        try:
            await _until(
                lambda: all(len(load.oks.get(p, [])) >= 20 for p in range(partitions)),
                60,
                "every partition acknowledged under load",
            )
            leaders = await asyncio.to_thread(kafkakit.leaders, cluster.bootstrap_servers, topic)
            frozen = leaders[0]
            if coordinator:
                frozen = await transaction_coordinator(cluster, f"{prefix}.intake-0")
            watch = LeaderWatch(cluster, topic, frozen)
            await watch.start()
            frozen_at = time.monotonic()
            await asyncio.to_thread(cluster.pause, frozen)
            try:
                await asyncio.sleep(freeze_seconds)  # the fault itself, not a sync
            finally:
                await asyncio.to_thread(cluster.resume, frozen)
            resumed_at = time.monotonic()
            await asyncio.sleep(after_seconds)
            ended = time.monotonic()
        finally:
            load.stop.set()
            await sending
            with contextlib.suppress(UnboundLocalError):
                await watch.stop()
        assert process.process.returncode is None, "the bridge exited"
        census = await read_events(cluster.bootstrap_servers, prefix, within=60)
    gaps = {p: load.longest_without_200(p, frozen_at, ended) for p in range(partitions)}
    failover = {p: at - frozen_at for p, at in watch.moved_at.items()}
    shrunk = watch.isr_shrunk_at
    isr_shrunk = max(shrunk.values()) - frozen_at if len(shrunk) == partitions else None
    missing = census.missing(load.acked)
    row = Row(
        scenario=(
            "E5 transaction coordinator SIGSTOPped"
            if coordinator
            else "10 partition leader SIGSTOPped"
        ),
        events=len(load.acked),
        sent=len(load.acked),
        acked=len(load.acked),
        in_kafka=len(set(census.counts) & load.acked),
        missing=len(missing),
        duplicates=sum(census.counts.values()) - len(census.counts),
        recover_s=max(gaps[p] - failover.get(p, 0.0) for p in watch.led) if watch.led else None,
        missing_ids=sorted(missing)[:20],
    )
    shown = ", ".join(
        f"p{p}: {gaps[p]:.1f}s"
        + (f" (failover {failover[p]:.1f}s)" if p in failover else "")
        + (f" 503 {dict(load.refusals[p])}" if load.refusals.get(p) else "")
        for p in range(partitions)
    )
    role = "transaction coordinator of intake-0, " if coordinator else ""
    row.note = (
        f"node {frozen} ({role}leader of partitions {sorted(watch.led)}) frozen"
        f" {resumed_at - frozen_at:.0f}s; longest without a 200 per partition: {shown};"
        f" frozen node out of every ISR after"
        f" {'-' if isr_shrunk is None else f'{isr_shrunk:.1f}s'}"
    )
    row.details.update(frozen=frozen)
    return FrozenLeader(
        row=row,
        frozen=frozen,
        led=set(watch.led),
        failover=failover,
        isr_shrunk=isr_shrunk,
        gaps=gaps,
        refusals=load.refusals,
    )
