"""The bridge and its commands on tansu, the broker `make run` falls back to without Java: what
tansu lacks (DescribeConfigs, commit metadata, the idempotent producer) is said once and
plainly, never retried in a loop or misexplained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.devtools.devbroker import TansuBroker
from tests.integration.bridgeproc import START_TIMEOUT, bridge_process, process_env

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
