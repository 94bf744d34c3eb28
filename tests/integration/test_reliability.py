"""The reliability scenarios of tests/reliability/scenarios.py at CI size (`make reliability`
runs them at full size and prints the table).

Each asserts missing == 0: every acknowledged id and every id Apizee's REST API lists is in
Kafka once the poller settled. Duplicates are reported, not asserted (at-least-once).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.devtools.devbroker import KafkaCluster
from tests.reliability import scenarios
from tests.reliability.scenarios import CI, Row

pytestmark = pytest.mark.integration

RecordProperty = Callable[[str, Any], None]


def _check(row: Row, record_property: RecordProperty) -> None:
    print("\n" + scenarios.table([row]), flush=True)
    for name in ("events", "sent", "acked", "in_kafka", "missing", "duplicates", "recover_s"):
        record_property(name, getattr(row, name))
    assert row.missing == 0, f"{row.missing} missing, e.g. {row.missing_ids}; {row.note}"
    assert row.in_kafka > 0
    assert row.recover_s is not None, "Kafka never held what the fault left to recover"


async def test_broker_killed_and_restarted(
    own_kafka: KafkaCluster,
    topic_prefix: str,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    # A cluster of its own (its only node is killed): every acknowledged id counts, those
    # acknowledged before the kill included.
    row = await scenarios.broker_restart(own_kafka, topic_prefix, tmp_path, CI)
    _check(row, record_property)
    assert 0 < row.details["acked_before"] < row.events, "the kill came before or after the load"
    assert row.details["lost_acked"] == 0


async def test_sigterm_then_a_new_bridge(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.bridge_signal(kafka_bootstrap, topic_prefix, tmp_path, CI, signal.SIGTERM)
    _check(row, record_property)
    assert row.details["exit"] == 0, row.note
    assert row.details["acked_before"] > 0
    assert row.details["lost_acked"] == 0


async def test_sigkill_then_restart_and_the_poller_recovers(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.bridge_signal(kafka_bootstrap, topic_prefix, tmp_path, CI, signal.SIGKILL)
    _check(row, record_property)
    assert row.details["acked_before"] > 0
    assert row.details["lost_acked"] == 0
    assert row.details["polled"] > 0, "nothing left for the poller: nothing proven"


async def test_rest_storm_and_outage_while_webhooks_are_dropped(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.rest_storm(kafka_bootstrap, topic_prefix, tmp_path, CI)
    _check(row, record_property)
    assert row.acked < row.events, "no webhook dropped: nothing for the poller to fill"


async def test_two_replicas_lossy_webhooks_one_replica_killed(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.replica_killed(kafka_bootstrap, topic_prefix, tmp_path, CI)
    _check(row, record_property)
    assert row.acked < row.events
    # The survivor owns the dead replica's tickets once the coordinator evicts it: after the
    # session timeout, plus a rebalance and a restore, not minutes later.
    record_property("takeover_ms", row.details["takeover_ms"])
    assert row.details["takeover_ms"] < 3 * scenarios.SESSION_TIMEOUT_MS + 5000, row.note


# -- exactly_once: the same faults, read back read_committed, no duplicate either ----------------


async def test_exactly_once_sigkill_then_restart_no_duplicate(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.bridge_signal(
        kafka_bootstrap, topic_prefix, tmp_path, CI, signal.SIGKILL, "exactly_once"
    )
    _check(row, record_property)
    assert row.details["acked_before"] > 0
    assert row.details["lost_acked"] == 0
    assert row.duplicates == 0, f"exactly_once wrote {row.duplicates} duplicates; {row.note}"


async def test_exactly_once_two_replicas_lossy_webhooks_one_killed_no_duplicate(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    # Webhooks dropped (the poller fills them), duplicated and reordered, across two replicas,
    # one of them killed: every id still once.
    row = await scenarios.replica_killed(
        kafka_bootstrap, topic_prefix, tmp_path, CI, "exactly_once"
    )
    _check(row, record_property)
    assert row.acked < row.events
    assert row.duplicates == 0, f"exactly_once wrote {row.duplicates} duplicates; {row.note}"
