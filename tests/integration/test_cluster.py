"""What only a real Apache Kafka cluster can show: failover of a 3-node cluster under load,
ISR below min.insync.replicas, a whole cluster restarted from its disks, and the idempotent
producer's retries deduplicated by the broker.

Each reads back with confluent-kafka and counts every acknowledged event id. The scenarios
live in tests/reliability/cluster.py (`make reliability` runs them at full size).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.devtools.devbroker import KafkaCluster
from bridge.devtools.simulator import Simulator
from bridge.publisher import TopicNames
from tests.integration import kafkakit
from tests.integration.bridgeproc import bridge_settings, running_bridge, webhook
from tests.integration.conftest import forget, remember
from tests.integration.pollerkit import read_events
from tests.integration.readback import consume_async
from tests.reliability import cluster as scenarios
from tests.reliability import scenarios as single
from tests.reliability.scenarios import Row

pytestmark = pytest.mark.integration

RecordProperty = Callable[[str, Any], None]


RECOMMENDED_FOR_EXACTLY_ONCE = scenarios.RECOMMENDED_FOR_EXACTLY_ONCE


@pytest.fixture(scope="module")
def kafka3(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaCluster]:
    """Three nodes, min.insync.replicas=2; every test leaves all three running. Brokers'
    request.timeout.ms at 5000, as docs/exactly-once.md recommends for exactly_once: a
    transaction coordinator's markers to a frozen partition leader wait that long (30 s by
    default) and hold the transactional id's next transaction; nothing else here uses it."""
    workdir = tmp_path_factory.mktemp("kafka3")
    with KafkaCluster(
        nodes=3, workdir=workdir, heap="384m", broker_config=RECOMMENDED_FOR_EXACTLY_ONCE
    ) as cluster:
        remember(request.config, cluster)
        yield cluster
        forget(request.config, cluster)


def _record(row: Row, record_property: RecordProperty) -> None:
    print("\n" + single.table([row]), flush=True)
    for name in ("events", "acked", "in_kafka", "missing", "duplicates"):
        record_property(name, getattr(row, name))
    for name, value in row.details.items():
        record_property(name, value)


async def test_bridge_topics_are_replicated_three_times_with_min_isr_two(
    kafka3: KafkaCluster, topic_prefix: str, tmp_path: Path
) -> None:
    async with scenarios.bridge_on(kafka3, topic_prefix, tmp_path):
        topic = TopicNames(topic_prefix).category("ticket")
        replicas = await asyncio.to_thread(kafkakit.isrs, kafka3.bootstrap_servers, [topic])
        config = await asyncio.to_thread(kafkakit.topic_config, kafka3.bootstrap_servers, topic)
    # The default replication factor (-1) means 3 on a cluster of three.
    assert replicas, "the bridge created no topic"
    assert all(len(isr) == 3 for isr in replicas.values()), replicas
    assert config["min.insync.replicas"] == "2"


async def test_partition_leader_killed_under_load_loses_no_acknowledged_event(
    kafka3: KafkaCluster, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.leader_kill(kafka3, topic_prefix, tmp_path, scenarios.CI)
    _record(row, record_property)
    assert row.acked == scenarios.CI.webhooks, row.note  # the sender got every one through
    assert row.details["acked_before_kill"] < row.acked, "the kill came after the load"
    assert row.missing == 0, f"acknowledged but not in Kafka: {row.missing_ids}"


async def test_rolling_restart_under_load_loses_no_acknowledged_event(
    kafka3: KafkaCluster, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    row = await scenarios.rolling_restart(kafka3, topic_prefix, tmp_path, scenarios.CI)
    _record(row, record_property)
    assert row.details["restarted"] == 3
    assert row.acked == scenarios.CI.webhooks, row.note
    assert row.missing == 0, f"acknowledged but not in Kafka: {row.missing_ids}"


async def test_two_nodes_down_gives_503_never_200_and_the_bridge_recovers_alone(
    kafka3: KafkaCluster, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    outage = await scenarios.isr_outage(kafka3, topic_prefix, tmp_path, scenarios.CI)
    _record(outage.row, record_property)
    answers = outage.answers_during
    assert answers[503] > 0, answers
    assert set(answers) == {503}, f"only 503s (with Retry-After) while below min ISR: {answers}"
    assert outage.readyz_during["status"] == "not_ready", outage.readyz_during
    assert "min.insync.replicas" in outage.readyz_during["reason"], outage.readyz_during
    assert outage.row.missing == 0, outage.row.missing_ids


async def test_whole_cluster_restarted_from_disk_keeps_events_and_poller_state(
    kafka3: KafkaCluster, topic_prefix: str, tmp_path: Path
) -> None:
    size = single.Size(tickets=6, load_seconds=3.0)
    topics = TopicNames(topic_prefix)
    async with single.Harness(kafka3.bootstrap_servers, topic_prefix, tmp_path) as h:
        first = await h.start(single.free_port())
        async with Simulator(single._sim_config(size, h.rest_port)) as sim:
            await single._send(sim, first.client.webhook_url)
            acked = sim.acked_ids()
            # SIGTERM: the bridge writes its last ticket state before it exits.
            first.process.signal(signal.SIGTERM)
            assert await first.process.stopped(30) == 0
            state_before = await _state_records(kafka3.bootstrap_servers, topics.state)

            started = time.monotonic()
            await asyncio.to_thread(kafka3.restart_all)
            restart_seconds = time.monotonic() - started
            # Leaders elected and replicas back in sync, as after any restart.
            await asyncio.to_thread(
                kafkakit.wait_fully_replicated,
                kafka3.bootstrap_servers,
                [*topics.events(), topics.state],
                3,
            )

            census = await read_events(kafka3.bootstrap_servers, topic_prefix, within=60)
            state_after = await _state_records(kafka3.bootstrap_servers, topics.state)
            config = await asyncio.to_thread(
                kafkakit.topic_config, kafka3.bootstrap_servers, topics.state
            )
            second = await h.start(single.free_port())
            (restored,) = await second.process.wait_events("state_restored", 1, 60)

    print(f"\ncluster restarted in {restart_seconds:.1f}s; {len(acked)} acked ids")
    assert acked, "nothing was acknowledged: nothing proven"
    assert not census.missing(acked), sorted(census.missing(acked))[:20]
    assert config["cleanup.policy"] == "compact"
    live = {key for key, value in state_before.items() if value is not None}
    assert live, "the bridge wrote no ticket state"
    assert state_after == state_before
    assert restored["tickets"] == len(live), restored


async def _state_records(bootstrap: str, topic: str) -> dict[bytes | None, bytes | None]:
    """The latest value per key of the state topic (None for a tombstone)."""
    records = await consume_async(bootstrap, [topic], timeout=30)
    return {r.key: (r.value or None) for r in records}


async def test_idempotent_producer_retries_leave_no_duplicate(
    own_kafka: KafkaCluster, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader frozen (SIGSTOP) past the producer's request timeout: the producer sends
    its batches again, and when the leader wakes up the first copies are still in its socket
    buffer. The idempotent producer's sequence numbers make the broker keep one of each.

    No non-idempotent control: aiokafka expires a non-idempotent batch after
    request_timeout_ms instead of retrying it, so such a run fails its publishes (503)
    rather than duplicating them. The retries are shown by aiokafka's own log instead.
    """
    settings = bridge_settings(
        own_kafka.bootstrap_servers,
        topic_prefix,
        kafka={
            "request_timeout_ms": 1500,
            "retry_backoff_ms": 50,
            "publish_timeout_seconds": 30.0,
            "topic_partitions": 1,
        },
        ingress={"request_timeout_seconds": 40.0},
    )
    assert settings.kafka.enable_idempotence, "the default producer is idempotent"
    caplog.set_level(logging.WARNING, logger="aiokafka.producer.sender")
    async with running_bridge(settings) as bridge:
        assert (await bridge.post(webhook("ticket.new", event_id=1))).status == 200
        await asyncio.to_thread(own_kafka.pause, 1)
        posts = [
            asyncio.create_task(bridge.post(webhook("ticket.assigned", event_id=n)))
            for n in range(2, 42)
        ]
        await asyncio.sleep(5.0)  # more than three request timeouts
        await asyncio.to_thread(own_kafka.resume, 1)
        replies = await asyncio.gather(*posts)
    retries = [r for r in caplog.records if r.getMessage().startswith("Got error produce")]
    census = await read_events(own_kafka.bootstrap_servers, topic_prefix)
    print(f"\n{len(retries)} produce requests retried; duplicates {census.duplicates()}")
    assert [r.status for r in replies] == [200] * len(replies), [str(r) for r in replies]
    assert retries, "no produce request was retried: the scenario proved nothing"
    assert not census.missing(range(1, 42))
    assert census.duplicates() == {}, "the broker kept retried batches twice"


async def test_a_frozen_leader_costs_its_partitions_seconds_past_failover_and_the_others_nothing(
    kafka3: KafkaCluster, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    """One node of three SIGSTOPped (hung: connections open, no answers) with the bridge's
    default timeouts. Kafka fences it and moves its leaderships; the partitions it led must
    take 200s again within 5 s of that failover, and the other partitions, whose leaders
    never stopped, must never be answered 503."""
    frozen = await scenarios.leader_frozen(kafka3, topic_prefix, tmp_path, freeze_seconds=15.0)
    _record(frozen.row, record_property)
    record_property("failover_s", frozen.failover)
    record_property("gaps_s", frozen.gaps)
    assert frozen.led, "the frozen node led no partition: nothing proven"
    assert set(frozen.failover) == frozen.led, f"Kafka did not move them all; {frozen.row.note}"
    for partition in frozen.led:
        assert frozen.gaps[partition] <= frozen.failover[partition] + 5.0, frozen.row.note
    for partition, refused in frozen.refusals.items():
        if partition not in frozen.led:
            assert not refused, f"partition {partition} was led by a live node; {frozen.row.note}"
    assert frozen.row.missing == 0, frozen.row.missing_ids


async def test_a_frozen_transaction_coordinator_costs_exactly_once_seconds_past_failover(
    kafka3: KafkaCluster, topic_prefix: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    """exactly_once, the transaction coordinator of intake partition 0's transactional id
    SIGSTOPped for 25 s (often the intake group's coordinator and a partition leader too).

    Every partition takes 200s again long before the node resumes: within Kafka's failover
    (the frozen node out of the ISRs, its leaderships moved) plus two of the brokers'
    request.timeout.ms, the bound docs/exactly-once.md gives (a transaction coordinator's
    markers to the frozen node wait that long, twice when the first try ends before the
    failover, and hold the id's next transaction); and the read_committed read-back has
    every acknowledged id exactly once.
    """
    broker_request_timeout = int(RECOMMENDED_FOR_EXACTLY_ONCE["request.timeout.ms"]) / 1000
    frozen = await scenarios.leader_frozen(
        kafka3,
        topic_prefix,
        tmp_path,
        freeze_seconds=25.0,
        coordinator=True,
        BRIDGE_DELIVERY_GUARANTEE="exactly_once",
    )
    _record(frozen.row, record_property)
    record_property("failover_s", frozen.failover)
    record_property("gaps_s", frozen.gaps)
    failover = max(frozen.failover.values()) if frozen.failover else frozen.isr_shrunk
    assert failover is not None, f"Kafka never dropped the frozen node; {frozen.row.note}"
    bound = failover + 2 * broker_request_timeout
    for partition, gap in frozen.gaps.items():
        assert gap <= bound, f"partition {partition} past {bound:.1f}s: {frozen.row.note}"
    assert frozen.row.missing == 0, frozen.row.missing_ids
    assert frozen.row.duplicates == 0, frozen.row.note
