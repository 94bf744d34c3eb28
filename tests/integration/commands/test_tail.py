"""`apizee-bridge tail` as a process: records as they land through a running bridge, filters,
--from-beginning and --json, Ctrl-C, a broker down at start and during the run, no rights,
bad arguments."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Mapping

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AclOperation

from bridge.codec import Codec
from bridge.devtools.devbroker import KafkaCluster, free_port
from bridge.models import CanonicalEvent, Source
from tests.integration.bridgeproc import (
    InProcessBridge,
    bridge_settings,
    running_bridge,
    webhook,
)
from tests.integration.commands.clikit import (
    Secured,
    cli_process,
    command_env,
    kafka_only_env,
    run_cli,
)

pytestmark = pytest.mark.integration

READY = "apizee-bridge tail: reading"


async def read_line(stream: asyncio.StreamReader, within: float = 30.0) -> str:
    async with asyncio.timeout(within):
        raw = await stream.readline()
    assert raw, "the stream ended"
    return raw.decode().rstrip("\n")


async def wait_ready(process: asyncio.subprocess.Process) -> None:
    """Until tail says it reads (it reads from the end: what lands before is not shown)."""
    assert process.stderr is not None
    while True:
        line = await read_line(process.stderr)
        if line.startswith(READY):
            return


async def post_all(bridge: InProcessBridge, bodies: list[dict[str, object] | bytes]) -> None:
    for body in bodies:
        reply = await bridge.post(body)
        assert reply.status in (200, 202, 400), reply


async def test_records_as_they_land_filtered_by_ticket(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = bridge_settings(kafka_bootstrap, topic_prefix)
    env = command_env(kafka_bootstrap, topic_prefix)
    async with running_bridge(settings) as bridge:
        # Before tail starts: not shown (tail reads from the end).
        await post_all(bridge, [webhook("ticket.new", event_id=100, ticket_id=361)])
        async with cli_process("tail", "--ticket", "361", "--count", "4", env=env) as tail:
            await wait_ready(tail)
            await post_all(
                bridge,
                [
                    webhook("ticket.assigned", {"agent": {"email": "a@x"}}, event_id=101),
                    webhook("ticket.assigned", event_id=201, ticket_id=362),  # another ticket
                    webhook("whiteboard.drawn", {"strokes": 3}, event_id=102),  # unknown
                    b'{"event":"create","props":{"ticketId":361,"eventType":"x"}}',  # DLQ
                    webhook("ticket.closed", event_id=103),
                ],
            )
            assert tail.stdout is not None
            lines = [await read_line(tail.stdout) for _ in range(4)]
            async with asyncio.timeout(10):
                code = await tail.wait()
    assert code == 0
    print("\n" + "\n".join(lines))
    # One line per record, in each partition's order; every one of ticket 361, none before.
    by_id = {line.split(" id=")[1].split()[0]: line for line in lines if " id=" in line}
    assert set(by_id) == {"101", "102", "103"}, lines
    assert f"{topic_prefix}.ticket p" in by_id["101"]
    assert "key=361 ticket.assigned id=101 source=WEBHOOK at=2025-06-10T18:50:47Z" in by_id["101"]
    assert 'agent={"email":"a@x"' in by_id["101"]
    assert f"{topic_prefix}.unknown p" in by_id["102"]
    assert "whiteboard.drawn id=102" in by_id["102"]
    assert 'extra={"strokes":3}' in by_id["102"]
    (dead,) = [line for line in lines if " DLQ " in line]
    assert f"{topic_prefix}.dlq p" in dead
    assert (
        "DLQ kind=invalid_envelope source=WEBHOOK ticket=361 reason='time: Field required" in dead
    )


async def test_from_the_beginning_as_json_filtered_by_type_and_source(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = bridge_settings(kafka_bootstrap, topic_prefix)
    env = command_env(kafka_bootstrap, topic_prefix)
    async with running_bridge(settings) as bridge:
        await post_all(
            bridge,
            [
                webhook("media.OCRDone", {"text": "first"}, event_id=301),
                webhook("media.pictureTaken", {"mediaId": 2**40}, event_id=302),
                webhook("media.OCRDone", {"text": "second", "lang": "fr"}, event_id=303),
                b"\xff not json",
            ],
        )
    ran = await run_cli(
        "tail", "--from-beginning", "--json", "--type", "media.OCRDone", "--count", "2", env=env
    )
    assert ran.code == 0, ran
    objects = sorted((json.loads(line) for line in ran.lines), key=lambda o: o["offset"])
    assert [o["event"]["eventId"] for o in objects] == [301, 303]
    first, second = objects
    assert first["topic"] == f"{topic_prefix}.media"
    assert first["key"] == "361"
    assert first["headers"]["event-id"] == "301"
    assert first["event"]["attributes"] == {"text": "first"}
    assert first["event"]["occurredAt"] == "2025-06-10T18:50:47.000Z"
    assert first["event"]["source"] == "WEBHOOK"
    assert second["event"]["extra"] == {"lang": "fr"}

    # The DLQ as JSON: the dead letter's headers, the body as text or base64.
    ran = await run_cli(
        "tail", "--from-beginning", "--json", "--topic", "dlq", "--count", "1", env=env
    )
    assert ran.code == 0, ran
    (dead,) = [json.loads(line) for line in ran.lines]
    assert dead["deadLetter"]["kind"] == "invalid_json"
    assert dead["deadLetter"]["source"] == "WEBHOOK"
    assert dead["deadLetter"]["ticketId"] is None
    assert dead["bodyBase64"] == "/yBub3QganNvbg=="

    # Nothing the poller brought: no line; Ctrl-C ends it with 0.
    async with cli_process("tail", "--from-beginning", "--source", "POLLER", env=env) as tail:
        await wait_ready(tail)
        await asyncio.sleep(1.5)
        tail.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            out, _ = await tail.communicate()
    assert tail.returncode == 0
    assert out == b""


async def test_kafka_unreachable_at_start_exits_1_with_the_cause(topic_prefix: str) -> None:
    env = command_env(f"127.0.0.1:{free_port()}", topic_prefix)
    started = time.monotonic()
    ran = await run_cli("tail", "--connect-timeout", "3", env=env)
    assert ran.code == 1, ran
    assert "apizee-bridge tail: cannot reach Kafka:" in ran.stderr
    assert "connection refused" in ran.stderr
    assert time.monotonic() - started < 30


def _produce(bootstrap: str, topic: str, values: Mapping[int, bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for ticket, value in values.items():
        producer.produce(topic, value, key=str(ticket).encode(), headers={"source": "WEBHOOK"})
    assert producer.flush(30) == 0


def _event(event_id: int, ticket: int) -> bytes:
    event = CanonicalEvent(event_id, "consent.accepted", 1, ticket, 548, 0, Source.WEBHOOK, 0)
    return Codec().encode(event)


async def test_a_broker_restart_while_tailing_loses_and_repeats_nothing(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    bootstrap = own_kafka.bootstrap_servers
    async with running_bridge(bridge_settings(bootstrap, topic_prefix)):
        pass  # the bridge creates its topics
    topic = f"{topic_prefix}.consent"
    env = command_env(bootstrap, topic_prefix, BRIDGE_LOG_LEVEL="ERROR")
    async with cli_process("tail", "--topic", "consent", "--count", "4", env=env) as tail:
        await wait_ready(tail)
        await asyncio.to_thread(_produce, bootstrap, topic, {1: _event(401, 1), 2: _event(402, 2)})
        assert tail.stdout is not None
        before = [await read_line(tail.stdout) for _ in range(2)]
        await asyncio.to_thread(own_kafka.restart, 1)
        await asyncio.to_thread(_produce, bootstrap, topic, {1: _event(403, 1), 2: _event(404, 2)})
        after = [await read_line(tail.stdout, within=60) for _ in range(2)]
        async with asyncio.timeout(15):
            assert await tail.wait() == 0
    ids = sorted(line.split(" id=")[1].split()[0] for line in before + after)
    assert ids == ["401", "402", "403", "404"]


async def test_no_right_to_read_exits_1_with_the_acl_to_add(
    secured: Secured, topic_prefix: str
) -> None:
    secured.create_topics(topic_prefix)
    ran = await run_cli("tail", env=secured.env(topic_prefix, "nobody"))
    assert ran.code == 1, ran
    assert f"User:nobody may not read {topic_prefix}.consent" in ran.stderr
    assert "kafka-acls.sh --add --allow-principal User:nobody --operation Read" in ran.stderr
    # May write the DLQ (hence describe it) but not read it.
    secured.allow("bridge", [AclOperation.WRITE], topic=f"{topic_prefix}.dlq")
    ran = await run_cli("tail", "--topic", "dlq", env=secured.env(topic_prefix, "bridge"))
    assert ran.code == 1, ran
    assert f"User:bridge may not read {topic_prefix}.dlq." in ran.stderr
    # Once allowed, it reads.
    secured.allow("bridge", [AclOperation.READ], topic=f"{topic_prefix}.dlq")
    await asyncio.to_thread(_produce, secured.plaintext, f"{topic_prefix}.dlq", {5: b"{}"})
    ran = await run_cli(
        "tail",
        "--topic",
        "dlq",
        "--from-beginning",
        "--count",
        "1",
        env=secured.env(topic_prefix, "bridge"),
    )
    assert ran.code == 0, ran
    assert " DLQ kind=unknown source=WEBHOOK " in ran.stdout


async def test_bad_arguments_exit_2(kafka_bootstrap: str, topic_prefix: str) -> None:
    env = command_env(kafka_bootstrap, topic_prefix)
    cases = {
        ("--topic", "bridge-state"): "not a topic of this bridge",
        ("--topic", "nope"): "not a topic of this bridge",
        ("--count", "0"): "not a positive integer",
        ("--source", "REPLAY"): "invalid choice",
        ("--ticket", "-3"): "not a ticket id",
    }
    for args, message in cases.items():
        ran = await run_cli("tail", *args, env=env)
        assert ran.code == 2, (args, str(ran))
        assert message in ran.stderr, (args, ran.stderr)


async def test_kafka_settings_alone_are_enough(kafka_bootstrap: str, topic_prefix: str) -> None:
    """tail only reads Kafka: no webhook auth method need be configured."""
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as bridge:
        await post_all(bridge, [webhook("ticket.new", event_id=100, ticket_id=361)])
    env = kafka_only_env(kafka_bootstrap, topic_prefix)
    ran = await run_cli("tail", "--from-beginning", "--count", "1", env=env)
    assert ran.code == 0, ran
    assert "key=361 ticket.new id=100 source=WEBHOOK" in ran.stdout, ran
