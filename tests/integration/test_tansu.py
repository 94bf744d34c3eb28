"""The bridge and its commands on tansu, the broker `make run` falls back to without Java: what
tansu lacks (DescribeConfigs, commit metadata, the idempotent producer) is said once and
plainly, never retried in a loop or misexplained.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.devtools.devbroker import TansuBroker, create_topics
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import (
    START_TIMEOUT,
    BridgeClient,
    bridge_process,
    process_env,
    wait_for,
)
from tests.integration.commands.clikit import command_env, run_cli
from tests.integration.commands.test_replay import park, summary_of, webhook_letter
from tests.integration.readback import consume_async

pytestmark = pytest.mark.integration


async def test_topic_limits_unknown_is_retried_at_its_interval_not_every_health_check(
    tansu_broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    env = process_env(
        tansu_broker.bootstrap_servers,
        topic_prefix,
        BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="false",
        BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR="1",
        BRIDGE_KAFKA_METADATA_MAX_AGE_MS="30000",
    )
    async with bridge_process(["run"], env, tmp_path / "bridge.log") as bridge:
        await bridge.wait_events("listening", 1, START_TIMEOUT)
        (first,) = await bridge.wait_events("topic_limits_unknown", 1, START_TIMEOUT)
        # Five health checks (one every 2 s) pass without a second line: the limits are due
        # again only after 30 s (before, each health check asked and logged again).
        with pytest.raises(AssertionError, match=r"^not 2 'topic_limits_unknown' lines"):
            await bridge.wait_events("topic_limits_unknown", 2, 10)
        lines = bridge.events("topic_limits_unknown")
    assert len(lines) == 1, bridge.transcript()
    assert first["level"] == "warning", first
    assert first["retry_in_seconds"] == 30, first
    assert "producer's limit" in first["consequence"], first


async def test_replay_on_tansu_says_what_the_broker_lacks_and_reruns_with_restart(
    tansu_broker: TansuBroker, topic_prefix: str
) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    topics = TopicNames(topic_prefix)
    await create_topics(bootstrap, [topics.dlq, topics.category("ticket")], partitions=1)
    # One batch each: tansu 0.6 reports the high watermark of a multi-record batch as its base
    # offset + 1, so a reader that stops at the end offsets (replay) would see only the first.
    for letter in (webhook_letter(7001, 361), webhook_letter(7002, 362)):
        await asyncio.to_thread(park, bootstrap, topic_prefix, [letter])
    env = command_env(bootstrap, topic_prefix, BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR="1")

    # The configured idempotent producer cannot work on tansu: said at once, not after 30 s.
    started = time.monotonic()
    ran = await run_cli("replay", "--from", "dlq", env=env)
    took = time.monotonic() - started
    assert ran.code == 1, ran
    stopped = ran.line("replay: stopped: ")
    assert "idempotent producer" in stopped, ran
    assert "BRIDGE_KAFKA_ENABLE_IDEMPOTENCE=false" in stopped, ran
    assert took < 15, f"{took:.1f}s; {ran}"

    plain = {**env, "BRIDGE_KAFKA_ENABLE_IDEMPOTENCE": "false"}
    ran = await run_cli("replay", "--from", "dlq", env=plain)
    assert ran.code == 0, ran
    assert summary_of(ran)["published"] == 2, ran

    # tansu keeps the committed offsets but not their metadata (the selection they belong to):
    # the rerun says so, and what to do, instead of blaming "another selection".
    ran = await run_cli("replay", "--from", "dlq", env=plain)
    assert ran.code == 2, ran
    assert "another selection" not in ran.stderr, ran
    assert "does not keep the metadata of committed offsets" in ran.stderr, ran
    assert "--restart" in ran.stderr, ran

    ran = await run_cli("replay", "--from", "dlq", "--restart", env=plain)
    assert ran.code == 0, ran
    assert summary_of(ran)["skipped, already present"] == 2, ran
    assert summary_of(ran)["published"] == 0, ran
    records = await consume_async(bootstrap, [topics.category("ticket")], min_count=2, drain=1.0)
    assert sorted(int(r.headers["event-id"]) for r in records) == [7001, 7002]


async def test_the_service_on_tansu_with_idempotence_says_why_it_is_not_ready(
    tansu_broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    env = process_env(
        tansu_broker.bootstrap_servers, topic_prefix, BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR="1"
    )
    async with bridge_process(["run"], env, tmp_path / "bridge.log") as bridge:
        (where,) = await bridge.wait_events("listening", 1, START_TIMEOUT)
        async with aiohttp.ClientSession() as session:
            client = BridgeClient(
                where["webhook_url"], f"http://127.0.0.1:{where['admin_port']}", session
            )
            last: list[Any] = [None]

            async def explained() -> bool:
                last[0] = await client.readyz()
                return last[0] is not None and "idempotent producer" in last[0].body.decode()

            await wait_for(explained, 20, "/readyz explains (last: {})", last=last)
        (failed,) = await bridge.wait_events("kafka_connect_failed", 1, 5)
    reason = last[0].json()["reason"]
    assert last[0].status == 503, last[0]
    assert "InitProducerId" in reason, reason
    assert "BRIDGE_KAFKA_ENABLE_IDEMPOTENCE=false" in reason, reason
    assert failed["reason"] in reason, failed
