"""BRIDGE_DELIVERY_GUARANTEE=exactly_once on Apache Kafka: every event id once for a
read_committed reader (confluent-kafka), across resends, replicas, a replica SIGKILLed and a
zombie replica; a broker without transactions (tansu) refused at start.

The fault scenarios live in tests/reliability/exactly_once.py (`make reliability` runs them
at full size).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.devtools.devbroker import TansuBroker
from tests.integration.bridgeproc import bridge_process, bridge_settings, running_bridge, webhook
from tests.integration.pollerkit import read_events
from tests.reliability import exactly_once as scenarios
from tests.reliability.scenarios import Row, table

pytestmark = pytest.mark.integration

RecordProperty = Callable[[str, Any], None]


def _check(row: Row, record_property: RecordProperty) -> None:
    print("\n" + table([row]), flush=True)
    for name in ("events", "sent", "acked", "in_kafka", "missing", "duplicates"):
        record_property(name, getattr(row, name))
    assert row.acked == row.events, f"the sender got not every webhook through; {row.note}"
    assert row.missing == 0, f"{row.missing} acknowledged, not in Kafka: {row.missing_ids}"
    assert row.duplicates == 0, f"{row.duplicates} duplicates; {row.note}"
    assert row.details["unexpected"] == 0, row.note


async def test_every_id_once_and_resends_answered(kafka_bootstrap: str, topic_prefix: str) -> None:
    settings = bridge_settings(
        kafka_bootstrap, topic_prefix, delivery={"guarantee": "exactly_once"}
    )
    ids = range(1, 301)
    async with running_bridge(settings) as bridge:
        first = await asyncio.gather(
            *(bridge.post(webhook("ticket.assigned", event_id=n, ticket_id=n % 13)) for n in ids)
        )
        resent = await asyncio.gather(
            *(bridge.post(webhook("ticket.assigned", event_id=n, ticket_id=n % 13)) for n in ids)
        )
        unknown = await bridge.post(webhook("ticket.somethingNew", event_id=999, ticket_id=5))
    assert {r.json()["status"] for r in first} == {"accepted"}, {str(r) for r in first}
    assert {r.status for r in resent} == {200}, {str(r) for r in resent}
    assert unknown.status == 202, unknown
    census = await read_events(kafka_bootstrap, topic_prefix)
    assert not census.missing([*ids, 999])
    assert census.duplicates() == {}


async def test_the_same_webhook_to_two_replicas_at_once_is_written_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.same_webhook_two_replicas(
        kafka_bootstrap, topic_prefix, tmp_path, scenarios.CI
    )
    _check(row, record_property)


async def test_a_replica_sigkilled_mid_load_leaves_no_duplicate(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.replica_killed(kafka_bootstrap, topic_prefix, tmp_path, scenarios.CI)
    _check(row, record_property)


async def test_a_zombie_replica_is_fenced(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.zombie(kafka_bootstrap, topic_prefix, tmp_path, scenarios.CI)
    _check(row, record_property)
    # On waking, the group took its partitions away (and any transaction it was in was
    # fenced: when it was frozen between two transactions, there was none).
    assert row.details["revoked"] > 0, f"the zombie never found out: {row.note}"


async def test_a_broker_without_transactions_is_refused_at_start(
    tansu_broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    env = scenarios.env(tansu_broker.bootstrap_servers, topic_prefix)
    env["BRIDGE_KAFKA_ENABLE_IDEMPOTENCE"] = "false"  # tansu has no idempotent producer
    async with bridge_process(["run"], env, tmp_path / "bridge.log") as bridge:
        code = await bridge.stopped(90)
    assert code == 2, bridge.transcript()  # as for an invalid configuration
    (refused,) = bridge.events("exactly_once_unavailable")
    assert "needs a Kafka cluster with transactions" in refused["reason"], refused
    assert "Traceback" not in "\n".join(bridge.lines), bridge.transcript()


async def test_replicas_scaled_1_3_1_under_load_write_every_id_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.scaled(kafka_bootstrap, topic_prefix, tmp_path, scenarios.CI)
    _check(row, record_property)
    assert row.details["exits"] == 0, f"a replica did not stop cleanly: {row.note}"
