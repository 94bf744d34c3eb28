"""The ingress's request timeout on slow bodies: a sender that trickles its body is answered
408 (and counted), whether the body has a length or comes chunked; a body that arrived with
its headers is read without a timer and mapped as usual. No Kafka needed: the body is read
before anything publishes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from bridge.auth import Authenticator
from bridge.codec import Codec
from bridge.config import BridgeSettings, load_settings
from bridge.dedupe import RecentIds
from bridge.ingress import GAUGE_INTERVAL, INGRESS, Ingress, build_public_app, sample_gauges
from bridge.publisher import Publisher

REQUEST_TIMEOUT = 0.5
BODY = b'{"event":"create","time":1749581447,"object":"conversationevent"}'


def _settings() -> BridgeSettings:
    return load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:1", "publish_timeout_seconds": 0.2},
        ingress={"request_timeout_seconds": REQUEST_TIMEOUT},
        auth={"token": "timeouts-test-token"},
        apizee={"base_url": None},
    )


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    settings = _settings()
    ingress = Ingress(
        settings=settings,
        publisher=Publisher(
            settings.kafka, Codec(), max_body_bytes=settings.ingress.max_body_bytes
        ),
        authenticator=Authenticator(settings.auth),
        dedupe=RecentIds(60.0, 1000),
    )
    test_server = TestServer(build_public_app(ingress), host="127.0.0.1")
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


def _answers(status: str, reason: str) -> float:
    labels = {"status": status, "reason": reason}
    return REGISTRY.get_sample_value("apizee_bridge_webhook_requests_total", labels) or 0.0


async def _exchange(server: TestServer, head: bytes, parts: list[bytes]) -> tuple[bytes, float]:
    """Send `head`, then `parts` one per 0.2 s; the status line and when it came."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    started = time.monotonic()
    try:
        writer.write(head)
        await writer.drain()

        async def trickle() -> None:
            for part in parts:
                await asyncio.sleep(0.2)
                writer.write(part)
                await writer.drain()

        sender = asyncio.create_task(trickle())
        try:
            status_line = await asyncio.wait_for(reader.readline(), 10.0)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return status_line, time.monotonic() - started
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


def _head(server: TestServer, extra: str, *, token: bool = True) -> bytes:
    # With the token: a stranger is refused from its headers, before any body is read.
    auth = "X-Webhook-Token: timeouts-test-token\r\n" if token else ""
    return (
        f"POST {_settings().ingress.path} HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Content-Type: application/json\r\n{auth}{extra}\r\n"
    ).encode()


async def test_a_body_slower_than_the_request_timeout_is_answered_408(server: TestServer) -> None:
    before = _answers("408", "request_timeout")
    head = _head(server, f"Content-Length: {len(BODY)}\r\n") + BODY[:10]
    # The rest would come after 10 x 0.2 s, well past the timeout.
    parts = [BODY[10 + i : 11 + i] for i in range(10)]

    status_line, took = await _exchange(server, head, parts)

    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert REQUEST_TIMEOUT <= took < REQUEST_TIMEOUT + 1.5
    assert _answers("408", "request_timeout") == before + 1


async def test_a_chunked_body_slower_than_the_request_timeout_is_answered_408(
    server: TestServer,
) -> None:
    before = _answers("408", "request_timeout")
    head = _head(server, "Transfer-Encoding: chunked\r\n") + b"5\r\n" + BODY[:5] + b"\r\n"
    parts = [b"1\r\n" + BODY[5 + i : 6 + i] + b"\r\n" for i in range(10)]

    status_line, took = await _exchange(server, head, parts)

    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert REQUEST_TIMEOUT <= took < REQUEST_TIMEOUT + 1.5
    assert _answers("408", "request_timeout") == before + 1


async def test_a_body_that_came_with_its_headers_is_read_at_once(server: TestServer) -> None:
    # No credentials: refused by authentication at once, from the headers.
    before = _answers("401", "missing_credentials")
    head = _head(server, f"Content-Length: {len(BODY)}\r\n", token=False) + BODY

    status_line, took = await _exchange(server, head, [])

    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    assert took < REQUEST_TIMEOUT
    assert _answers("401", "missing_credentials") == before + 1


async def test_the_in_flight_gauge_is_sampled_from_the_count(server: TestServer) -> None:
    # Not updated per request: sampled every GAUGE_INTERVAL and on each scrape.
    app = server.app
    assert app is not None
    ingress = app[INGRESS]
    gauge = "apizee_bridge_webhooks_in_flight"
    ingress.in_flight = 3
    await asyncio.sleep(GAUGE_INTERVAL * 3)
    assert REGISTRY.get_sample_value(gauge) == 3
    ingress.in_flight = 0
    sample_gauges(ingress)
    assert REGISTRY.get_sample_value(gauge) == 0
    # After a request, back to 0 within an interval.
    head = _head(server, f"Content-Length: {len(BODY)}\r\n", token=False) + BODY
    status_line, _ = await _exchange(server, head, [])
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    assert ingress.in_flight == 0
    await asyncio.sleep(GAUGE_INTERVAL * 3)
    assert REGISTRY.get_sample_value(gauge) == 0
