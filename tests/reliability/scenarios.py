"""Reliability scenarios: the bridge under faults, measured end to end on a real broker.

Each scenario is a coroutine parameterised by a `Size` that returns a `Row`: events Apizee
recorded, webhooks sent, acknowledged, distinct ids in Kafka, missing, duplicates, and the
seconds from the end of the fault until every event it had to recover was in Kafka.

    missing = (acked ids | REST-listed ids) - ids in Kafka, once the poller settled

The bridge runs as `apizee-bridge run` processes (SIGTERM and SIGKILL are real signals to a
real process) with its poller on the simulated Apizee; the simulator's WebhookSender retries
503s and connection errors as a webhook platform does. tests/integration/test_reliability.py
runs every scenario at CI size; `make reliability` runs `python -m tests.reliability.scenarios`
(full size) and prints the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import aiohttp

from bridge.devtools.devbroker import KafkaCluster, free_port
from bridge.devtools.simulator import (
    FaultWindow,
    RestFaults,
    SendReport,
    Simulator,
    SimulatorConfig,
    generate_tickets,
)
from tests.integration.bridgeproc import TOKEN, BridgeClient, BridgeProcess, process_env
from tests.integration.pollerkit import Census, read_events

SIM_TOKEN: Final = "simulator-token"
SESSION_TIMEOUT_MS: Final = 2000  # the poller group's, short: tests wait for it
START_WITHIN: Final = 30.0


@dataclass(frozen=True, slots=True)
class Size:
    """How big a scenario runs: tickets, how long the webhook load lasts, the outage."""

    tickets: int = 10
    load_seconds: float = 6.0
    outage_seconds: float = 2.0  # broker down (1), REST outage (4)
    settle_within: float = 60.0  # deadline for Kafka to hold every expected id
    seed: int = 7
    # Deadline for one read of the event topics.
    read_within: float = 30.0


CI: Final = Size(tickets=8, load_seconds=5.0, outage_seconds=2.0, settle_within=45.0)
FULL: Final = Size(
    tickets=100, load_seconds=30.0, outage_seconds=10.0, settle_within=180.0, read_within=60.0
)
FULL_REST_OUTAGE: Final = 120.0  # scenario 4's outage at full size


@dataclass
class Row:
    scenario: str
    events: int  # what Apizee recorded (the REST API lists them all)
    sent: int  # distinct events whose webhook was sent (not dropped by design)
    acked: int  # distinct events the bridge answered 200/202 for
    in_kafka: int  # distinct event ids in the event topics
    missing: int  # (acked | REST-listed) - in Kafka
    duplicates: int  # records beyond the first per event id
    recover_s: float | None
    note: str = ""
    missing_ids: list[int] = field(default_factory=list)
    excluded: int = 0  # ids never announced by a webhook, not held (see note)
    details: dict[str, int] = field(default_factory=dict)  # per-scenario facts, for tests
    guarantee: str = "at_least_once"  # BRIDGE_DELIVERY_GUARANTEE of the bridges


# -- plumbing -----------------------------------------------------------------------------


def _rate(size: Size) -> float:
    n = sum(len(t.events) for t in generate_tickets(SimulatorConfig(tickets=size.tickets)))
    return max(1.0, n / size.load_seconds)


def _sim_config(size: Size, rest_port: int, **overrides: object) -> SimulatorConfig:
    config = SimulatorConfig(
        tickets=size.tickets, seed=size.seed, rate=_rate(size), rest_port=rest_port
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


def _env(bootstrap: str, prefix: str, rest_port: int, port: int, **extra: str) -> dict[str, str]:
    """A bridge with its poller on the simulator, fast timings (see ARCHITECTURE.md)."""
    return process_env(
        bootstrap,
        prefix,
        BRIDGE_INGRESS_PORT=str(port),
        BRIDGE_INGRESS_ACCESS_LOG="false",
        BRIDGE_INGRESS_SHUTDOWN_GRACE_SECONDS="10",
        BRIDGE_KAFKA_TOPIC_PARTITIONS="4",
        BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS="3",
        BRIDGE_INGRESS_RETRY_AFTER_SECONDS="1",
        BRIDGE_APIZEE_BASE_URL=f"http://127.0.0.1:{rest_port}",
        BRIDGE_APIZEE_TOKEN=SIM_TOKEN,
        BRIDGE_APIZEE_RATE_LIMIT_PER_SECOND="50",
        BRIDGE_APIZEE_RATE_LIMIT_BURST="20",
        BRIDGE_APIZEE_BACKOFF_INITIAL_SECONDS="0.1",
        BRIDGE_APIZEE_BACKOFF_MAX_SECONDS="2",
        BRIDGE_APIZEE_REQUEST_TIMEOUT_SECONDS="5",
        BRIDGE_APIZEE_CIRCUIT_OPEN_SECONDS="3",
        BRIDGE_POLLER_INTERVAL_SECONDS="1.5",
        BRIDGE_POLLER_SETTLE_SECONDS="1",
        BRIDGE_POLLER_TERMINAL_POLL_DELAY_SECONDS="0.5",
        BRIDGE_POLLER_RETIRE_GRACE_SECONDS="3",
        BRIDGE_POLLER_STATE_FLUSH_SECONDS="0.3",
        BRIDGE_POLLER_GROUP_ID=f"{prefix}.bridge",
        BRIDGE_POLLER_GROUP_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
        BRIDGE_POLLER_GROUP_HEARTBEAT_INTERVAL_MS="300",
        **extra,
    )


@dataclass
class Bridge:
    process: BridgeProcess
    client: BridgeClient


class Harness:
    """Bridge processes, a client session, logs in a directory; everything ended on exit."""

    def __init__(
        self, bootstrap: str, prefix: str, logs: Path, guarantee: str = "at_least_once"
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.logs = logs
        self.guarantee = guarantee
        self.rest_port = free_port()
        self.bridges: list[Bridge] = []
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Harness:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for bridge in self.bridges:
            await bridge.process.kill()
        if self.session is not None:
            await self.session.close()

    async def start(self, port: int, *, ready: bool = True, **extra: str) -> Bridge:
        extra = {"BRIDGE_DELIVERY_GUARANTEE": self.guarantee, **extra}
        env = _env(self.bootstrap, self.prefix, self.rest_port, port, **extra)
        log = self.logs / f"{self.prefix}.bridge-{len(self.bridges)}.log"
        process = await BridgeProcess.start(["run"], env, log)
        assert self.session is not None
        try:
            (where,) = (await process.wait_events("listening", 1, START_WITHIN))[-1:]
            client = BridgeClient(
                where["webhook_url"], f"http://127.0.0.1:{where['admin_port']}", self.session
            )
            bridge = Bridge(process, client)
            self.bridges.append(bridge)
        except BaseException:
            await process.kill()
            raise
        if ready:
            await client.wait_ready(START_WITHIN)
        return bridge


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.05)


async def _census_until(
    bootstrap: str,
    prefix: str,
    expected: Callable[[], set[int]],
    within: float,
    read_within: float = 30.0,
) -> tuple[Census, bool]:
    """Read the event topics until they hold every expected id or `within` passes."""
    deadline = time.monotonic() + within
    while True:
        census = await read_events(bootstrap, prefix, within=read_within)
        if not census.missing(expected()) or time.monotonic() >= deadline:
            return census, not census.missing(expected())
        await asyncio.sleep(0.5)


class Recovery:
    """Times, from the end of a fault, until Kafka holds every id of a set."""

    def __init__(self, bootstrap: str, prefix: str, read_within: float = 30.0) -> None:
        self.bootstrap, self.prefix, self.read_within = bootstrap, prefix, read_within
        self.seconds: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, ids: Iterable[int], within: float) -> None:
        wanted = set(ids)
        started = time.monotonic()

        async def watch() -> None:
            _, done = await _census_until(
                self.bootstrap, self.prefix, lambda: wanted, within, self.read_within
            )
            if done:
                self.seconds = time.monotonic() - started

        self._task = asyncio.create_task(watch())

    async def result(self) -> float | None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        return self.seconds


async def _recorded(sim: Simulator, share: float, within: float) -> None:
    await _until(
        lambda: sim.recorded_count >= len(sim.events) * share,
        within,
        f"{share:.0%} of the events recorded",
    )


async def _settle(
    h: Harness,
    name: str,
    sim: Simulator,
    sent: SendReport,
    recovery: Recovery,
    size: Size,
    *,
    note: str = "",
) -> Row:
    """Wait (deadline) until Kafka holds acked | REST-listed ids, then make the row."""
    silent = set(sim.tickets_without_webhook())
    unannounced = {e.event_id for e in sim.events if e.ticket_id in silent}
    acked = sim.acked_ids()
    expected = acked | (set(sim.event_ids()) - unannounced)
    census, _ = await _census_until(
        h.bootstrap, h.prefix, lambda: expected, size.settle_within, size.read_within
    )
    # One more poll interval and a read: duplicates that land late are counted too.
    await asyncio.sleep(1.5)
    census = await read_events(h.bootstrap, h.prefix, within=size.read_within)
    missing = sorted(census.missing(expected))
    extra_notes = [note] if note else []
    if unannounced:
        extra_notes.append(
            f"{len(silent)} tickets never announced by a webhook (need a backfill):"
            f" {len(unannounced)} ids not held"
        )
    return Row(
        guarantee=h.guarantee,
        scenario=name,
        events=len(sim.events),
        sent=len(set(sim.event_ids()) - sent.dropped),
        acked=len(acked),
        in_kafka=len(census.counts),
        missing=len(missing),
        duplicates=sum(census.counts.values()) - len(census.counts),
        recover_s=await recovery.result(),
        note="; ".join(extra_notes),
        missing_ids=missing[:20],
        excluded=len(unannounced),
    )


def _send(sim: Simulator, url: str, **options: object) -> asyncio.Task[SendReport]:
    # Retries long enough to span a restart: connection errors and 503s, backoff up to 1 s.
    defaults: dict[str, object] = {
        "token": TOKEN,
        "max_retries": 40,
        "backoff_max": 1.0,
        "concurrency": 8,
    }
    return asyncio.create_task(sim.send_all(url, **{**defaults, **options}))


# -- 1. broker killed and restarted ---------------------------------------------------------


async def broker_restart(
    broker: KafkaCluster, prefix: str, logs: Path, size: Size, guarantee: str = "at_least_once"
) -> Row:
    """The only broker of a single-node cluster is killed under steady load and restarted
    on the same port and disk.

    Every acked id counts, those acked before the kill included, as does every id the REST
    API lists. Recovery runs from the restart until Kafka holds every recorded id.
    """
    if len(broker.nodes) != 1:
        raise ValueError("scenario 1 kills the only broker: give it a single-node cluster")
    async with Harness(broker.bootstrap_servers, prefix, logs, guarantee) as h:
        port = free_port()
        bridge = await h.start(port)
        recovery = Recovery(h.bootstrap, prefix, size.read_within)
        async with Simulator(_sim_config(size, h.rest_port)) as sim:
            sending = _send(sim, bridge.client.webhook_url)
            await _recorded(sim, 0.35, size.load_seconds * 3 + 10)
            await asyncio.to_thread(broker.kill, 1)
            await bridge.client.wait_ready(20, ready=False)
            # Every answer the broker acknowledged before it died has reached the sender.
            acked_before = sim.acked_ids()
            await asyncio.sleep(size.outage_seconds)  # the outage itself, not a sync
            await asyncio.to_thread(broker.start_node, 1)
            recovery.start(sim.recorded_ids(), size.settle_within)
            sent = await sending
            row = await _settle(h, "1 broker killed+restarted", sim, sent, recovery, size)
    census = await read_events(h.bootstrap, prefix, within=size.read_within)
    lost_acked = acked_before - set(census.counts)
    row.details.update(acked_before=len(acked_before), lost_acked=len(lost_acked))
    row.note = "; ".join(
        filter(
            None,
            [
                f"{len(acked_before)} acked before the kill,"
                f" {len(lost_acked)} of them not in Kafka",
                row.note,
            ],
        )
    )
    return row


# -- 2 and 3. the bridge is stopped (SIGTERM) or killed (SIGKILL), a new one takes over ------


async def bridge_signal(
    bootstrap: str,
    prefix: str,
    logs: Path,
    size: Size,
    signum: signal.Signals,
    guarantee: str = "at_least_once",
) -> Row:
    async with Harness(bootstrap, prefix, logs, guarantee) as h:
        port = free_port()
        first = await h.start(port)
        recovery = Recovery(bootstrap, prefix)
        async with Simulator(_sim_config(size, h.rest_port)) as sim:
            sending = _send(sim, first.client.webhook_url, drop=0.05)
            await _recorded(sim, 0.35, size.load_seconds * 3 + 10)
            acked_before = sim.acked_ids()
            if signum == signal.SIGKILL:
                await first.process.kill()
                code = -9
            else:
                first.process.signal(signum)
                code = await first.process.stopped(30)
            # A new bridge on the same port (the sender's retries find it) and broker.
            await h.start(port)
            recovery.start(sim.recorded_ids(), size.settle_within)
            sent = await sending
            name = "2 SIGTERM, new bridge" if signum == signal.SIGTERM else "3 SIGKILL, restart"
            row = await _settle(h, name, sim, sent, recovery, size)
        census = await read_events(bootstrap, prefix, within=30)
    lost_acked = acked_before - set(census.counts)
    polled = census.by_source().get("POLLER", set())
    row.details.update(exit=code, acked_before=len(acked_before), lost_acked=len(lost_acked))
    row.details.update(polled=len(polled))
    row.note = "; ".join(
        filter(
            None,
            [
                f"exit {code}; {len(acked_before)} acked before the signal,"
                f" {len(lost_acked)} of them not in Kafka; {len(polled)} ids filled by the poller",
                row.note,
            ],
        )
    )
    return row


# -- 4. REST 429/5xx storm and an outage while webhooks are dropped ------------------------


async def rest_storm(
    bootstrap: str, prefix: str, logs: Path, size: Size, guarantee: str = "at_least_once"
) -> Row:
    outage = size.outage_seconds
    # The load spans the outage: it starts a third of the way in and ends before the end.
    load = max(size.load_seconds, outage * 1.5)
    size = replace(size, load_seconds=load)
    outage_start = load / 3
    faults = RestFaults(
        p_429=0.15,
        retry_after_seconds=1.0,
        p_500=0.05,
        p_502=0.05,
        p_503=0.05,
        windows=(FaultWindow(kind="outage", start=outage_start, duration=outage),),
    )
    async with Harness(bootstrap, prefix, logs, guarantee) as h:
        bridge = await h.start(free_port())
        recovery = Recovery(bootstrap, prefix)
        async with Simulator(_sim_config(size, h.rest_port, faults=faults)) as sim:
            started = time.monotonic()
            sending = _send(sim, bridge.client.webhook_url, drop=0.3)
            await asyncio.sleep(max(0.0, started + outage_start + outage - time.monotonic()))
            recovery.start(sim.recorded_ids(), size.settle_within)
            sent = await sending
            row = await _settle(h, f"4 REST storm+{outage:g}s outage", sim, sent, recovery, size)
            stats = sim.rest.stats()
    polled = len((await read_events(bootstrap, prefix)).by_source().get("POLLER", set()))
    by_status = ", ".join(f"{k}:{v}" for k, v in sorted(stats.by_status.items()))
    row.note = "; ".join(
        filter(None, [f"30% dropped, {polled} filled; REST answers {by_status}", row.note])
    )
    return row


# -- 5. two replicas behind a balancer, lossy webhooks, one replica killed ------------------


class Balancer:
    """Round-robin TCP proxy, as a Service in front of replicas: a connection goes to the
    next backend that accepts it; a dead backend's connections are cut."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Balancer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in self.backends:
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


async def replica_killed(
    bootstrap: str, prefix: str, logs: Path, size: Size, guarantee: str = "at_least_once"
) -> Row:
    async with Harness(bootstrap, prefix, logs, guarantee) as h:
        ports = [free_port(), free_port()]
        a = await h.start(ports[0])
        b = await h.start(ports[1])
        recovery = Recovery(bootstrap, prefix)
        async with Balancer(ports) as balancer, Simulator(_sim_config(size, h.rest_port)) as sim:
            url = f"http://127.0.0.1:{balancer.port}{_path(b.client.webhook_url)}"
            started = time.monotonic()
            sending = _send(sim, url, drop=0.2, duplicate=0.05, reorder_window=5)
            await _recorded(sim, 0.4, size.load_seconds * 3 + 10)
            assigned = len(b.process.events("state_partitions_assigned"))
            await a.process.kill()
            killed = time.monotonic()
            recovery.start(sim.recorded_ids(), size.settle_within)
            # Kafka's group coordinator notices the dead member after the session timeout and
            # gives its state partitions (hence its tickets) to the survivor.
            await b.process.wait_events("state_partitions_assigned", assigned + 1, 60)
            takeover = time.monotonic() - killed
            sent = await sending
            row = await _settle(h, "5 2 replicas, 1 SIGKILLed", sim, sent, recovery, size)
            assert b.process.process.returncode is None, b.process.transcript()
        census = await read_events(bootstrap, prefix)
    polled = len(census.by_source().get("POLLER", set()))
    row.details.update(takeover_ms=round(takeover * 1000))
    row.note = "; ".join(
        filter(
            None,
            [
                f"20% dropped, 5% duplicated, reordered (window 5); replica killed"
                f" {killed - started:.1f}s into the load; its tickets moved {takeover:.1f}s"
                f" later (group session timeout {SESSION_TIMEOUT_MS / 1000:g}s);"
                f" {polled} filled by the poller",
                row.note,
            ],
        )
    )
    return row


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


# -- the table ------------------------------------------------------------------------------

HEADER: Final = (
    "scenario",
    "guarantee",
    "events",
    "sent",
    "acked",
    "in Kafka",
    "missing",
    "dup",
    "recover s",
)


def table(rows: Iterable[Row]) -> str:
    cells = [HEADER]
    notes = []
    for row in rows:
        recover = "-" if row.recover_s is None else f"{row.recover_s:.1f}"
        counts = (row.events, row.sent, row.acked, row.in_kafka, row.missing, row.duplicates)
        # A row without events is one not run here (its note says why).
        shown = [str(n) if row.events else "-" for n in counts]
        cells.append((row.scenario, row.guarantee, *shown, recover))
        if row.note:
            notes.append(f"  {row.scenario}: {row.note}")
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = [
        "  ".join(
            v.ljust(w) if i <= 1 else v.rjust(w)
            for i, (v, w) in enumerate(zip(c, widths, strict=True))
        )
        for c in cells
    ]
    return "\n".join([*lines, "", "notes:", *notes])


SLOWLORIS_ROW: Final = Row(
    scenario="6 slow clients",
    events=0,
    sent=0,
    acked=0,
    in_kafka=0,
    missing=0,
    duplicates=0,
    recover_s=None,
    note="covered by tests/integration/test_slowloris.py (pass/fail only, no event counts):"
    " not re-run here",
)
