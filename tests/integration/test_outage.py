"""The bridge while Kafka is down: SIGTERM still exits cleanly, and the logs stay readable.

`apizee-bridge run` as a process with its poller on (the simulated Apizee of this loop), on a
single-node Apache Kafka of the test's own that the test kills.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from bridge.devtools.devbroker import KafkaCluster
from bridge.devtools.simulator import Simulator
from tests.integration.bridgeproc import (
    START_TIMEOUT,
    BridgeClient,
    BridgeProcess,
    bridge_process,
    process_env,
    webhook,
)

pytestmark = pytest.mark.integration

GRACE_SECONDS = 10.0
# A health check every 2 s, each up to 4 s against a dead broker, with slack.
NOT_READY_WITHIN = 20.0


@asynccontextmanager
async def _bridge_with_poller(
    kafka: KafkaCluster, prefix: str, tmp_path: Path, **variables: str
) -> AsyncIterator[tuple[BridgeProcess, BridgeClient]]:
    async with Simulator(tickets=2, seed=7) as sim:
        env = process_env(
            kafka.bootstrap_servers,
            prefix,
            BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR="1",
            BRIDGE_INGRESS_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
            BRIDGE_APIZEE_BASE_URL=sim.base_url,
            BRIDGE_APIZEE_TOKEN=sim.config.rest_token,
            BRIDGE_POLLER_GROUP_ID=f"{prefix}.bridge",
            BRIDGE_POLLER_GROUP_SESSION_TIMEOUT_MS="6000",
            BRIDGE_POLLER_GROUP_HEARTBEAT_INTERVAL_MS="500",
            **variables,
        )
        async with bridge_process(["run"], env, tmp_path / "bridge.log") as bridge:
            (where,) = await bridge.wait_events("listening", 1, START_TIMEOUT)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                client = BridgeClient(
                    where["webhook_url"], f"http://127.0.0.1:{where['admin_port']}", session
                )
                await client.wait_ready()
                yield bridge, client


async def test_sigterm_during_a_kafka_outage_exits_0_within_the_grace(
    own_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path
) -> None:
    # State flushed rarely: the ticket the webhook recorded is still unwritten at SIGTERM.
    async with _bridge_with_poller(
        own_kafka, topic_prefix, tmp_path, BRIDGE_POLLER_STATE_FLUSH_SECONDS="600"
    ) as (bridge, client):
        reply = await client.post(webhook("ticket.new", event_id=9001, ticket_id=77))
        assert reply.status == 200, reply
        await asyncio.to_thread(own_kafka.kill, 1)
        await client.wait_ready(NOT_READY_WITHIN, ready=False)
        bridge.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await bridge.stopped(GRACE_SECONDS + 30)
        took = time.monotonic() - signalled

    transcript = bridge.transcript()
    assert code == 0, transcript
    assert took < GRACE_SECONDS, f"exited {took:.1f}s after SIGTERM; {transcript}"
    assert not [line for line in bridge.lines if "Traceback" in line], transcript
    assert not [line for line in bridge.lines if "Unclosed" in line], transcript
    (unwritten,) = bridge.events("state_not_written")
    assert unwritten["tickets"] == 1, unwritten
    assert "nothing acknowledged is lost" in unwritten["consequence"], unwritten
    assert bridge.events("stopped"), transcript
