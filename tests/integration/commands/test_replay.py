"""`apizee-bridge replay` as a process against real brokers: beside a running bridge (its
ticket state learns what was replayed), filters, dry run, limit, reruns; a crash in the middle;
a broker down at start and during the run; missing rights; bad arguments.

Dead letters that pass today's validation are what a bridge of an older version parked
(stricter, or missing a fix): the tests write them with that version's contract headers, as it
would have, next to records the running bridge parks itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AclOperation

from bridge import dlq
from bridge.devtools.devbroker import KafkaCluster, free_port
from bridge.devtools.simulator import ApizeeRestServer
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import bridge_settings, running_bridge, webhook
from tests.integration.commands.clikit import (
    Ran,
    Secured,
    cli_process,
    command_env,
    kafka_only_env,
    run_cli,
)
from tests.integration.pollerkit import (
    TOKEN,
    capture_tracking,
    poller_settings,
    read_to_end,
    replica,
    wait_until,
)
from tests.integration.readback import Record

pytestmark = pytest.mark.integration

SIM_TOKEN = "simulator-token"
RECEIVED = 1_749_581_448_000


def park(bootstrap: str, prefix: str, letters: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
    """Dead letters as a bridge parks them (value, headers), spread over the partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for value, headers in letters:
        producer.produce(f"{prefix}.dlq", value, headers=dict(headers))
    assert producer.flush(60) == 0


def webhook_letter(
    event_id: int, ticket: int, event_type: str = "ticket.assigned"
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(webhook(event_type, event_id=event_id, ticket_id=ticket)).encode()
    headers = {
        dlq.KIND: "invalid_envelope",
        dlq.REASON: "refused by an older version",
        **dlq.webhook_headers(
            request_id=f"req-{event_id}", received_at_ms=RECEIVED, ticket_id=ticket
        ),
    }
    return body, headers


_ROWS = "|".join(
    re.escape(row)
    for row in (
        "read",
        "not selected (filters)",
        "selected",
        "published",
        "would publish",
        "skipped, already present",
        "still failing",
    )
)


def summary_of(ran: Ran) -> dict[str, int]:
    """The counts of the summary table."""
    counts: dict[str, int] = {}
    for line in ran.lines:
        found = re.match(rf"^\s+({_ROWS})\s+(\d+)", line)
        if found:
            counts[found.group(1)] = int(found.group(2))
    assert counts, ran
    return counts


def by_event_id(records: list[Record]) -> Counter[int]:
    return Counter(int(r.headers["event-id"]) for r in records)


def event_topics(prefix: str) -> list[str]:
    names = TopicNames(prefix)
    return [t for t in names.events() if t != names.dlq]


async def test_replay_beside_a_running_bridge_publishes_once_and_the_bridge_knows_it(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rest = ApizeeRestServer(lambda _t: None, token=SIM_TOKEN)
    await rest.start()
    group = f"{topic_prefix}.bridge"
    settings = poller_settings(
        kafka_bootstrap,
        topic_prefix,
        rest.url,
        poller={"group_session_timeout_ms": 6000, "group_heartbeat_interval_ms": 1000},
    )
    env = command_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_KAFKA_TOPIC_PARTITIONS="4",
        BRIDGE_APIZEE_BASE_URL=rest.url,
        BRIDGE_APIZEE_TOKEN=SIM_TOKEN,
        BRIDGE_POLLER_GROUP_ID=group,
    )
    headers = {"X-Webhook-Token": TOKEN}
    try:
        async with replica(settings, capture_tracking(monkeypatch)) as bridge:

            async def post(body: Any) -> tuple[int, dict[str, Any]]:
                async with bridge.session.post(bridge.webhook_url, json=body, headers=headers) as r:
                    return r.status, await r.json()

            assert (await post(webhook("ticket.new", event_id=5001, ticket_id=361)))[0] == 200
            # Parked by the running bridge itself: still invalid today.
            missing_ticket = webhook("ticket.new", event_id=5009)
            del missing_ticket["props"]["ticketId"]
            assert (await post(missing_ticket))[0] == 400
            item = {
                "id": 5005,
                "eventType": "media.pictureTaken",
                "timestamp": 1749581447,
                "conversationId": 9,
                "data": {"mediaId": 12},
            }
            before_parking = int(time.time() * 1000) - 1
            park(
                kafka_bootstrap,
                topic_prefix,
                [
                    webhook_letter(5001, 361),  # already on its topic
                    webhook_letter(5002, 361),
                    webhook_letter(5002, 361),  # parked twice (Apizee retried)
                    webhook_letter(5003, 361),
                    webhook_letter(5004, 362),
                    (
                        json.dumps(item).encode(),
                        {
                            dlq.KIND: "invalid_envelope",
                            dlq.REASON: "older version",
                            **dlq.poller_headers(
                                request_id="abc", received_at_ms=RECEIVED, ticket_id=363
                            ),
                        },
                    ),
                    (
                        b"{not json",
                        {dlq.KIND: "invalid_json", dlq.REASON: "x", dlq.SOURCE: "WEBHOOK"},
                    ),
                ],
            )
            # Filters, each in a group of its own (a selection is a job of its own).
            ran = await run_cli(
                "replay",
                "--from",
                "dlq",
                "--ticket",
                "362",
                "--group",
                f"{topic_prefix}.g1",
                env=env,
            )
            assert ran.code == 0, ran
            assert summary_of(ran) == {
                "read": 8,
                "not selected (filters)": 7,
                "selected": 1,
                "published": 1,
                "skipped, already present": 0,
                "still failing": 0,
            }, ran
            ran = await run_cli(
                "replay",
                "--from",
                "dlq",
                "--kind",
                "invalid_json",
                "--group",
                f"{topic_prefix}.g2",
                env=env,
            )
            assert ran.code == 1, ran
            assert summary_of(ran)["still failing"] == 1
            ran = await run_cli(
                "replay",
                "--from",
                "dlq",
                "--until",
                "2020-01-01",
                "--group",
                f"{topic_prefix}.g3",
                env=env,
            )
            assert ran.code == 0, ran
            assert summary_of(ran)["selected"] == 0
            # A dry run judges everything, publishes and commits nothing.
            ran = await run_cli("replay", "--from", "dlq", "--dry-run", env=env)
            assert ran.code == 1, ran
            assert summary_of(ran) == {
                "read": 8,
                "not selected (filters)": 0,
                "selected": 8,
                "would publish": 3,
                "skipped, already present": 3,
                "still failing": 2,
            }, ran
            # The real run, from the beginning (the dry run committed nothing).
            ran = await run_cli(
                "replay",
                "--from",
                "dlq",
                "--since",
                time.strftime("%Y-%m-%d", time.gmtime(before_parking / 1000 - 86400)),
                env=env,
            )
            print(f"\n{ran.stdout}")
            assert ran.code == 1, ran
            assert summary_of(ran) == {
                "read": 8,
                "not selected (filters)": 0,
                "selected": 8,
                "published": 3,
                "skipped, already present": 3,
                "still failing": 2,
            }, ran
            ran.line("      invalid_json ")
            ran.line("      invalid_envelope: props.ticketId: Field required ")
            assert (
                ran.lines[-1]
                == f"replay: 2 of 8 selected records still fail; they stay on {topic_prefix}.dlq"
            )

            records = read_to_end(kafka_bootstrap, event_topics(topic_prefix))
            assert by_event_id(records) == {5001: 1, 5002: 1, 5003: 1, 5004: 1, 5005: 1}
            parked = {
                (r.topic, r.partition, r.offset): r
                for r in read_to_end(kafka_bootstrap, [f"{topic_prefix}.dlq"])
            }
            for record in records:
                origin = record.headers.get("replayed-from")
                if int(record.headers["event-id"]) == 5001:
                    assert origin is None  # the webhook's own, not replayed
                    continue
                topic, partition, offset = origin.decode().split(":")  # type: ignore[union-attr]
                source = parked[(topic, int(partition), int(offset))]
                event_id = record.headers["event-id"]
                assert event_id in (source.value or b""), (event_id, source)
                ticket = source.headers["ticket-id"]
                assert record.key == ticket
            poller_replayed = [r for r in records if r.headers["event-id"] == b"5005"]
            assert poller_replayed[0].headers["source"] == b"POLLER"
            assert poller_replayed[0].topic == f"{topic_prefix}.media"

            # The running bridge learned the replayed ids from the ticket state: Apizee
            # delivering one of them again is a duplicate, not a second record.
            async def learned() -> bool:
                store = bridge.tracking.store
                return all(store.seen(t, i) for t, i in ((361, 5002), (361, 5003), (362, 5004)))

            await wait_until(learned, 10.0, "the running bridge's ticket state knows them")
            status, answer = await post(webhook("ticket.assigned", event_id=5003, ticket_id=361))
            assert (status, answer["status"]) == (200, "duplicate"), answer

            # A rerun: nothing new since the committed progress.
            ran = await run_cli("replay", "--from", "dlq", "--since", "2000-01-01", env=env)
            assert ran.code == 2, ran  # another selection than the committed one
            assert "holds the progress of another selection" in ran.stderr
            ran = await run_cli(
                "replay",
                "--from",
                "dlq",
                "--since",
                time.strftime("%Y-%m-%d", time.gmtime(before_parking / 1000 - 86400)),
                env=env,
            )
            assert ran.code == 0, ran
            assert summary_of(ran)["selected"] == 0
            # Over again: everything is present or still fails, nothing is published twice.
            ran = await run_cli("replay", "--from", "dlq", "--restart", "--limit", "5", env=env)
            figures = summary_of(ran)
            assert (figures["read"], figures["selected"], figures["published"]) == (5, 5, 0), ran
            assert figures["skipped, already present"] + figures["still failing"] == 5
            assert ran.code == (1 if figures["still failing"] else 0), ran
        assert by_event_id(read_to_end(kafka_bootstrap, event_topics(topic_prefix))) == {
            5001: 1,
            5002: 1,
            5003: 1,
            5004: 1,
            5005: 1,
        }
    finally:
        await rest.stop()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """The replay's committed progress, summed over the partitions."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                found = consumer.committed(
                    [TopicPartition(topic, p) for p in range(partitions)], timeout=10
                )
                return sum(max(0, tp.offset) for tp in found)
            except KafkaException:
                # The group's coordinator loading or moving (a fresh cluster): retried.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def landed(bootstrap: str, topic: str, partitions: int) -> int:
    """Records on `topic` (end offsets: the target topics start empty, nothing compacts)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


async def test_a_crash_in_the_middle_then_a_rerun_publishes_each_event_once(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)):
        pass  # creates the topics (3 partitions each)
    count = 10_000
    park(
        kafka_bootstrap,
        topic_prefix,
        [webhook_letter(10_000 + n, 1 + n % 50) for n in range(count)],
    )
    env = command_env(kafka_bootstrap, topic_prefix)
    dlq_topic = f"{topic_prefix}.dlq"
    group = f"{topic_prefix}.crash"
    target = f"{topic_prefix}.ticket"
    # One client for the probes, reused: a probe must take milliseconds, not a new connection.
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    dlq_parts = [TopicPartition(dlq_topic, p) for p in range(3)]

    def progress() -> tuple[int, int]:
        """(committed by the replay, landed on the target topic); (0, 0) while the group's
        coordinator is not there yet."""
        try:
            done = sum(max(0, tp.offset) for tp in probe.committed(dlq_parts, timeout=10))
        except KafkaException:
            return 0, 0
        landed_now = sum(
            probe.get_watermark_offsets(TopicPartition(target, p), timeout=10, cached=False)[1]
            for p in range(3)
        )
        return done, landed_now

    try:
        async with cli_process("replay", "--from", "dlq", "--group", group, env=env) as replay:
            # Crashed in the middle of a batch: some of it published, the batch not
            # committed. Frozen (SIGSTOP) while that is verified, then killed: no cleanup, no
            # last commit.
            deadline = time.monotonic() + 120
            while True:
                assert replay.returncode is None, "the replay ended before it could be crashed"
                assert time.monotonic() < deadline, "never caught between a publish and its commit"
                done, landed_now = progress()
                if done and landed_now > done:
                    replay.send_signal(signal.SIGSTOP)
                    done, landed_now = progress()
                    if landed_now > done:
                        os.killpg(replay.pid, signal.SIGKILL)
                        break
                    replay.send_signal(signal.SIGCONT)
                await asyncio.sleep(0)
            await replay.wait()
    finally:
        probe.close()
    done = committed(kafka_bootstrap, group, dlq_topic, 3)
    before = by_event_id(read_to_end(kafka_bootstrap, event_topics(topic_prefix)))
    published = sum(before.values())
    assert set(before.values()) == {1}
    assert 0 < done < published < count, (done, published, count)
    ran = await run_cli("replay", "--from", "dlq", "--group", group, env=env)
    print(f"\ncrashed at {done} committed, {published} published; the rerun:\n{ran.stdout}")
    assert ran.code == 0, ran
    figures = summary_of(ran)
    # It continued where the crashed run had committed, and skipped what that run published
    # after its last commit.
    assert figures["read"] == count - done
    assert figures["skipped, already present"] == published - done
    assert figures["published"] == count - published
    final = by_event_id(read_to_end(kafka_bootstrap, event_topics(topic_prefix)))
    assert set(final) == {10_000 + n for n in range(count)}
    assert set(final.values()) == {1}, "published twice"


async def test_kafka_unreachable_at_start_exits_1(topic_prefix: str) -> None:
    env = command_env(f"127.0.0.1:{free_port()}", topic_prefix)
    ran = await run_cli("replay", "--from", "dlq", "--ready-timeout", "5", env=env)
    assert ran.code == 1, ran
    assert "replay: stopped: cannot reach Kafka: broker 127.0.0.1:" in ran.stdout
    assert "connection refused" in ran.stdout


async def test_a_broker_down_during_the_replay_then_a_rerun_completes_exactly_once(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    bootstrap = own_kafka.bootstrap_servers
    async with running_bridge(bridge_settings(bootstrap, topic_prefix)):
        pass
    count = 6000
    park(bootstrap, topic_prefix, [webhook_letter(20_000 + n, 1 + n % 40) for n in range(count)])
    env = command_env(
        bootstrap,
        topic_prefix,
        BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS="3",
        BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="3000",
    )
    group = f"{topic_prefix}.down"
    async with cli_process("replay", "--from", "dlq", "--group", group, env=env) as replay:
        deadline = time.monotonic() + 120
        while committed(bootstrap, group, f"{topic_prefix}.dlq", 3) == 0:
            assert replay.returncode is None, "the replay ended before the broker went down"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # Frozen while the broker goes, so that the broker is gone in the middle of the run.
        replay.send_signal(signal.SIGSTOP)
        await asyncio.to_thread(own_kafka.kill, 1)
        replay.send_signal(signal.SIGCONT)
        async with asyncio.timeout(90):
            out, err = await replay.communicate()
    assert replay.returncode == 1, err.decode()[-3000:]
    assert "replay: stopped:" in out.decode(), err.decode()[-3000:]
    await asyncio.to_thread(own_kafka.start_node, 1)
    ran = await run_cli("replay", "--from", "dlq", "--group", group, env=env)
    assert ran.code == 0, ran
    final = by_event_id(read_to_end(bootstrap, event_topics(topic_prefix), timeout=60))
    assert set(final) == {20_000 + n for n in range(count)}
    assert set(final.values()) == {1}, "published twice"


async def test_missing_rights_are_named_with_the_acl_to_add(
    secured: Secured, topic_prefix: str
) -> None:
    secured.create_topics(topic_prefix)
    park(secured.plaintext, topic_prefix, [webhook_letter(30_001, 361)])
    env = secured.env(topic_prefix, "bridge", BRIDGE_KAFKA_TOPIC_PARTITIONS="3")
    group = f"{topic_prefix}.replay"
    args = ("replay", "--from", "dlq", "--group", group)
    ran = await run_cli(*args, env=env)
    assert ran.code == 1, ran
    assert f"User:bridge may not read {topic_prefix}.dlq. Fix: kafka-acls.sh --add" in ran.stdout
    secured.allow("bridge", [AclOperation.READ], topic=f"{topic_prefix}.dlq")
    ran = await run_cli(*args, env=env)
    assert ran.code == 1, ran
    assert f"may not use the consumer group {group}" in ran.stdout
    secured.allow("bridge", [AclOperation.READ], group=group)
    ran = await run_cli(*args, env=env)
    assert ran.code == 1, ran
    assert (
        f"User:bridge lacks READ on {topic_prefix}.ticket, WRITE on {topic_prefix}.ticket"
        in ran.stdout
    )
    assert summary_of(ran)["published"] == 0
    secured.allow(
        "bridge", [AclOperation.READ, AclOperation.WRITE], topic_prefix=f"{topic_prefix}."
    )
    ran = await run_cli(*args, env=env)
    assert ran.code == 0, ran
    assert summary_of(ran)["published"] == 1
    records = read_to_end(secured.plaintext, [f"{topic_prefix}.ticket"])
    assert by_event_id(records) == {30_001: 1}


async def test_bad_arguments_exit_2(kafka_bootstrap: str, topic_prefix: str) -> None:
    env = command_env(kafka_bootstrap, topic_prefix)
    cases: dict[tuple[str, ...], str] = {
        (): "the following arguments are required: --from",
        ("--from", "state"): "invalid choice",
        ("--from", "dlq", "--since", "yesterday"): "not an ISO 8601 time",
        (
            "--from",
            "dlq",
            "--since",
            "2026-02-01",
            "--until",
            "2026-01-01",
        ): "--since is after --until",
        ("--from", "dlq", "--limit", "0"): "not a positive integer",
        ("--from", "dlq", "--ticket", "x"): "not a ticket id",
    }
    for args, message in cases.items():
        ran = await run_cli("replay", *args, env=env)
        assert ran.code == 2, (args, str(ran))
        assert message in ran.stderr, (args, ran.stderr)
    ran = await run_cli("replay", "--from", "dlq", env={**env, "BRIDGE_KAFKA_LINGER_MS": "x"})
    assert ran.code == 2, ran
    assert "BRIDGE_KAFKA_LINGER_MS" in ran.stderr


async def test_a_dry_run_needs_kafka_settings_alone(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """replay serves no webhooks: no webhook auth method need be configured."""
    park(kafka_bootstrap, topic_prefix, [webhook_letter(501, 361)])
    env = kafka_only_env(kafka_bootstrap, topic_prefix)
    ran = await run_cli("replay", "--from", "dlq", "--dry-run", env=env)
    assert ran.code == 0, ran
    assert summary_of(ran)["would publish"] == 1, ran
