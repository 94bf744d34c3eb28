"""What the public port refuses before a body is read, and how (bridge/admission.py and the
ingress): credentials from the headers, the body budget, and every answer with a request id,
aiohttp's own 400s, 404 and 405 included (issue 10, points 2 and 5).
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import pytest

from bridge.publisher import TopicNames
from tests.integration.bridgeproc import (
    TOKEN,
    TOKEN_HEADER,
    InProcessBridge,
    assert_json_error,
    bridge_settings,
    running_bridge,
    signature_headers,
    webhook,
)
from tests.integration.readback import consume_async

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024


async def _raw(
    bridge: InProcessBridge, data: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    split = urlsplit(bridge.webhook_url)
    assert split.hostname is not None
    assert split.port is not None
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    writer.write(data)
    await writer.drain()
    return reader, writer


def _head(path: str, length: int, token: str | None) -> bytes:
    auth = f"{TOKEN_HEADER}: {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{auth}\r\n"
    ).encode()


async def test_a_stranger_is_refused_from_its_headers_before_sending_its_body(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as bridge:
        path = urlsplit(bridge.webhook_url).path
        started = time.monotonic()
        # Headers only: the 1 MiB body is never sent, yet the answer comes.
        reader, writer = await _raw(bridge, _head(path, 1024 * 1024, token=None))
        answer = await asyncio.wait_for(reader.read(1000), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized"), answer
    assert b"missing_credentials" in answer
    assert b"X-Request-Id: " in answer
    assert time.monotonic() - started < 2


async def test_bodies_beyond_the_budget_get_503_at_once_and_whole_small_ones_still_pass(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = bridge_settings(
        kafka_bootstrap,
        topic_prefix,
        ingress={"max_body_bytes": MAX_BODY, "max_body_bytes_in_flight": 2 * MAX_BODY},
    )
    async with running_bridge(settings) as bridge:
        path = urlsplit(bridge.webhook_url).path
        # Two authenticated senders declare a full body and send half of it: the budget.
        held = [await _raw(bridge, _head(path, MAX_BODY, TOKEN) + b"{" * 100) for _ in range(2)]
        await asyncio.sleep(0.3)
        reader, writer = await _raw(bridge, _head(path, MAX_BODY, TOKEN) + b"{")
        over = await asyncio.wait_for(reader.read(1000), 5)
        writer.close()
        # A whole small webhook arrives with its headers: it waits for nothing, so it passes.
        small = await bridge.post(webhook("consent.accepted", event_id=77))
        for _, w in held:
            w.close()
    head, _, body = over.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable"), over
    assert b"Retry-After: 5" in head
    assert b"X-Request-Id: " in head
    assert b"too many webhook bodies in flight" in body
    assert small.status == 200, small


async def test_every_answer_carries_a_request_id_404_405_and_http_400_included(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as bridge:
        not_found = await bridge.get(bridge.webhook_url.replace("/webhooks/apizee", "/nope"))
        not_allowed = await bridge.get(bridge.webhook_url)
        mine = await bridge.session.get(
            bridge.webhook_url + "x", headers={"X-Request-Id": "caller-id-1"}
        )
        reader, writer = await _raw(bridge, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
        http_400 = await asyncio.wait_for(reader.read(2000), 5)
        writer.close()
        reader, writer = await _raw(bridge, b"POST /webhooks/apizee HTTP/1.1\r\nBad Header\r\n\r\n")
        header_400 = await asyncio.wait_for(reader.read(2000), 5)
        writer.close()

    assert_json_error(not_found, 404, "not_found")
    assert not_found.headers["X-Request-Id"]
    assert_json_error(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["Allow"] == "POST"
    assert not_allowed.headers["X-Request-Id"]
    assert mine.status == 404
    assert mine.headers["X-Request-Id"] == "caller-id-1"
    for raw in (http_400, header_400):
        head, _, body = raw.partition(b"\r\n\r\n")
        # HTTP/1.0 when the request line itself could not be read.
        assert head.split(b"\r\n")[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.0 400 Bad Request")
        assert b"X-Request-Id: " in head, raw
        assert b"Content-Type: application/json" in head, raw
        assert body.startswith(b'{"status":"bad_request","reason":'), raw


async def test_small_fixes_content_encoding_reason_and_nan_time_reason(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as bridge:
        gzip = await bridge.post(
            webhook("consent.accepted", event_id=1), headers={"Content-Encoding": "gzip"}
        )
        raw = (
            json.dumps(webhook("consent.accepted", event_id=2))
            .replace('"time": 1749581447', '"time": NaN')
            .encode()
        )
        nan = await bridge.post(raw)
        raw_extra = (
            json.dumps(webhook("consent.accepted", {"x": "@"}, event_id=3))
            .replace('"@"', "[1, NaN]")
            .encode()
        )
        nan_extra = await bridge.post(raw_extra)
    # Before: "Content-Type must be application/json".
    assert assert_json_error(gzip, 415, "unsupported_media_type")["reason"] == (
        "Content-Encoding 'gzip' is not supported"
    )
    # Before: a reason about a maximum timestamp.
    assert (
        assert_json_error(nan, 400, "invalid")["reason"] == "time: Input should be a finite number"
    )
    # Before: accepted, stored as {"x":[1,NaN]} (not JSON).
    reason = assert_json_error(nan_extra, 400, "invalid")["reason"]
    assert reason == "body: Invalid JSON: NaN is not a JSON number (RFC 8259)", reason
    dead = await consume_async(
        kafka_bootstrap, [TopicNames(topic_prefix).dlq], min_count=2, timeout=30
    )
    kinds = {r.value: r.headers["dlq-kind"] for r in dead}
    assert kinds == {raw: b"invalid_envelope", raw_extra: b"invalid_json"}


def _expecting(path: str, length: int, headers: dict[str, str]) -> bytes:
    """Request headers of a sender that waits for `100 Continue` before its body."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n{extra}\r\n"
    ).encode()


async def _first_answer(bridge: InProcessBridge, head: bytes) -> bytes:
    """What the bridge sends to headers alone (the body is never sent)."""
    reader, writer = await _raw(bridge, head)
    try:
        return await asyncio.wait_for(reader.read(2000), 5)
    finally:
        writer.close()


async def _continued(bridge: InProcessBridge, head: bytes, body: bytes) -> tuple[bytes, bytes]:
    """The bridge's `100 Continue` to the headers, then its answer to the body sent after."""
    reader, writer = await _raw(bridge, head)
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"}"), 30)
    finally:
        writer.close()
    return interim, answer


async def test_expect_100_continue_is_sent_only_once_the_headers_passed(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A sender waiting for `100 Continue` gets 401 (bad credentials) before 413 (too large),
    both without a 100, i.e. without being asked for its body; an HMAC, which needs the body,
    gets its 100 only within the size limit."""
    mib = 1024 * 1024
    async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as bridge:
        path = urlsplit(bridge.webhook_url).path
        refused = {
            "bad token, 2 MiB": await _first_answer(
                bridge, _expecting(path, 2 * mib, {TOKEN_HEADER: "wrong"})
            ),
            "no credentials, 2 MiB": await _first_answer(bridge, _expecting(path, 2 * mib, {})),
            "bad token, small": await _first_answer(
                bridge, _expecting(path, 100, {TOKEN_HEADER: "wrong"})
            ),
            "good token, 2 MiB": await _first_answer(
                bridge, _expecting(path, 2 * mib, {TOKEN_HEADER: TOKEN})
            ),
            "signature, 2 MiB": await _first_answer(
                bridge, _expecting(path, 2 * mib, signature_headers(b"x"))
            ),
        }
        small = json.dumps(webhook("consent.accepted", event_id=41)).encode()
        by_token = await _continued(
            bridge, _expecting(path, len(small), {TOKEN_HEADER: TOKEN}), small
        )
        signed = json.dumps(webhook("consent.accepted", event_id=42)).encode()
        by_signature = await _continued(
            bridge, _expecting(path, len(signed), signature_headers(signed)), signed
        )
        forged = json.dumps(webhook("consent.accepted", event_id=43)).encode()
        by_forgery = await _continued(
            bridge, _expecting(path, len(forged), signature_headers(b"another body")), forged
        )
        unknown = await _first_answer(
            bridge,
            _expecting(path, 100, {TOKEN_HEADER: TOKEN}).replace(b"100-continue", b"coffee"),
        )

    expected = {
        "bad token, 2 MiB": (b"HTTP/1.1 401 Unauthorized", b'"reason":"bad_token"'),
        "no credentials, 2 MiB": (b"HTTP/1.1 401 Unauthorized", b'"missing_credentials"'),
        "bad token, small": (b"HTTP/1.1 401 Unauthorized", b'"reason":"bad_token"'),
        "good token, 2 MiB": (b"HTTP/1.1 413 Request Entity Too Large", b'"too_large"'),
        "signature, 2 MiB": (b"HTTP/1.1 413 Request Entity Too Large", b'"too_large"'),
    }
    for case, answer in refused.items():
        status, reason = expected[case]
        assert answer.startswith(status), (case, answer)
        assert b"100 Continue" not in answer, (case, answer)
        assert reason in answer, (case, answer)
    for interim, answer in (by_token, by_signature):
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    interim, answer = by_forgery
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized"), answer
    assert b'"reason":"bad_signature"' in answer, answer
    assert unknown.startswith(b"HTTP/1.1 417 Expectation Failed"), unknown
    assert b"X-Request-Id: " in unknown, unknown
    records = await consume_async(
        kafka_bootstrap, [f"{topic_prefix}.consent"], min_count=2, timeout=30, drain=1.0
    )
    assert sorted(r.headers["event-id"] for r in records) == [b"41", b"42"]
