"""The webhook ingress against a real broker: every status of the HTTP contract, and what each
one leaves in Kafka (read back with confluent-kafka, decoded with the codec).

Each test runs its own bridge (`serve()` in this event loop, ports picked by the kernel) on a
topic prefix of its own, so "nothing else in Kafka" means nothing under that prefix.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from bridge.catalog import EVENTS
from bridge.codec import SINGLE_OBJECT_MAGIC, Codec
from bridge.config import KafkaSettings
from bridge.devtools.devbroker import KafkaCluster, free_port
from bridge.models import ENVELOPE_EXTRA_KEY, CanonicalEvent, Source
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import (
    TOKEN,
    TOKEN_HEADER,
    BridgeClient,
    InProcessBridge,
    Reply,
    assert_json_error,
    body_bytes,
    bridge_settings,
    running_bridge,
    signature_headers,
    webhook,
)
from tests.integration.readback import Record, consume_async

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CODEC = Codec()
COMMON_PROPS = frozenset({"eventType", "eventCode", "conversationId", "ticketId"})
KAFKA_DOWN_WITHIN = 15.0  # health check interval (2 s) + its metadata timeout, with slack


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


SEED: dict[str, Any] = _fixture("seed_webhook_example.json")


async def everything(bootstrap: str, prefix: str) -> dict[str, list[Record]]:
    """Every record under `prefix`, by topic (read to the end offsets, so complete as of now:
    the bridge answers only after the broker acknowledged)."""
    records = await consume_async(bootstrap, TopicNames(prefix).events(), timeout=30)
    by_topic: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_topic[record.topic].append(record)
    return dict(by_topic)


def only(by_topic: Mapping[str, list[Record]], expected: Mapping[str, int]) -> None:
    """Exactly these record counts per topic, and no record on any other topic."""
    counts = {topic: len(records) for topic, records in by_topic.items()}
    assert counts == {t: n for t, n in expected.items() if n}, counts


def decode(record: Record) -> CanonicalEvent:
    assert record.value is not None
    return CODEC.decode(record.value)


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def merged(typed: Any, extra: Any) -> Any:
    """Typed attributes with the unknown parts kept in `extra` put back where they were."""
    if isinstance(typed, dict) and isinstance(extra, dict):
        out = dict(typed)
        for key, value in extra.items():
            out[key] = merged(out[key], value) if key in out else value
        return out
    if isinstance(typed, list) and isinstance(extra, list) and len(typed) == len(extra):
        return [merged(t, e) for t, e in zip(typed, extra, strict=True)]
    return extra


def props_back(event: CanonicalEvent) -> dict[str, Any]:
    """The event's attributes as Apizee sent them: typed ones plus everything in `extra`."""
    extra = {k: v for k, v in event.extra.items() if k != ENVELOPE_EXTRA_KEY}
    out: dict[str, Any] = without_nulls(merged(event.attributes, extra))
    return out


def assert_event_record(record: Record, body: Mapping[str, Any], prefix: str) -> CanonicalEvent:
    """`record` is the webhook `body`: topic, key, headers, and decoded content."""
    props = body["props"]
    event_type = props["eventType"]
    known = event_type in EVENTS
    category = event_type.split(".", 1)[0] if known else "unknown"
    assert record.topic == f"{prefix}.{category}"
    assert record.key == str(props["ticketId"]).encode()
    assert record.value is not None
    assert record.value[:2] == SINGLE_OBJECT_MAGIC
    assert record.headers == {
        "event-type": event_type.encode(),
        "event-id": str(body["objectId"]).encode(),
        "source": b"WEBHOOK",
        # The header names the schema the value is framed with.
        "schema-fingerprint": record.value[2:10].hex().encode(),
    }
    assert record.headers["schema-fingerprint"] == (
        CODEC.writer_for(event_type).fingerprint_hex.encode()
    )
    event = decode(record)
    assert event.event_id == body["objectId"]
    assert event.event_type == event_type
    assert event.event_code == props.get("eventCode")
    assert event.ticket_id == props["ticketId"]
    assert event.conversation_id == props["conversationId"]
    assert event.occurred_at_ms == round(body["time"] * 1000)
    assert event.source is Source.WEBHOOK
    sent = {k: v for k, v in props.items() if k not in COMMON_PROPS}
    assert props_back(event) == without_nulls(sent), event_type
    envelope_extra = {k: v for k, v in body.items() if k not in SEED}
    assert event.extra.get(ENVELOPE_EXTRA_KEY, {}) == envelope_extra
    return event


@pytest.fixture
async def bridge(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[InProcessBridge]:
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as running:
        yield running


# -- 200 accepted ----------------------------------------------------------------------


async def test_accepted_event_is_on_its_category_topic_keyed_by_ticket(
    bridge: InProcessBridge, kafka_bootstrap: str, topic_prefix: str
) -> None:
    # A charset parameter is still application/json.
    reply = await bridge.post(SEED, content_type="application/json; charset=utf-8")

    assert reply.status == 200, reply
    assert reply.json() == {"status": "accepted", "eventId": 1266}
    assert reply.headers["Content-Type"].startswith("application/json")
    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["X-Request-Id"])
    # A caller's plain request id is echoed.
    echoed = await bridge.post(
        webhook("consent.accepted", event_id=1267), headers={"X-Request-Id": "apizee-42.a"}
    )
    assert echoed.status == 200, echoed
    assert echoed.headers["X-Request-Id"] == "apizee-42.a"

    by_topic = await everything(kafka_bootstrap, topic_prefix)
    only(by_topic, {f"{topic_prefix}.media": 1, f"{topic_prefix}.consent": 1})
    (record,) = by_topic[f"{topic_prefix}.media"]
    event = assert_event_record(record, SEED, topic_prefix)
    assert event.attributes == {"text": "text captured by OCR"}
    assert event.extra == {}


# -- 200 duplicate ---------------------------------------------------------------------


async def test_duplicate_delivery_answers_duplicate_and_adds_no_record(
    bridge: InProcessBridge, kafka_bootstrap: str, topic_prefix: str
) -> None:
    first = await bridge.post(SEED)
    again = await bridge.post(SEED)
    # Same event id, other content: still the event already published.
    changed = dict(SEED, props={**SEED["props"], "text": "a later, different text"})
    altered = await bridge.post(changed)
    # Concurrent deliveries of one new event: one publishes, the others wait and see it.
    burst_body = webhook("media.pictureTaken", {"mediaId": 7}, event_id=5000)
    burst = await asyncio.gather(*(bridge.post(burst_body) for _ in range(8)))

    assert first.json() == {"status": "accepted", "eventId": 1266}
    for reply in (again, altered):
        assert reply.status == 200, reply
        assert reply.json() == {"status": "duplicate", "eventId": 1266}
    assert all(r.status == 200 for r in burst), [str(r) for r in burst]
    assert Counter(r.json()["status"] for r in burst) == {"accepted": 1, "duplicate": 7}

    by_topic = await everything(kafka_bootstrap, topic_prefix)
    only(by_topic, {f"{topic_prefix}.media": 2})
    ocr, picture = sorted(by_topic[f"{topic_prefix}.media"], key=lambda r: decode(r).event_id)
    assert_event_record(ocr, SEED, topic_prefix)  # the first content, not the altered one
    assert_event_record(picture, burst_body, topic_prefix)


# -- 202 unknown eventType -------------------------------------------------------------


async def test_unknown_event_type_goes_to_the_unknown_topic_with_everything_kept(
    bridge: InProcessBridge, kafka_bootstrap: str, topic_prefix: str
) -> None:
    whiteboard = webhook(
        "whiteboard.drawn",
        {"strokes": [1, 2, {"c": "red"}], "tool": "pen", "agent": {"email": "a@b.c"}},
        event_id=9001,
        ticket_id=77,
    )
    whiteboard["livemode"] = True  # an envelope field Apizee may add one day
    # A known category but not a known type: unknown, not the media topic.
    hologram = webhook("media.hologramTaken", {"mediaId": 5}, event_id=9002, event_code=None)

    replies = [await bridge.post(whiteboard), await bridge.post(hologram)]

    assert [r.status for r in replies] == [202, 202], [str(r) for r in replies]
    assert [r.json() for r in replies] == [
        {"status": "unknown_event_type", "eventId": 9001},
        {"status": "unknown_event_type", "eventId": 9002},
    ]
    by_topic = await everything(kafka_bootstrap, topic_prefix)
    only(by_topic, {f"{topic_prefix}.unknown": 2})
    records = sorted(by_topic[f"{topic_prefix}.unknown"], key=lambda r: decode(r).event_id)
    drawn = assert_event_record(records[0], whiteboard, topic_prefix)
    assert drawn.attributes == {}
    assert drawn.extra == {
        "strokes": [1, 2, {"c": "red"}],
        "tool": "pen",
        "agent": {"email": "a@b.c"},
        ENVELOPE_EXTRA_KEY: {"livemode": True},
    }
    assert_event_record(records[1], hologram, topic_prefix)


# -- 400 invalid -----------------------------------------------------------------------

_INVALID = [
    # (body, dlq kind, a location the reason must name)
    (b'{"event": "create", "time": 17', "invalid_json", None),
    (b"\xff\xfe not even text \x00", "invalid_json", None),
    (b"", "invalid_json", None),
    (b"[1, 2, 3]", "invalid_envelope", None),
    (
        body_bytes({k: v for k, v in SEED.items() if k != "objectId"}),
        "invalid_envelope",
        "objectId",
    ),
    (
        body_bytes(dict(SEED, props={**SEED["props"], "ticketId": "361"})),
        "invalid_envelope",
        "props.ticketId",
    ),
    (body_bytes(dict(SEED, object="ticket")), "invalid_envelope", "object"),
    (
        body_bytes(webhook("media.pictureTaken", {"mediaId": "not a number"}, event_id=3)),
        "invalid_envelope",
        "props.mediaId",
    ),
]


def _named_ticket(body: bytes) -> int | None:
    """The integer props.ticketId of a body, if it is JSON and has one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    props = document.get("props") if isinstance(document, dict) else None
    ticket = props.get("ticketId") if isinstance(props, dict) else None
    return ticket if type(ticket) is int else None


async def test_invalid_bodies_get_400_and_their_raw_bytes_go_to_the_dlq(
    bridge: InProcessBridge, kafka_bootstrap: str, topic_prefix: str
) -> None:
    replies = [await bridge.post(body) for body, _, _ in _INVALID]

    reasons = []
    for reply, (body, _, location) in zip(replies, _INVALID, strict=True):
        error = assert_json_error(reply, 400, "invalid")
        if location is not None:
            assert location in error["reason"], (body, error)
        reasons.append(error["reason"])

    by_topic = await everything(kafka_bootstrap, topic_prefix)
    only(by_topic, {f"{topic_prefix}.dlq": len(_INVALID)})
    # Keyless records spread over the partitions: each is matched to its request by its id.
    dead = {r.headers.get("request-id", b"").decode(): r for r in by_topic[f"{topic_prefix}.dlq"]}
    assert len(dead) == len(_INVALID)
    for reply, reason, (body, kind, _) in zip(replies, reasons, _INVALID, strict=True):
        record = dead[reply.headers["X-Request-Id"]]
        assert record.value == body, kind  # the raw bytes, as they came (b"" reads back empty)
        assert record.key is None
        # The DLQ header contract (docs/operations.md, "Dead letters"); ticket-id when the body
        # names one.
        named = _named_ticket(body)
        assert set(record.headers) == {
            "dlq-kind",
            "dlq-reason",
            "request-id",
            "received-at",
            "source",
            *(["ticket-id"] if named is not None else []),
        }
        if named is not None:
            assert record.headers["ticket-id"] == str(named).encode()
        assert record.headers["request-id"] == reply.headers["X-Request-Id"].encode()
        assert record.headers["dlq-kind"] == kind.encode()
        assert record.headers["dlq-reason"] == reason.encode()
        assert record.headers["source"] == b"WEBHOOK"
        assert record.headers["received-at"].isdigit()


# -- 401 unauthenticated ---------------------------------------------------------------


async def test_unauthenticated_requests_get_401_and_nothing_is_stored(
    bridge: InProcessBridge, kafka_bootstrap: str, topic_prefix: str
) -> None:
    body = body_bytes(SEED)
    other = body_bytes(webhook("consent.accepted", event_id=2))
    refused = {
        "no credentials": await bridge.post(body, token=None),
        "wrong token": await bridge.post(body, token=TOKEN + "x"),
        "empty token": await bridge.post(body, token=""),
        "wrong query token": await bridge.post(body, token=None, params={"token": "nope"}),
        "signature of another body": await bridge.post(
            body, token=None, headers=signature_headers(other)
        ),
        "signature not hex": await bridge.post(
            body, token=None, headers={"X-Apizee-Signature": "zz" * 32}
        ),
        # Authentication comes before parsing: an unauthenticated bad body is not dead-lettered.
        "bad body, no credentials": await bridge.post(b"{not json", token=None),
        "bad body, wrong token": await bridge.post(b"{not json", token="wrong"),
    }
    # Each configured method admits: proof that refusals, not the setup, kept Kafka empty.
    signed = body_bytes(webhook("ticket.new", event_id=11))
    by_signature = await bridge.post(signed, token=None, headers=signature_headers(signed))
    by_query = await bridge.post(
        webhook("geo.ansDisallowed", event_id=12), token=None, params={"token": TOKEN}
    )

    expected_reason = {
        "no credentials": "missing_credentials",
        "wrong token": "bad_token",
        "empty token": "bad_token",
        "wrong query token": "bad_token",
        "signature of another body": "bad_signature",
        "signature not hex": "bad_signature",
        "bad body, no credentials": "missing_credentials",
        "bad body, wrong token": "bad_token",
    }
    for case, reply in refused.items():
        error = assert_json_error(reply, 401, "unauthorized")
        assert error["reason"] == expected_reason[case], case
    assert by_signature.json() == {"status": "accepted", "eventId": 11}
    assert by_query.json() == {"status": "accepted", "eventId": 12}
    by_topic = await everything(kafka_bootstrap, topic_prefix)
    only(by_topic, {f"{topic_prefix}.ticket": 1, f"{topic_prefix}.geo": 1})
    # The refused event id was never remembered as published either.
    assert (await bridge.post(body)).json() == {"status": "accepted", "eventId": 1266}


# -- 413 too large ---------------------------------------------------------------------

_LIMIT = 4096


def _padded(event_id: int, size: int) -> bytes:
    """A valid webhook body of exactly `size` bytes (an unknown attribute pads it)."""
    body = webhook("consent.accepted", {"pad": ""}, event_id=event_id)
    pad = size - len(body_bytes(body))
    assert pad >= 0
    body["props"]["pad"] = "x" * pad
    data = body_bytes(body)
    assert len(data) == size
    return data


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _post_chunked(bridge: InProcessBridge, data: bytes) -> Reply:
    """POST with Transfer-Encoding: chunked and no Content-Length."""
    headers = {"Content-Type": "application/json", TOKEN_HEADER: TOKEN}
    async with bridge.session.post(bridge.webhook_url, data=_chunks(data), headers=headers) as r:
        assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in r.request_info.headers
        return Reply(r.status, CIMultiDict(r.headers), await r.read())


async def test_bodies_over_the_limit_get_413_with_or_without_content_length(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = bridge_settings(kafka_bootstrap, topic_prefix, ingress={"max_body_bytes": _LIMIT})
    async with running_bridge(settings) as bridge:
        at_limit = await bridge.post(_padded(1, _LIMIT))
        chunked_at_limit = await _post_chunked(bridge, _padded(2, _LIMIT))
        over = await bridge.post(_padded(3, _LIMIT + 1))
        chunked_over = await _post_chunked(bridge, _padded(4, _LIMIT + 1))
        far_over = await _post_chunked(bridge, _padded(5, 20 * _LIMIT))
        # Too large, and not authenticated: 401, credentials are decided first (a stranger
        # learns nothing of the limits); still nothing stored.
        over_no_token = await bridge.post(_padded(6, _LIMIT + 1), token=None)

    assert at_limit.json() == {"status": "accepted", "eventId": 1}
    assert chunked_at_limit.json() == {"status": "accepted", "eventId": 2}
    for reply in (over, chunked_over, far_over):
        error = assert_json_error(reply, 413, "too_large")
        assert error["reason"] == f"body larger than {_LIMIT} bytes"
    assert assert_json_error(over_no_token, 401, "unauthorized")["reason"] == (
        "missing_credentials"
    )
    by_topic = await everything(kafka_bootstrap, topic_prefix)
    only(by_topic, {f"{topic_prefix}.consent": 2})
    assert sorted(decode(r).event_id for r in by_topic[f"{topic_prefix}.consent"]) == [1, 2]


# -- 415 wrong content type ------------------------------------------------------------


async def test_bodies_that_are_not_json_content_get_415_and_nothing_is_stored(
    bridge: InProcessBridge, kafka_bootstrap: str, topic_prefix: str
) -> None:
    content_types = [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "multipart/form-data; boundary=x",
        None,  # no Content-Type at all
    ]
    replies = [await bridge.post(SEED, content_type=ct) for ct in content_types]

    for content_type, reply in zip(content_types, replies, strict=True):
        error = assert_json_error(reply, 415, "unsupported_media_type")
        assert "application/json" in error["reason"], content_type
    assert await everything(kafka_bootstrap, topic_prefix) == {}
    assert (await bridge.post(SEED)).json() == {"status": "accepted", "eventId": 1266}


# -- 503 Kafka unavailable -------------------------------------------------------------


async def test_kafka_stopped_gives_503_with_retry_after_and_not_ready(
    own_kafka: KafkaCluster, topic_prefix: str
) -> None:
    settings = bridge_settings(
        own_kafka.bootstrap_servers,
        topic_prefix,
        kafka={"publish_timeout_seconds": 3.0},
        ingress={"retry_after_seconds": 7, "request_timeout_seconds": 6.0},
    )
    async with running_bridge(settings) as bridge:
        assert (await bridge.post(SEED)).status == 200
        # A controlled shutdown, off the loop, which the bridge runs on.
        await asyncio.to_thread(own_kafka.stop)

        # Right away: the producer may not have noticed yet, the publish times out instead.
        first = await bridge.post(webhook("consent.accepted", event_id=1))
        await bridge.wait_ready(KAFKA_DOWN_WITHIN, ready=False)
        readyz = await bridge.readyz()
        # Once not ready: answered at once, without trying the broker.
        later = await bridge.post(webhook("consent.accepted", event_id=2))
        # The DLQ is Kafka too: an invalid body cannot be kept, so the sender must retry.
        invalid = await bridge.post(b"{not json")
        # A duplicate is answered from memory, Kafka or not.
        duplicate = await bridge.post(SEED)

    for reply in (first, later, invalid):
        error = assert_json_error(reply, 503, "unavailable")
        assert error["reason"].startswith("Kafka did not acknowledge"), error
        assert reply.headers["Retry-After"] == "7"
    assert readyz is not None
    assert readyz.status == 503
    assert readyz.json()["status"] == "not_ready"
    assert duplicate.json() == {"status": "duplicate", "eventId": 1266}


async def test_kafka_never_reached_gives_503_and_not_ready(topic_prefix: str) -> None:
    nothing_there = f"127.0.0.1:{free_port()}"
    settings = bridge_settings(nothing_there, topic_prefix, ingress={"retry_after_seconds": 3})
    async with running_bridge(settings, wait_ready=False) as bridge:
        await bridge.wait_ready(KAFKA_DOWN_WITHIN, ready=False)
        reply = await bridge.post(SEED)
        readyz = await bridge.readyz()
        healthz = await bridge.admin("/healthz")

    assert_json_error(reply, 503, "unavailable")
    assert reply.headers["Retry-After"] == "3"
    assert readyz is not None
    assert readyz.json()["status"] == "not_ready"
    assert "connect" in readyz.json()["reason"]
    # Alive, though not ready: restarting it would not help.
    assert healthz.status == 200


# -- admin port ------------------------------------------------------------------------

_ADMIN_PATHS = ("/metrics", "/healthz", "/readyz")


def _accepted_count(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("apizee_bridge_webhook_requests_total{") and (
            'reason="accepted"' in line and 'status="200"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_probes_and_metrics_are_on_the_admin_port_only(bridge: InProcessBridge) -> None:
    public = bridge.webhook_url.removesuffix(bridge.settings.ingress.path)
    before = await bridge.admin("/metrics")
    assert (await bridge.post(SEED)).status == 200
    after = await bridge.admin("/metrics")
    healthz = await bridge.admin("/healthz")
    readyz = await bridge.admin("/readyz")
    on_public = {path: await bridge.get(f"{public}{path}") for path in _ADMIN_PATHS}
    webhook_on_admin = await bridge.session.post(
        f"{bridge.admin_url}{bridge.settings.ingress.path}",
        data=body_bytes(SEED),
        headers={"Content-Type": "application/json", TOKEN_HEADER: TOKEN},
    )
    webhook_on_admin.release()

    assert after.status == 200
    assert after.headers["Content-Type"].startswith("text/plain")
    assert _accepted_count(after.body.decode()) == _accepted_count(before.body.decode()) + 1
    assert healthz.status == 200
    assert healthz.json() == {"status": "alive"}
    assert readyz.status == 200
    assert readyz.json() == {"status": "ready"}
    for path, reply in on_public.items():
        assert reply.status == 404, (path, str(reply))
        assert b"apizee_bridge" not in reply.body
    assert webhook_on_admin.status in (404, 405)


async def test_default_topic_settings_create_the_topics_and_get_ready(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Out of the box (`topic_replication_factor` -1, "the broker default") the bridge creates
    its topics and gets ready. A regression test: aiokafka's NewTopic refuses -1 without replica
    assignments (IllegalArgumentError), and its CreateTopics (v0-v3) predates -1 (KIP-464), so
    the publisher has to resolve -1 itself."""
    settings = bridge_settings(
        kafka_bootstrap, topic_prefix, kafka={"topic_replication_factor": -1}
    )
    default = KafkaSettings.model_fields["topic_replication_factor"].default
    assert settings.kafka.topic_replication_factor == default
    async with running_bridge(settings, wait_ready=False) as bridge:
        await bridge.wait_ready(15.0)
        assert (await bridge.post(SEED)).status == 200


# -- the seed's examples ---------------------------------------------------------------


def _seed_webhooks() -> list[dict[str, Any]]:
    """Every example of the seed as a webhook: the webhook example itself, each eventType's
    props example, and the REST example's items (whose unlisted attributes must survive)."""
    bodies = [SEED]
    for n, (event_type, attributes) in enumerate(_fixture("seed_props_examples.json").items()):
        bodies.append(
            webhook(event_type, attributes, event_id=20_000 + n, ticket_id=700 + n, event_code=n)
        )
    for n, item in enumerate(_fixture("seed_rest_example.json")):
        body = webhook(
            item["eventType"],
            item["data"],
            event_id=item["id"],
            ticket_id=800 + n,
            conversation_id=item["conversationId"],
            event_code=None,
            time=item["timestamp"],
        )
        bodies.append(body)
    return bodies


async def test_every_seed_example_reads_back_equal_to_what_was_posted(
    bridge: InProcessBridge, kafka_bootstrap: str, topic_prefix: str
) -> None:
    bodies = _seed_webhooks()
    assert len(bodies) == 1 + len(EVENTS) + 3

    replies = [await bridge.post(body) for body in bodies]

    for body, reply in zip(bodies, replies, strict=True):
        assert reply.status == 200, (body["props"]["eventType"], str(reply))
        assert reply.json() == {"status": "accepted", "eventId": body["objectId"]}
    by_topic = await everything(kafka_bootstrap, topic_prefix)
    expected = Counter(f"{topic_prefix}.{b['props']['eventType'].split('.')[0]}" for b in bodies)
    only(by_topic, expected)
    records = {decode(r).event_id: r for rs in by_topic.values() for r in rs}
    assert len(records) == len(bodies)
    for body in bodies:
        assert_event_record(records[body["objectId"]], body, topic_prefix)
    # The REST example's invitationAccepted carries priorities its type does not list.
    accepted = decode(records[56473])
    assert accepted.extra == {"oldPriority": 1, "newPriority": 0}
    assert accepted.attributes["requestor"]["firstname"] == "Jane"


# -- load ------------------------------------------------------------------------------

_TICKETS = 200
_PER_TICKET = 10


async def test_concurrent_posts_all_land_once_in_per_ticket_order(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """2000 posts, 200 tickets at once (each ticket's events one after the other, as Apizee
    sends them), 100 connections: every one 200, every event exactly once, each ticket on one
    partition in the order it was posted."""
    settings = bridge_settings(kafka_bootstrap, topic_prefix, kafka={"topic_partitions": 6})
    event_types = ["media.pictureTaken", "media.pictureSent"]

    def event_id(ticket: int, seq: int) -> int:
        return 1_000_000 + ticket * 100 + seq

    async with running_bridge(settings) as bridge:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as session:
            load = BridgeClient(bridge.webhook_url, bridge.admin_url, session)

            async def one_ticket(ticket: int) -> list[tuple[int, Reply]]:
                out = []
                for seq in range(_PER_TICKET):
                    body = webhook(
                        event_types[seq % 2],
                        {"mediaId": seq},
                        event_id=event_id(ticket, seq),
                        ticket_id=ticket,
                    )
                    out.append((event_id(ticket, seq), await load.post(body)))
                return out

            results = await asyncio.gather(*(one_ticket(t) for t in range(1, _TICKETS + 1)))

    statuses = Counter((r.status, r.json()["status"]) for rs in results for _, r in rs)
    assert statuses == {(200, "accepted"): _TICKETS * _PER_TICKET}, statuses

    topic = f"{topic_prefix}.media"
    records = await consume_async(
        kafka_bootstrap, [topic], min_count=_TICKETS * _PER_TICKET, timeout=60, drain=1.0
    )
    ids = Counter(int(r.headers["event-id"]) for r in records)
    expected = {event_id(t, s) for t in range(1, _TICKETS + 1) for s in range(_PER_TICKET)}
    assert set(ids) == expected, f"missing {len(expected - set(ids))}, extra {set(ids) - expected}"
    assert [i for i, n in ids.items() if n > 1] == []
    assert len({r.partition for r in records}) > 1  # keys do spread over the partitions
    by_ticket: defaultdict[bytes | None, list[Record]] = defaultdict(list)
    for record in records:  # sorted by (topic, partition, offset)
        by_ticket[record.key].append(record)
    assert len(by_ticket) == _TICKETS
    for key, placed in by_ticket.items():
        assert len({r.partition for r in placed}) == 1, f"ticket {key!r} spans partitions"
        assert key is not None
        ticket = int(key)
        order = [int(r.headers["event-id"]) for r in placed]
        assert order == [event_id(ticket, s) for s in range(_PER_TICKET)], key
