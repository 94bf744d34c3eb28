"""The bridge while Kafka is down: SIGTERM still exits cleanly, and the logs stay readable.

`apizee-bridge run` as a process with its poller on (the simulated Apizee of this loop), on a
single-node Apache Kafka of the test's own that the test kills.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
    wait_for,
    webhook,
)

pytestmark = pytest.mark.integration

GRACE_SECONDS = 10.0
# A health check every 2 s, each up to 4 s against a dead broker, with slack.
NOT_READY_WITHIN = 20.0


@asynccontextmanager
async def _bridge_with_poller(
    kafka: KafkaCluster, prefix: str, tmp_path: Path, sim: Simulator, **variables: str
) -> AsyncIterator[tuple[BridgeProcess, BridgeClient]]:
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
    async with (
        Simulator(tickets=2, seed=7) as sim,
        _bridge_with_poller(
            own_kafka, topic_prefix, tmp_path, sim, BRIDGE_POLLER_STATE_FLUSH_SECONDS="600"
        ) as (bridge, client),
    ):
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


OUTAGE_SECONDS = 20.0
# The rule: one line per broker per 10 s for the Kafka client's repeated errors (the cluster
# counting as one more "broker" for those that name none).
CLIENT_LINES_PER_BUCKET = int(OUTAGE_SECONDS // 10) + 1


def _client_line(record: dict[str, Any]) -> bool:
    """A line about the Kafka client's errors (aiokafka's own, or the bridge's reading of them)."""
    return str(record.get("logger", "")).startswith("aiokafka") or str(
        record.get("event", "")
    ).startswith("kafka_client")


async def test_a_kafka_outage_logs_a_few_readable_lines_and_readyz_names_the_broker(
    own_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path
) -> None:
    """20 s without the only broker, the poller busy with tickets whose gaps it cannot publish:
    a handful of lines (before: about 300, most of them aiokafka's at error level), and
    /readyz says which address is unreachable and since when."""
    async with (
        Simulator(tickets=6, seed=8) as sim,
        _bridge_with_poller(
            own_kafka,
            topic_prefix,
            tmp_path,
            sim,
            BRIDGE_POLLER_INTERVAL_SECONDS="1",
            BRIDGE_POLLER_SETTLE_SECONDS="0",
            BRIDGE_POLLER_STATE_FLUSH_SECONDS="0.5",
        ) as (bridge, client),
    ):
        for ticket, ids in sim.ids_by_ticket().items():
            reply = await client.post(webhook("ticket.new", event_id=ids[0], ticket_id=ticket))
            assert reply.status == 200, reply
        before = len(bridge.lines)
        await asyncio.to_thread(own_kafka.kill, 1)
        killed = time.monotonic()
        for ticket, ids in sim.ids_by_ticket().items():  # more gaps, and 503s
            reply = await client.post(webhook("ticket.new", event_id=ids[-1], ticket_id=ticket))
            assert reply.status == 503, reply

        async def outage_over() -> bool:
            return time.monotonic() - killed >= OUTAGE_SECONDS

        await wait_for(outage_over, OUTAGE_SECONDS + 5, "the outage lasted its time", interval=0.5)
        during = bridge.lines[before:]
        ready = await client.readyz()

    # A normal start: the group coordinator Kafka elects meanwhile is not an error.
    started = [json.loads(line) for line in bridge.lines[:before] if line.startswith("{")]
    assert len(started) == before, "\n".join(bridge.lines[:before])
    assert not [r for r in started if r["level"] in ("error", "critical")], started
    records = [json.loads(line) for line in during if line.startswith("{")]
    shown = "\n".join(during[-80:])
    assert len(records) == len(during), shown  # every line JSON, no traceback
    client_lines = [r for r in records if _client_line(r)]
    assert not [r for r in client_lines if "logger" in r], shown  # none of aiokafka's own
    assert not [r for r in records if r.get("level") in ("error", "critical")], shown
    address = own_kafka.bootstrap_servers
    unreachable = [r for r in client_lines if r["event"] == "kafka_client_broker_unreachable"]
    # The rule, for the one broker: its connection errors at most once per 10 s.
    assert 1 <= len(unreachable) <= CLIENT_LINES_PER_BUCKET, shown
    assert all(r["broker"] == address for r in unreachable), shown
    assert sum(r["repeated"] for r in unreachable) > 100, shown  # held back, and counted
    # Its other kinds (the poller's group coordinator lost, ...) by the same rule.
    assert len(client_lines) <= 3 * CLIENT_LINES_PER_BUCKET, shown
    # With the bridge's own: not ready (which broker, since when), the state writer, the
    # poller and the refused webhooks (each at most once per 10 s).
    assert len(records) <= 25, f"{len(records)} lines:\n{shown}"

    assert ready is not None
    assert ready.status == 503, ready
    reason = ready.json()["reason"]
    assert f"cannot reach {address}" in reason, reason
    seconds = int(re.search(r"for (\d+)s", reason).group(1))  # type: ignore[union-attr]
    assert OUTAGE_SECONDS - 5 <= seconds <= OUTAGE_SECONDS + 10, reason
