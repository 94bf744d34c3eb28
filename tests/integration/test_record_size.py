"""Record sizes against Apache Kafka's stock limits (issue 10, point 1): a body at the HTTP
limit is published or dead-lettered, and a record that can never fit gets a definitive 413
(raw body on the DLQ when it fits there), decided before Kafka is asked or, when a topic's
limit was lowered behind the bridge's back, from the broker's answer; never a retryable 503.

The broker is stock: message.max.bytes 1048588 (1 MiB + 12), topics default to it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import REGISTRY

from bridge.codec import Codec
from bridge.config import MESSAGE_BYTES_HEADROOM
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import (
    InProcessBridge,
    assert_json_error,
    bridge_settings,
    running_bridge,
    wait_for,
    webhook,
)
from tests.integration.readback import Record, consume_async

pytestmark = pytest.mark.integration

MIB: Final = 1024 * 1024
STOCK_MAX_MESSAGE_BYTES: Final = 1_048_588
CODEC: Final = Codec()


def padded(event_type: str, size: int, *, event_id: int, **attributes: Any) -> bytes:
    """A webhook of exactly `size` bytes: an unknown attribute `pad` fills it."""
    body = webhook(event_type, {**attributes, "pad": ""}, event_id=event_id)
    empty = json.dumps(body, separators=(",", ":")).encode()
    assert len(empty) <= size
    out = empty.replace(b'"pad":""', b'"pad":"' + b"y" * (size - len(empty)) + b'"')
    assert len(out) == size
    return out


def issue_body(event_id: int) -> bytes:
    """The issue's body: a ticket.new of 1,000,1xx bytes, `"x":[1e15,...]` x 200,000."""
    body = json.dumps(webhook("ticket.new", {"x": "@X@"}, event_id=event_id)).encode()
    return body.replace(b'"@X@"', b"[" + b",".join([b"1e15"] * 200_000) + b"]")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def topic_limits(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None})
                for t in topics
            ]
        )
    finally:
        await admin.close()
    return {
        resource[3]: int(entry[1])
        for response in responses
        for resource in response.resources
        for entry in resource[4]
    }


async def create_topics(bootstrap: str, configs: Mapping[str, Mapping[str, str]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, 3, 1, topic_configs=dict(c) or None) for t, c in configs.items()]
        )
    finally:
        await admin.close()


async def alter_limit(bootstrap: str, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})]
        )
    finally:
        await admin.close()

    # The broker applies the change a moment after the controller took it.
    async def applied() -> bool:
        return (await topic_limits(bootstrap, [topic])).get(topic) == limit

    await wait_for(applied, 10, f"{topic} max.message.bytes = {limit}")


async def read(bootstrap: str, topics: list[str], count: int) -> list[Record]:
    return await consume_async(bootstrap, topics, min_count=count, timeout=60, drain=1.0)


@pytest.fixture
async def stock_bridge(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[InProcessBridge]:
    """A bridge with the default limits (1 MiB bodies), creating its topics."""
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as bridge:
        yield bridge


async def test_a_body_at_the_http_limit_is_published_or_dead_lettered_on_a_stock_broker(
    stock_bridge: InProcessBridge, kafka_bootstrap: str
) -> None:
    topics = stock_bridge.topics
    limits = await topic_limits(kafka_bootstrap, topics.events())
    # The topics the bridge created take any record it may send: body limit + 64 KiB.
    assert set(limits.values()) == {MIB + MESSAGE_BYTES_HEADROOM}, limits

    at_limit = padded("ticket.new", MIB, event_id=9_000_001)
    numbers = issue_body(9_000_002)
    invalid = padded("ticket.new", MIB, event_id=-1)  # objectId < 0: invalid envelope
    garbage = b"{" + b"x" * (MIB - 1)  # not JSON at all

    accepted = await stock_bridge.post(at_limit)
    assert accepted.status == 200, accepted
    issue = await stock_bridge.post(numbers)
    # Before: 503 kafka_unavailable with Retry-After, every time (a 3.8 MB record).
    assert issue.status == 200, issue
    refused = await stock_bridge.post(invalid)
    assert_json_error(refused, 400, "invalid")
    not_json = await stock_bridge.post(garbage)
    assert_json_error(not_json, 400, "invalid")

    records = await read(kafka_bootstrap, [topics.category("ticket"), topics.dlq], 4)
    events = {int(r.headers["event-id"]): r for r in records if r.topic != topics.dlq}
    dead = {r.headers["request-id"]: r for r in records if r.topic == topics.dlq}
    assert set(events) == {9_000_001, 9_000_002}
    assert len(events[9_000_001].value or b"") <= MIB + 256
    record = CODEC.decode_record(events[9_000_002].value or b"")
    # The numbers as sent: 1e15 stays 4 characters, the record no larger than the body.
    assert record["extra"] == '{"x":[' + ",".join(["1e15"] * 200_000) + "]}"
    assert len(events[9_000_002].value or b"") <= len(numbers)
    by_id = {refused.headers["X-Request-Id"]: invalid, not_json.headers["X-Request-Id"]: garbage}
    assert set(dead) == {k.encode() for k in by_id}
    for request_id, body in by_id.items():
        assert dead[request_id.encode()].value == body


async def test_topics_with_stock_limits_get_a_definitive_413_never_a_503(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = TopicNames(topic_prefix)
    # Provisioned by someone else: stock limits, and a category topic lowered to 200 kB.
    configs: dict[str, dict[str, str]] = {t: {} for t in topics.events()}
    configs[topics.category("ticket")] = {"max.message.bytes": "200000"}
    await create_topics(kafka_bootstrap, configs)
    settings = bridge_settings(kafka_bootstrap, topic_prefix, kafka={"create_topics": False})
    too_large = sample("apizee_bridge_publish_errors_total", kind="too_large")
    async with running_bridge(settings) as bridge:
        # 300 kB: over the ticket topic's limit, within the DLQ's.
        mid = padded("ticket.new", 300_000, event_id=9_100_001)
        first = await bridge.post(mid)
        again = await bridge.post(mid)
        # 1 MiB: over the ticket topic's limit and the DLQ's stock one.
        big = padded("ticket.new", MIB, event_id=9_100_002)
        dropped = await bridge.post(big)
        invalid = await bridge.post(padded("ticket.new", MIB, event_id=-2))
        small = await bridge.post(webhook("ticket.new", {}, event_id=9_100_003))
        ready = await bridge.readyz()

    for reply in (first, again):
        body = assert_json_error(reply, 413, "too_large")
        assert body["reason"].startswith("record of "), body
        assert (
            f"larger than the 200000 bytes {topics.category('ticket')} accepts" in (body["reason"])
        )
        assert "Retry-After" not in reply.headers
    # The DLQ holds at most 1048588 - framing: the body cannot be kept; said so, 413.
    for reply in (dropped, invalid):
        body = assert_json_error(reply, 413, "too_large")
        assert f"bytes {topics.dlq} accepts" in body["reason"], body
        assert str(STOCK_MAX_MESSAGE_BYTES) in body["reason"], body
    assert small.status == 200, small
    assert ready is not None
    assert ready.status == 200, ready
    assert sample("apizee_bridge_publish_errors_total", kind="too_large") - too_large == 5

    records = await read(kafka_bootstrap, [topics.category("ticket"), topics.dlq], 3)
    dead = [r for r in records if r.topic == topics.dlq]
    assert [r.value for r in dead] == [mid, mid]
    assert {r.headers["dlq-kind"] for r in dead} == {b"record_too_large"}
    assert b"200000" in dead[0].headers["dlq-reason"]
    assert [int(r.headers["event-id"]) for r in records if r.topic != topics.dlq] == [9_100_003]


async def test_a_limit_lowered_behind_the_bridge_is_refused_by_the_broker_as_definitive(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # Limits are read once at start here (no refresh for ten minutes), then lowered.
    settings = bridge_settings(
        kafka_bootstrap, topic_prefix, kafka={"metadata_max_age_ms": 600_000}
    )
    topic = TopicNames(topic_prefix).category("ticket")
    async with running_bridge(settings) as bridge:
        before = await bridge.post(padded("ticket.new", 100_000, event_id=9_200_001))
        await alter_limit(kafka_bootstrap, topic, 50_000)
        body = padded("ticket.new", 100_000, event_id=9_200_002)
        by_broker = await bridge.post(body)
        after = await bridge.post(webhook("ticket.new", {}, event_id=9_200_003))
        # The refusal made the bridge read the limits again: now decided before sending.
        checked = await bridge.post(padded("ticket.new", 100_000, event_id=9_200_004))

    assert before.status == 200, before
    reason = assert_json_error(by_broker, 413, "too_large")["reason"]
    assert reason.startswith("Kafka refused a record of "), reason
    assert after.status == 200, after
    reason = assert_json_error(checked, 413, "too_large")["reason"]
    assert f"larger than the 50000 bytes {topic} accepts" in reason, reason

    topics = TopicNames(topic_prefix)
    records = await read(kafka_bootstrap, [topic, topics.dlq], 4)
    events = sorted(int(r.headers["event-id"]) for r in records if r.topic == topic)
    assert events == [9_200_001, 9_200_003]
    dead = [r for r in records if r.topic == topics.dlq]
    # Dead letters have no key: any partition, so no order between them.
    expected = [body, padded("ticket.new", 100_000, event_id=9_200_004)]
    assert sorted(r.value or b"" for r in dead) == sorted(expected)
