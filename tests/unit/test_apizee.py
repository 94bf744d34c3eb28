"""The Apizee REST client (bridge/apizee.py) against a scripted local Apizee on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bridge.apizee import (
    ApizeeClient,
    CircuitBreaker,
    CircuitState,
    TokenBucket,
    parse_events_body,
    parse_retry_after,
)
from bridge.config import ApizeeSettings
from bridge.errors import (
    ApizeeAuthError,
    ApizeeError,
    ApizeeNotFoundError,
    ApizeeRequestError,
    ApizeeUnavailableError,
)
from bridge.models import Source, from_rest
from tests.unit.conftest import load_fixture
from tests.unit.strategies import json_values

SEED = load_fixture("seed_rest_example.json")
SEED_BODY = json.dumps(SEED).encode()
TOKEN = "s3cret-t0ken"
EPS = 0.03  # scheduling slack on loopback timings


# --- A scripted Apizee ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = SEED_BODY
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    at: float
    path: str
    authorization: str | None
    request_id: str | None = None


class FakeApizee:
    """Answers the n-th request with the n-th reply (the last one repeats); records requests."""

    def __init__(self) -> None:
        self.replies: list[Reply | Callable[[], Reply]] = [Reply()]
        self.seen: list[Seen] = []
        self.base_url = ""

    def script(self, *replies: Reply | Callable[[], Reply]) -> None:
        self.replies = list(replies)
        self.seen.clear()

    async def handle(self, request: web.Request) -> web.Response:
        headers = request.headers
        self.seen.append(
            Seen(
                time.monotonic(),
                request.path,
                headers.get("Authorization"),
                headers.get("X-Request-Id"),
            )
        )
        reply = self.replies[min(len(self.seen), len(self.replies)) - 1]
        if callable(reply):
            reply = reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    def gaps(self) -> list[float]:
        return [b.at - a.at for a, b in zip(self.seen, self.seen[1:], strict=False)]


@pytest.fixture
async def apizee() -> AsyncIterator[FakeApizee]:
    fake = FakeApizee()
    app = web.Application()
    app.router.add_get("/api/v3/tickets/{ticket_id}/events", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}/"
    yield fake
    await runner.cleanup()


def make_settings(base_url: str, **overrides: Any) -> ApizeeSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "token": TOKEN,
        "request_timeout_seconds": 2.0,
        "rate_limit_per_second": 1000.0,
        "rate_limit_burst": 100,
        "max_retries": 2,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "circuit_failure_threshold": 100,
        "circuit_open_seconds": 0.2,
    }
    values.update(overrides)
    return ApizeeSettings(**values)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"apizee_bridge_{name}", labels) or 0.0


async def wait_until(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --- Success, auth header, token file -------------------------------------------------------


async def test_seed_example_is_fetched_and_validated(apizee: FakeApizee) -> None:
    before = sample("apizee_requests_total", status="200")
    async with ApizeeClient(make_settings(apizee.base_url)) as client:
        result = await client.fetch_events(361)
    assert [s.path for s in apizee.seen] == ["/api/v3/tickets/361/events"]
    assert apizee.seen[0].authorization == f"Bearer {TOKEN}"
    assert result.ticket_id == 361
    assert [item.id for item in result.items] == [56473, 56474, 56475]
    assert result.invalid == ()
    assert result.unknown == ()
    assert abs(result.received_at_ms - time.time() * 1000) < 5000
    event = from_rest(result.items[2], result.ticket_id, result.received_at_ms)
    assert event.source is Source.POLLER
    assert event.attributes == {"mediaId": 342432}
    assert sample("apizee_requests_total", status="200") == before + 1
    assert REGISTRY.get_sample_value(
        "apizee_bridge_apizee_request_duration_seconds_count", {"status": "200"}
    )


async def test_base_url_path_prefix_is_kept(apizee: FakeApizee) -> None:
    app = web.Application()
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=b"[]")

    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with ApizeeClient(make_settings(f"http://{host}:{port}/apizee/")) as client:
            assert (await client.fetch_events(7)).items == ()
    finally:
        await runner.cleanup()
    assert seen == ["/apizee/api/v3/tickets/7/events"]


async def test_rotated_token_file_is_picked_up(apizee: FakeApizee, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    settings = make_settings(apizee.base_url, token=None, token_file=token_file)
    with structlog.testing.capture_logs() as logs:
        async with ApizeeClient(settings) as client:
            await client.fetch_events(1)
            token_file.write_text("second-token-longer\n")
            await client.fetch_events(1)
            token_file.unlink()  # a missing file keeps the last good token, logged once
            await client.fetch_events(1)
            await client.fetch_events(1)
            token_file.write_text("third\r\n")
            await client.fetch_events(1)
    assert [s.authorization for s in apizee.seen] == [
        "Bearer first-token",
        "Bearer second-token-longer",
        "Bearer second-token-longer",
        "Bearer second-token-longer",
        "Bearer third",
    ]
    problems = [e for e in logs if e["event"] == "apizee_token_file_problem"]
    assert len(problems) == 1
    assert "first-token" not in repr(logs)
    assert "second-token" not in repr(logs)


# --- 429 and Retry-After --------------------------------------------------------------------


def test_retry_after_values_are_parsed() -> None:
    now = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("Mon, 10 Mar 2025 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Mon, 10 Mar 2025 11:00:00 GMT", now) == 0.0
    for garbled in (None, "", "soon", "-5", "nan", "inf", "1e999", "Mon, 99 Foo 2025"):
        assert parse_retry_after(garbled, now) is None, garbled


async def test_429_retry_after_seconds_is_honoured(apizee: FakeApizee) -> None:
    apizee.script(Reply(429, b"", {"Retry-After": "0.3"}), Reply())
    waits_before = sample("apizee_rate_limit_waits_total")
    async with ApizeeClient(make_settings(apizee.base_url, backoff_max_seconds=5)) as client:
        result = await client.fetch_events(1)
    assert len(result.items) == 3
    assert len(apizee.seen) == 2
    assert apizee.gaps()[0] >= 0.3 - EPS
    assert sample("apizee_rate_limit_waits_total") == waits_before + 1


async def test_429_retry_after_http_date_is_honoured(apizee: FakeApizee) -> None:
    expected: list[float] = []

    def rate_limited() -> Reply:
        # An HTTP-date has whole seconds: the next second but one is 1 to 2 s away.
        now = datetime.now(UTC)
        until = now.replace(microsecond=0) + timedelta(seconds=2)
        expected.append((until - now).total_seconds())
        return Reply(429, b"", {"Retry-After": format_datetime(until, usegmt=True)})

    apizee.script(rate_limited, Reply())
    async with ApizeeClient(make_settings(apizee.base_url, backoff_max_seconds=5)) as client:
        await client.fetch_events(1)
    assert len(apizee.seen) == 2
    assert apizee.gaps()[0] >= expected[0] - EPS


async def test_429_wait_is_capped_and_garbled_header_backs_off(apizee: FakeApizee) -> None:
    apizee.script(
        Reply(429, b"", {"Retry-After": "3600"}), Reply(429, b"", {"Retry-After": "later"}), Reply()
    )
    settings = make_settings(apizee.base_url, backoff_initial_seconds=0.1, backoff_max_seconds=0.2)
    async with ApizeeClient(settings) as client:
        await client.fetch_events(1)
    capped, backoff = apizee.gaps()
    assert 0.2 - EPS <= capped < 1.0
    assert 0.1 - EPS <= backoff < 1.0  # second retry: equal jitter in [0.1, 0.2]


async def test_429_pauses_every_caller(apizee: FakeApizee) -> None:
    apizee.script(Reply(429, b"", {"Retry-After": "0.4"}), Reply())
    async with ApizeeClient(make_settings(apizee.base_url, backoff_max_seconds=5)) as client:
        first = asyncio.create_task(client.fetch_events(1))
        await wait_until(lambda: client.rate_limiter.paused_until > time.monotonic())
        others = [asyncio.create_task(client.fetch_events(t)) for t in (2, 3)]
        await asyncio.gather(first, *others)
    rate_limited_at = apizee.seen[0].at
    assert len(apizee.seen) == 4
    assert all(s.at >= rate_limited_at + 0.4 - EPS for s in apizee.seen[1:])


async def test_429_on_every_attempt_is_unavailable(apizee: FakeApizee) -> None:
    apizee.script(Reply(429, b"", {"Retry-After": "0"}))
    async with ApizeeClient(make_settings(apizee.base_url, max_retries=1)) as client:
        with pytest.raises(ApizeeUnavailableError) as caught:
            await client.fetch_events(1)
        assert client.circuit.state is CircuitState.CLOSED
    assert caught.value.kind == "rate_limited"
    assert caught.value.status == 429
    assert len(apizee.seen) == 2


# --- 5xx, timeouts, connection errors: backoff and retries ----------------------------------


async def test_5xx_is_retried_with_backoff_then_succeeds(apizee: FakeApizee) -> None:
    apizee.script(Reply(503, b"down"), Reply(500, b"oops"), Reply())
    before = sample("apizee_requests_total", status="5xx")
    settings = make_settings(apizee.base_url, backoff_initial_seconds=0.1, backoff_max_seconds=1)
    async with ApizeeClient(settings) as client:
        result = await client.fetch_events(1)
    assert len(result.items) == 3
    first, second = apizee.gaps()
    # Equal jitter: retry n waits between half and all of initial * 2**(n-1).
    assert 0.05 - EPS <= first <= 0.1 + 0.1
    assert 0.1 - EPS <= second <= 0.2 + 0.1
    assert sample("apizee_requests_total", status="5xx") == before + 2


async def test_one_request_id_per_fetch_sent_on_every_attempt(apizee: FakeApizee) -> None:
    # Dead letters of the poller carry it (docs/operations.md "Dead letters"): Apizee's logs can be
    # searched for the request that listed a malformed item.
    apizee.script(Reply(503, b"down"), Reply())
    async with ApizeeClient(make_settings(apizee.base_url)) as client:
        first = await client.fetch_events(1)
        second = await client.fetch_events(1)
    sent = [s.request_id for s in apizee.seen]
    assert sent == [first.request_id, first.request_id, second.request_id]
    assert first.request_id != second.request_id
    assert re.fullmatch(r"[0-9a-f]{32}", first.request_id)


async def test_exhausted_retries_raise_unavailable(apizee: FakeApizee) -> None:
    apizee.script(Reply(502, b"bad gateway"))
    async with ApizeeClient(make_settings(apizee.base_url, max_retries=2)) as client:
        with pytest.raises(ApizeeUnavailableError) as caught:
            await client.fetch_events(1)
    assert caught.value.kind == "server_error"
    assert caught.value.status == 502
    assert len(apizee.seen) == 3


async def test_timeout_is_retried_then_unavailable(apizee: FakeApizee) -> None:
    apizee.script(Reply(delay=0.5))
    before = sample("apizee_requests_total", status="timeout")
    settings = make_settings(apizee.base_url, request_timeout_seconds=0.1, max_retries=1)
    started = time.monotonic()
    async with ApizeeClient(settings) as client:
        with pytest.raises(ApizeeUnavailableError) as caught:
            await client.fetch_events(1)
    assert time.monotonic() - started < 0.45
    assert caught.value.kind == "timeout"
    assert len(apizee.seen) == 2
    assert sample("apizee_requests_total", status="timeout") == before + 2


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    before = sample("apizee_requests_total", status="connection_error")
    async with ApizeeClient(make_settings(f"http://127.0.0.1:{port}", max_retries=1)) as client:
        with pytest.raises(ApizeeUnavailableError) as caught:
            await client.fetch_events(1)
    assert caught.value.kind == "connection_error"
    assert sample("apizee_requests_total", status="connection_error") == before + 2


# --- 4xx: reported, not retried -------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_is_not_retried_and_logged_once(apizee: FakeApizee, status: int) -> None:
    apizee.script(Reply(status, b'{"error":"nope"}'))
    before = sample("apizee_requests_total", status=str(status))
    with structlog.testing.capture_logs() as logs:
        async with ApizeeClient(make_settings(apizee.base_url)) as client:
            for ticket in (1, 2):
                with pytest.raises(ApizeeAuthError) as caught:
                    await client.fetch_events(ticket)
                assert caught.value.status == status
                assert caught.value.kind == "auth_failed"
            assert client.circuit.state is CircuitState.CLOSED
    assert len(apizee.seen) == 2  # one request per call, no retry
    assert sample("apizee_requests_total", status=str(status)) == before + 2
    auth_logs = [e for e in logs if e["event"] == "apizee_auth_failed"]
    assert len(auth_logs) == 1
    assert auth_logs[0]["log_level"] == "error"
    assert TOKEN not in repr(logs)


async def test_unknown_ticket_is_not_found(apizee: FakeApizee) -> None:
    apizee.script(Reply(404, b""))
    async with ApizeeClient(make_settings(apizee.base_url)) as client:
        with pytest.raises(ApizeeNotFoundError):
            await client.fetch_events(999)
    assert len(apizee.seen) == 1


async def test_other_4xx_is_rejected_without_retry(apizee: FakeApizee) -> None:
    apizee.script(Reply(400, b"bad"))
    async with ApizeeClient(make_settings(apizee.base_url)) as client:
        with pytest.raises(ApizeeRequestError) as caught:
            await client.fetch_events(1)
    assert caught.value.status == 400
    assert len(apizee.seen) == 1


# --- Circuit breaker ------------------------------------------------------------------------


async def test_circuit_opens_fails_fast_half_opens_and_closes(apizee: FakeApizee) -> None:
    apizee.script(Reply(500, b""))
    settings = make_settings(
        apizee.base_url, circuit_failure_threshold=2, circuit_open_seconds=0.2, max_retries=0
    )
    opens = sample("apizee_circuit_opens_total")
    async with ApizeeClient(settings) as client:
        for _ in range(2):
            with pytest.raises(ApizeeUnavailableError, match="server_error"):
                await client.fetch_events(1)
        assert client.circuit.state is CircuitState.OPEN
        assert sample("apizee_circuit_state") == 2
        assert sample("apizee_circuit_opens_total") == opens + 1
        with pytest.raises(ApizeeUnavailableError) as caught:
            await client.fetch_events(1)
        assert caught.value.kind == "circuit_open"
        assert len(apizee.seen) == 2  # failed fast: nothing reached Apizee

        await asyncio.sleep(0.2)  # the open period itself is what is tested
        apizee.script(Reply(delay=0.1))
        trial = asyncio.create_task(client.fetch_events(1))
        await wait_until(lambda: len(apizee.seen) == 1)
        assert client.circuit.state is CircuitState.HALF_OPEN
        assert sample("apizee_circuit_state") == 1
        with pytest.raises(ApizeeUnavailableError, match="circuit"):
            await client.fetch_events(2)  # only one trial at a time
        assert len((await trial).items) == 3
        assert client.circuit.state is CircuitState.CLOSED
        assert sample("apizee_circuit_state") == 0
        await client.fetch_events(3)
    assert len(apizee.seen) == 2


async def test_failed_trial_reopens_the_circuit(apizee: FakeApizee) -> None:
    apizee.script(Reply(503, b""))
    settings = make_settings(
        apizee.base_url, circuit_failure_threshold=1, circuit_open_seconds=0.1, max_retries=3
    )
    async with ApizeeClient(settings) as client:
        with pytest.raises(ApizeeUnavailableError):
            await client.fetch_events(1)
        assert len(apizee.seen) == 4
        await asyncio.sleep(0.1)
        with pytest.raises(ApizeeUnavailableError) as caught:
            await client.fetch_events(1)
        assert caught.value.kind == "server_error"
        assert len(apizee.seen) == 5  # the trial is one request, not retried
        assert client.circuit.state is CircuitState.OPEN
        with pytest.raises(ApizeeUnavailableError, match="circuit"):
            await client.fetch_events(1)
    assert len(apizee.seen) == 5


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_state_machine() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, open_seconds=10, clock=clock)
    for _ in range(2):
        assert breaker.admit() is False
        breaker.record_failure(trial=False)
    breaker.record_success(trial=False)  # a success resets the count
    for _ in range(3):
        breaker.admit()
        breaker.record_failure(trial=False)
    assert breaker.state is CircuitState.OPEN
    clock.now += 9.9
    with pytest.raises(ApizeeUnavailableError):
        breaker.admit()
    clock.now += 0.1
    assert breaker.admit() is True
    with pytest.raises(ApizeeUnavailableError):
        breaker.check(trial=False)  # a call from before the outage stops retrying
    breaker.check(trial=True)
    breaker.release(trial=True)  # a cancelled trial lets the next call be the trial
    assert breaker.admit() is True
    breaker.record_success(trial=True)
    assert breaker.state is CircuitState.CLOSED


# --- Rate limit -----------------------------------------------------------------------------


async def test_rate_limit_spaces_requests(apizee: FakeApizee) -> None:
    apizee.script(Reply(body=b"[]"))
    settings = make_settings(apizee.base_url, rate_limit_per_second=20, rate_limit_burst=2)
    waits = sample("apizee_rate_limit_waits_total")
    wait_seconds = sample("apizee_rate_limit_wait_seconds_total")
    async with ApizeeClient(settings) as client:
        await asyncio.gather(*(client.fetch_events(t) for t in range(8)))
    span = apizee.seen[-1].at - apizee.seen[0].at
    assert span >= (8 - 2) / 20 - EPS
    assert sample("apizee_rate_limit_waits_total") - waits >= 6
    assert sample("apizee_rate_limit_wait_seconds_total") - wait_seconds >= 0.3


async def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=50, burst=3)
    assert [await bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    waited = await bucket.acquire()
    assert 0.02 - EPS / 3 <= waited < 0.2
    bucket.pause_for(0.1)
    bucket.pause_for(0.01)  # a shorter pause does not shorten the longer one
    assert await bucket.acquire() >= 0.1 - EPS / 3


# --- Malformed bodies: DLQ / unknown, never exceptions --------------------------------------


async def test_body_that_is_not_json_is_one_invalid_item(apizee: FakeApizee) -> None:
    apizee.script(Reply(body=b"<html>maintenance</html>"))
    before = sample("apizee_invalid_items_total", kind="invalid_json")
    async with ApizeeClient(make_settings(apizee.base_url)) as client:
        result = await client.fetch_events(1)
    assert result.items == ()
    (bad,) = result.invalid
    assert bad.kind == "invalid_json"
    assert bad.raw == b"<html>maintenance</html>"
    assert bad.index is None
    assert "not JSON" in bad.reason
    assert sample("apizee_invalid_items_total", kind="invalid_json") == before + 1


async def test_body_that_is_not_a_list_is_one_invalid_item(apizee: FakeApizee) -> None:
    apizee.script(Reply(body=b'{"events": []}'))
    async with ApizeeClient(make_settings(apizee.base_url)) as client:
        result = await client.fetch_events(1)
    (bad,) = result.invalid
    assert bad.kind == "invalid_envelope"
    assert bad.raw == b'{"events": []}'
    assert "expected a JSON array of events, got an object" in bad.reason


async def test_bad_items_are_invalid_and_unknown_types_are_kept(apizee: FakeApizee) -> None:
    unknown = {"id": 9, "eventType": "brand.newThing", "timestamp": 1, "conversationId": 2}
    wrong = {"id": "56473", "eventType": "media.pictureTaken", "timestamp": 1}
    body = [42, wrong, SEED[0], unknown]
    apizee.script(Reply(body=json.dumps(body).encode()))
    before = sample("apizee_invalid_items_total", kind="invalid_envelope")
    async with ApizeeClient(make_settings(apizee.base_url)) as client:
        result = await client.fetch_events(1)
    assert [item.id for item in result.items] == [56473, 9]
    assert [item.id for item in result.unknown] == [9]
    assert from_rest(result.unknown[0], 1, 0).category == "unknown"
    assert [bad.index for bad in result.invalid] == [0, 1]
    assert [orjson.loads(bad.raw) for bad in result.invalid] == [42, wrong]
    assert "id" in result.invalid[1].reason
    assert "conversationId" in result.invalid[1].reason
    assert sample("apizee_invalid_items_total", kind="invalid_envelope") == before + 2


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_body_is_split_without_raising(value: Any) -> None:
    body = json.dumps(value).encode()
    items, invalid = parse_events_body(body)
    if isinstance(value, list):
        assert len(items) + len(invalid) == len(value)
        for bad in invalid:
            assert bad.index is not None
            # Python's own parser: integers of any size stay exact, as the bridge must keep them.
            assert json.loads(bad.raw) == value[bad.index]
    else:
        assert not items
        assert len(invalid) == 1
        assert invalid[0].raw == body


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_body_is_split_without_raising(body: bytes) -> None:
    items, invalid = parse_events_body(body)
    assert len(items) + len(invalid) >= 0


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    status=st.sampled_from([200, 200, 200, 400, 401, 404, 500]),
    body=json_values.map(lambda v: json.dumps(v).encode())
    | st.lists(json_values).map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=32),
)
async def test_random_responses_raise_only_documented_errors(
    apizee: FakeApizee, status: int, body: bytes
) -> None:
    apizee.script(Reply(status, body))
    settings = make_settings(apizee.base_url, max_retries=0, circuit_open_seconds=0.01)
    async with ApizeeClient(settings) as client:
        try:
            result = await client.fetch_events(5)
        except ApizeeError as exc:
            assert status != 200
            assert exc.kind in {"auth_failed", "not_found", "rejected", "server_error"}
        else:
            assert status == 200
            assert result.ticket_id == 5


# --- Lifecycle ------------------------------------------------------------------------------


async def test_lifecycle_is_explicit() -> None:
    with pytest.raises(ValueError, match="BASE_URL"):
        ApizeeClient(ApizeeSettings())
    client = ApizeeClient(make_settings("http://127.0.0.1:9"))
    with pytest.raises(RuntimeError, match="start"):
        await client.fetch_events(1)
    await client.start()
    await client.close()
    await client.close()  # idempotent
