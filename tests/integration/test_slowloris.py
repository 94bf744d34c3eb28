"""Slow and idle clients (slowloris) against the CLI process with a short request timeout.

Hundreds of raw sockets hold connections open, either silent, or trickling their headers,
or trickling their body a byte a second, while an ordinary sender keeps posting: the
ordinary posts keep succeeding quickly, body tricklers are answered 408 within the request
timeout, and the process's open file descriptors fall back once the attackers leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.integration.bridgeproc import (
    START_TIMEOUT,
    TOKEN,
    TOKEN_HEADER,
    BridgeClient,
    BridgeProcess,
    bridge_process,
    process_env,
    wait_for,
    webhook,
)

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT: Final = 2.0
PUBLISH_TIMEOUT: Final = 1.5  # must stay below the request timeout
SLACK: Final = 1.5  # scheduling on a busy 2-core machine
WINDOW: Final = REQUEST_TIMEOUT + SLACK + 2.0  # how long each attacker waits for an answer
BODY_TRICKLERS: Final = 100
HEADER_TRICKLERS: Final = 50
IDLE: Final = 50


@dataclass
class Attack:
    kind: str
    answered_after: float | None = None  # seconds from the last header byte (or connect)
    first_line: bytes = b""  # the status line, b"" when the server closed without one
    error: str | None = None


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _hold(
    host: str, port: int, kind: str, path: str, stop: asyncio.Event, attacks: list[Attack]
) -> None:
    """One slow client of `kind`: body | headers | idle; keeps its socket until `stop`."""
    attack = Attack(kind)
    attacks.append(attack)
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        attack.error = f"connect: {exc!r}"
        return
    try:
        if kind == "body":
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"{TOKEN_HEADER}: {TOKEN}\r\nContent-Length: 500\r\n\r\n{{"
            )
            writer.write(head.encode())
        elif kind == "headers":
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        await writer.drain()
        started = time.monotonic()
        answer = asyncio.ensure_future(reader.read(200))
        while not stop.is_set() and not answer.done():
            await asyncio.wait({answer}, timeout=1.0)
            if kind != "idle" and not answer.done():
                with contextlib.suppress(ConnectionError):
                    writer.write(b" " if kind == "body" else b"a")
                    await writer.drain()
        if answer.done():
            attack.answered_after = time.monotonic() - started
            try:
                attack.first_line = answer.result().split(b"\r\n", 1)[0]
            except ConnectionError as exc:
                attack.error = repr(exc)
        else:
            answer.cancel()
            await stop.wait()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class Ordinary:
    latencies: list[float]
    failures: list[str]


async def _ordinary_sender(client: BridgeClient, stop: asyncio.Event, out: Ordinary) -> None:
    event_id = 1
    while not stop.is_set():
        body = webhook("consent.accepted", event_id=event_id, ticket_id=event_id % 7)
        started = time.monotonic()
        try:
            reply = await client.post(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.failures.append(f"#{event_id}: {exc!r}")
        else:
            out.latencies.append(time.monotonic() - started)
            if reply.status != 200:
                out.failures.append(f"#{event_id}: {reply}")
        event_id += 1
        await asyncio.sleep(0.05)


async def _started(
    bridge: BridgeProcess, session: aiohttp.ClientSession
) -> tuple[BridgeClient, str, int, str]:
    (where,) = await bridge.wait_events("listening", 1, START_TIMEOUT)
    url = where["webhook_url"]
    client = BridgeClient(url, f"http://127.0.0.1:{where['admin_port']}", session)
    await client.wait_ready()
    split = urlsplit(url)
    assert split.hostname is not None
    assert split.port is not None
    return client, split.hostname, split.port, split.path


def _env(kafka_bootstrap: str, topic_prefix: str) -> dict[str, str]:
    return process_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_INGRESS_REQUEST_TIMEOUT_SECONDS=str(REQUEST_TIMEOUT),
        BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS=str(PUBLISH_TIMEOUT),
    )


async def _until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    await wait_for(condition, within, what, interval=0.2)


async def test_slow_and_idle_clients_do_not_stop_others_and_trickled_bodies_get_408(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, topic_prefix)
    async with (
        bridge_process(["run"], env, tmp_path / "bridge.log") as bridge,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        pid = bridge.process.pid
        client, host, port, path = await _started(bridge, session)
        baseline = _fds(pid)
        stop_attack, stop_sender = asyncio.Event(), asyncio.Event()
        attacks: list[Attack] = []
        ordinary = Ordinary([], [])
        sender = asyncio.create_task(_ordinary_sender(client, stop_sender, ordinary))
        kinds = ["body"] * BODY_TRICKLERS + ["headers"] * HEADER_TRICKLERS + ["idle"] * IDLE
        holders = [
            asyncio.create_task(_hold(host, port, kind, path, stop_attack, attacks))
            for kind in kinds
        ]
        try:
            await asyncio.sleep(1.0)
            during = _fds(pid)
            await asyncio.sleep(WINDOW)
            during = max(during, _fds(pid))
            stop_attack.set()
            await asyncio.gather(*holders)
            # The attackers are gone: the process lets go of their sockets.
            settled: list[int] = [0]

            async def back_down() -> bool:
                settled[0] = _fds(pid)
                return settled[0] <= baseline + 10

            await _until(back_down, 10, f"fds back near the baseline {baseline}")
        finally:
            stop_sender.set()
            await sender
            stop_attack.set()
            await asyncio.gather(*holders, return_exceptions=True)
        after = await client.post(webhook("consent.accepted", event_id=999_999))
        health = await client.admin("/healthz")
        alive = bridge.process.returncode is None

    assert len(attacks) == len(kinds)
    assert not [a for a in attacks if a.error and a.error.startswith("connect")], attacks[:5]
    # The ordinary sender was served all along, promptly.
    assert not ordinary.failures, ordinary.failures[:10]
    assert len(ordinary.latencies) >= 20, len(ordinary.latencies)
    assert max(ordinary.latencies) < REQUEST_TIMEOUT, sorted(ordinary.latencies)[-5:]
    assert statistics.median(ordinary.latencies) < 0.25, statistics.median(ordinary.latencies)
    # Every body trickler got its 408 within the request timeout (plus scheduling slack).
    bodies = [a for a in attacks if a.kind == "body"]
    late = [
        a
        for a in bodies
        if a.answered_after is None or not a.first_line.startswith(b"HTTP/1.1 408")
    ]
    assert not late, f"{len(late)} body tricklers without a 408: {late[:5]}"
    slowest = max(a.answered_after or 0.0 for a in bodies)
    assert REQUEST_TIMEOUT - 0.2 <= slowest <= REQUEST_TIMEOUT + SLACK, slowest
    # One socket per attacker at most, and nothing left behind.
    assert during <= baseline + len(kinds) + 10, (baseline, during)
    assert after.status == 200, after
    assert health.status == 200, health
    assert alive, bridge.transcript()
    print(
        f"slowloris: {len(kinds)} slow clients; ordinary posts {len(ordinary.latencies)},"
        f" median {statistics.median(ordinary.latencies) * 1000:.0f} ms,"
        f" max {max(ordinary.latencies) * 1000:.0f} ms; 408 after <= {slowest:.2f}s;"
        f" fds {baseline} -> {during} -> {settled[0]}"
    )


async def test_trickled_headers_and_silent_connections_are_closed_within_the_timeout(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, topic_prefix)
    async with (
        bridge_process(["run"], env, tmp_path / "bridge.log") as bridge,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        _, host, port, path = await _started(bridge, session)
        stop = asyncio.Event()
        attacks: list[Attack] = []
        kinds = ["headers"] * HEADER_TRICKLERS + ["idle"] * IDLE
        holders = [
            asyncio.create_task(_hold(host, port, kind, path, stop, attacks)) for kind in kinds
        ]
        try:
            await asyncio.sleep(WINDOW)
        finally:
            stop.set()
            await asyncio.gather(*holders)

    held: dict[str, Any] = {
        kind: sum(1 for a in attacks if a.kind == kind and a.answered_after is None)
        for kind in ("headers", "idle")
    }
    assert held == {"headers": 0, "idle": 0}, f"still open after {WINDOW:g}s: {held}"
    answered = [a for a in attacks if a.first_line]
    assert all(a.first_line.startswith(b"HTTP/1.1 408") for a in answered), answered[:5]
