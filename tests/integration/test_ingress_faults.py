"""The ingress when things go wrong: the broker dies and comes back, SIGTERM under load, several
worker processes, a bad configuration. The bridge runs as `apizee-bridge run` where the
process itself is under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from bridge.devtools.devbroker import KafkaCluster, free_port
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import (
    START_TIMEOUT,
    TOKEN,
    TOKEN_HEADER,
    BridgeClient,
    BridgeProcess,
    Reply,
    assert_json_error,
    body_bytes,
    bridge_command,
    bridge_process,
    bridge_settings,
    process_env,
    running_bridge,
    wait_for,
    webhook,
)
from tests.integration.readback import Record, consume_async

pytestmark = pytest.mark.integration

KAFKA_DOWN_WITHIN = 15.0  # health check interval (2 s) + its metadata timeout, with slack
# A health check every 2 s (up to 4 s each against a dead broker) + topic creation; slack
# for a busy machine.
RECOVER_WITHIN = 40.0
GRACE_SECONDS = 10.0


def _event_ids(records: list[Record]) -> Counter[int]:
    return Counter(int(r.headers["event-id"]) for r in records)


# -- the broker is killed, then comes back ---------------------------------------------


async def _post_until_not_503(bridge: BridgeClient, body: dict[str, Any], within: float) -> Reply:
    deadline = time.monotonic() + within
    while True:
        reply = await bridge.post(body)
        if reply.status != 503 or time.monotonic() >= deadline:
            return reply
        assert reply.headers["Retry-After"].isdigit()
        await asyncio.sleep(0.2)


async def test_killed_broker_gives_503_then_the_bridge_recovers_by_itself(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    settings = bridge_settings(
        own_kafka.bootstrap_servers,
        topic_prefix,
        kafka={"publish_timeout_seconds": 3.0},
        ingress={"retry_after_seconds": 4, "request_timeout_seconds": 6.0},
    )
    topics = TopicNames(topic_prefix).events()
    async with running_bridge(settings) as bridge:
        before = await bridge.post(webhook("ticket.new", event_id=1, ticket_id=10))
        assert before.json() == {"status": "accepted", "eventId": 1}, before

        await asyncio.to_thread(own_kafka.kill, 1)  # off the loop: the bridge runs on it
        # At once (the producer may not have noticed yet: then the publish times out), and
        # once not ready (refused without trying the broker).
        during = [await bridge.post(webhook("ticket.assigned", event_id=2, ticket_id=10))]
        await bridge.wait_ready(KAFKA_DOWN_WITHIN, ready=False)
        during.append(await bridge.post(webhook("ticket.approved", event_id=3, ticket_id=10)))
        for reply in during:
            assert_json_error(reply, 503, "unavailable")
            assert reply.headers["Retry-After"] == "4"

        # Same port and disk, as after a crash: the bridge reconnects without a restart.
        await asyncio.to_thread(own_kafka.start_node, 1)
        await bridge.wait_ready(RECOVER_WITHIN)
        assert not bridge.task.done()
        # The sender retries what got a 503: published now, not taken for a duplicate. Its
        # first retry may meet a 503 still (the producer's metadata can lag the restart), so
        # this sender honours Retry-After as Apizee would (shortened: the test's clock).
        retried = await _post_until_not_503(
            bridge, webhook("ticket.approved", event_id=3, ticket_id=10), RECOVER_WITHIN
        )
        after = [
            await bridge.post(
                webhook("media.pictureTaken", {"mediaId": n}, event_id=n, ticket_id=n)
            )
            for n in range(100, 120)
        ]

    assert retried.json() == {"status": "accepted", "eventId": 3}, retried
    assert [r.status for r in after] == [200] * len(after), [str(r) for r in after]
    records = await consume_async(
        own_kafka.bootstrap_servers, topics, min_count=2 + len(after), timeout=30, drain=1.0
    )
    ids = _event_ids(records)
    assert ids[1] == 1  # acknowledged before the crash: on disk, and not written twice
    assert ids[3] >= 1  # at least once: a 503'd attempt is not taken back
    for n in range(100, 120):
        assert ids[n] == 1, n
    # Event 2's record may still land after the restart (a timed-out publish is not taken
    # back), but it was never acknowledged; nothing else is there.
    assert set(ids) <= {1, 2, 3, *range(100, 120)}, ids


# -- a publish that times out, and lands later -------------------------------------------


async def test_a_retry_of_a_timed_out_publish_waits_for_it_and_is_a_duplicate_once_it_lands(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    """The broker frozen (SIGSTOP): the publish times out (503 publish_timeout) with its record
    still in the producer. The sender's retry, while the broker is frozen, must not send a
    second copy; once the broker resumes, the first copy lands and a retry is a duplicate."""
    settings = bridge_settings(
        own_kafka.bootstrap_servers,
        topic_prefix,
        kafka={"publish_timeout_seconds": 1.5, "topic_partitions": 1},
        ingress={"retry_after_seconds": 1, "request_timeout_seconds": 6.0},
    )
    body = webhook("ticket.assigned", event_id=2, ticket_id=10)
    async with running_bridge(settings) as bridge:
        first = await bridge.post(webhook("ticket.new", event_id=1, ticket_id=10))
        assert first.json() == {"status": "accepted", "eventId": 1}, first

        await asyncio.to_thread(own_kafka.pause, 1)
        try:
            timed_out = await bridge.post(body)
            # Right away, as a sender retries, while the bridge still takes Kafka for healthy.
            retries = [await bridge.post(body), await bridge.post(body)]
        finally:
            await asyncio.to_thread(own_kafka.resume, 1)
        landed = await _post_until_not_503(bridge, body, RECOVER_WITHIN)
        # Readiness may lag the resume by a health check: a sender retries its 503s.
        later = await _post_until_not_503(
            bridge, webhook("ticket.approved", event_id=3, ticket_id=10), RECOVER_WITHIN
        )

    assert timed_out.status == 503, timed_out
    assert timed_out.json()["reason"] == "Kafka did not acknowledge: publish_timeout", timed_out
    for reply in retries:
        assert_json_error(reply, 503, "unavailable")
    assert landed.json() == {"status": "duplicate", "eventId": 2}, landed
    assert later.status == 200, later
    records = await consume_async(
        own_kafka.bootstrap_servers,
        TopicNames(topic_prefix).events(),
        min_count=3,
        timeout=30,
        drain=1.0,
    )
    ids = _event_ids(records)
    assert ids == Counter({1: 1, 2: 1, 3: 1}), ids


# -- SIGTERM under load ----------------------------------------------------------------


@dataclass
class _Load:
    """Senders posting distinct events without pause; what each post got."""

    client: BridgeClient
    next_id: int = 1
    answers: dict[int, int | str] = field(default_factory=dict)  # status or error name
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def sender(self, ticket: int) -> None:
        while not self.stop.is_set():
            event_id = self.next_id
            self.next_id += 1
            body = webhook("consent.accepted", event_id=event_id, ticket_id=ticket)
            try:
                reply = await self.client.post(body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers[event_id] = type(exc).__name__
                # Refused: the server is gone or going; this sender is done.
                return
            self.answers[event_id] = reply.status

    def accepted(self) -> set[int]:
        return {i for i, answer in self.answers.items() if answer == 200}


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    async def check() -> bool:
        return condition()

    await wait_for(check, within, what, interval=0.02)


async def _listening(bridge: BridgeProcess, count: int = 1) -> list[dict[str, Any]]:
    return await bridge.wait_events("listening", count, START_TIMEOUT)


async def test_sigterm_under_load_exits_0_in_grace_and_every_200_is_in_kafka(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = process_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_INGRESS_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
    )
    async with bridge_process(["run"], env, tmp_path / "bridge.log") as bridge:
        (where,) = await _listening(bridge)
        connector = aiohttp.TCPConnector(limit=32)
        timeout = aiohttp.ClientTimeout(total=GRACE_SECONDS + 10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            client = BridgeClient(
                where["webhook_url"], f"http://127.0.0.1:{where['admin_port']}", session
            )
            await client.wait_ready()
            load = _Load(client)
            senders = [asyncio.create_task(load.sender(t)) for t in range(1, 33)]
            try:
                await _until(lambda: len(load.accepted()) >= 300, 30, "300 posts accepted")
                bridge.signal(signal.SIGTERM)
                signalled = time.monotonic()
                code = await bridge.stopped(GRACE_SECONDS + 20)
                took = time.monotonic() - signalled
            finally:
                load.stop.set()
                await asyncio.gather(*senders, return_exceptions=True)

    assert code == 0, bridge.transcript()
    assert took < GRACE_SECONDS, f"exited {took:.1f}s after SIGTERM; {bridge.transcript()}"
    assert bridge.events("stopped"), bridge.transcript()
    outcomes = Counter(
        answer if isinstance(answer, str) else f"HTTP {answer}" for answer in load.answers.values()
    )
    assert set(outcomes) <= {
        "HTTP 200",
        "HTTP 503",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ClientOSError",
    }, outcomes

    accepted = load.accepted()
    records = await consume_async(
        kafka_bootstrap,
        TopicNames(topic_prefix).events(),
        min_count=len(accepted),
        timeout=30,
        drain=1.0,
    )
    in_kafka = _event_ids(records)
    missing = accepted - set(in_kafka)
    assert not missing, f"{len(missing)} of {len(accepted)} acknowledged events not in Kafka"
    assert set(in_kafka) <= set(load.answers), "records of events never sent"


# -- several workers -------------------------------------------------------------------


def _server_sockets(port: int) -> dict[int, int]:
    """Established TCP connections to local `port`: the peer's port -> the socket's inode."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    found[int(remote.rsplit(":", 1)[1], 16)] = inode
    return found


def _socket_owner(inode: int, pids: list[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == target:
                        return pid
    return None


async def _post_on_new_connection(
    public_port: int, path: str, body: dict[str, Any], workers: list[int]
) -> tuple[Reply, int | None]:
    """POST on a connection of its own; the reply and the worker holding that connection.

    Plain HTTP/1.1 on a stream, so that the connection's local port is known and the
    connection stays open (keep-alive) while its owner is looked up.
    """
    data = body_bytes(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", public_port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{public_port}\r\n"
            f"Content-Type: application/json\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)
        async with asyncio.timeout(30):
            status_line, *header_lines = (
                (await reader.readuntil(b"\r\n\r\n")).decode().strip().split("\r\n")
            )
            headers = CIMultiDict(line.split(": ", 1) for line in header_lines)
            reply = Reply(
                int(status_line.split()[1]),
                headers,
                await reader.readexactly(int(headers["Content-Length"])),
            )
        inode = _server_sockets(public_port).get(writer.get_extra_info("sockname")[1])
        owner = None if inode is None else _socket_owner(inode, workers)
    finally:
        writer.close()
        await writer.wait_closed()
    return reply, owner


@pytest.mark.skipif(sys.platform != "linux", reason="workers share ports with SO_REUSEPORT")
async def test_two_workers_both_serve_and_stop_on_sigterm(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    public_port, admin_port = free_port(), free_port()
    env = process_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_INGRESS_PORT=str(public_port),
        BRIDGE_ADMIN_PORT=str(admin_port),
        BRIDGE_INGRESS_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
    )
    async with bridge_process(["run", "--workers", "2"], env, tmp_path / "bridge.log") as bridge:
        listening = await _listening(bridge, 2)
        workers = sorted({int(line["pid"]) for line in listening})
        assert len(workers) == 2, listening
        assert bridge.process.pid not in workers
        url = f"http://127.0.0.1:{public_port}/webhooks/apizee"
        assert {line["webhook_url"] for line in listening} == {url}
        # Each worker has its own producer: both ready before any post.
        await bridge.wait_events("kafka_ready", 2, START_TIMEOUT)

        posts = [
            await _post_on_new_connection(
                public_port,
                "/webhooks/apizee",
                webhook("session.established", event_id=n, ticket_id=n),
                workers,
            )
            for n in range(1, 25)
        ]
        bridge.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await bridge.stopped(GRACE_SECONDS + 20)
        took = time.monotonic() - signalled

    assert code == 0, bridge.transcript()
    assert took < GRACE_SECONDS, f"exited {took:.1f}s after SIGTERM; {bridge.transcript()}"
    assert len(bridge.events("stopped")) == 2, bridge.transcript()  # one per worker
    replies = [reply for reply, _ in posts]
    assert [r.status for r in replies] == [200] * len(replies), [str(r) for r in replies]
    owners = Counter(owner for _, owner in posts)
    # The kernel spread 24 connections over both (all on one: a chance of 2 in 2**24).
    assert set(owners) == set(workers), owners
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    records = await consume_async(
        kafka_bootstrap, [f"{topic_prefix}.session"], min_count=len(posts), timeout=30, drain=1.0
    )
    assert _event_ids(records) == Counter(range(1, 25))


# -- invalid configuration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BRIDGE_KAFKA_LINGER_MS", "soon"),
        ("BRIDGE_INGRESS_PORT", "70000"),
        ("BRIDGE_LOG_LEVEL", "LOUD"),
        ("BRIDGE_KAFKA_TOPIC_PREFIX", "no spaces allowed"),
        ("BRIDGE_KAFKA_LINGERMS", "5"),  # a misspelt variable
    ],
)
async def test_invalid_config_exits_2_with_one_message_naming_the_variable(
    kafka_bootstrap: str, topic_prefix: str, variable: str, value: str
) -> None:
    env = process_env(kafka_bootstrap, topic_prefix, **{variable: value})
    process = await asyncio.create_subprocess_exec(
        *bridge_command("run"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 2, err.decode()
    assert out == b""
    lines = err.decode().splitlines()
    assert lines[0] == "apizee-bridge: invalid configuration:", lines
    assert len(lines) == 2, lines
    assert lines[1].startswith(f"{variable}: "), lines
    assert len(lines[1]) > len(variable) + 2, lines
