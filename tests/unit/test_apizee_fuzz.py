"""Fuzz of the Apizee REST client against malformed answers.

`parse_events_body` on generated bodies (lists of good and deliberately broken items, broken
JSON, invalid UTF-8, other JSON types): it never raises, every item of a list comes back
either valid or invalid at its index, and the generator's own verdict on each item holds.
`ApizeeClient.fetch_events` against a raw TCP server that writes generated HTTP answers
(bad status lines, wrong lengths, broken chunking, bogus encodings, redirect loops, random
bytes): it returns a result or raises an ApizeeError subclass, nothing else. And the
simulator's malformed modes, fetched through the client: classified, nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.apizee import ApizeeClient, TicketEvents, parse_events_body
from bridge.catalog import EVENTS, INT64_MAX
from bridge.config import ApizeeSettings
from bridge.devtools.simulator import INJECTED_ID_BASE, MALFORMED_MODES, RestFaults, Simulator
from bridge.errors import ApizeeError, ApizeeUnavailableError
from tests.unit.strategies import json_values, rest_items

# --- Generated bodies -----------------------------------------------------------------------

# Values that a strict RestEvent refuses in each field (an item with one is invalid).
_BAD_FIELD_VALUES: dict[str, list[Any]] = {
    "id": ["56473", -1, INT64_MAX + 1, 1.5, True, None, [], {}],
    "eventType": ["", "x" * 256, 5, None, [], {}],
    "timestamp": ["2025-03-10T15:45:30Z", -1, 1e20, True, None, []],
    "conversationId": ["1", -5, 2.5, False, None, {}],
    "data": [[], "x", 5, True],
}
_REQUIRED = ("id", "eventType", "timestamp", "conversationId")


@st.composite
def items(draw: st.DrawFn) -> tuple[Any, bool]:
    """(an item, whether it is valid), the verdict known by construction."""
    item = draw(rest_items())
    how = draw(st.sampled_from(["valid", "unknown_type", "wrong", "missing", "not_object"]))
    if how == "valid":
        if draw(st.booleans()):
            item["data"] = None
        return item, True
    if how == "unknown_type":
        item["eventType"] = draw(st.sampled_from(["whiteboard.drawn", "x.y", "Ω.é"]))
        item["data"] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        item[draw(st.sampled_from(["extraTop", "livemode"]))] = draw(json_values)
        return item, True
    if how == "wrong":
        name = draw(st.sampled_from(sorted(_BAD_FIELD_VALUES)))
        item[name] = draw(st.sampled_from(_BAD_FIELD_VALUES[name]))
        return item, False
    if how == "missing":
        del item[draw(st.sampled_from(_REQUIRED))]
        return item, False
    return draw(json_values.filter(lambda v: not isinstance(v, dict))), False


def _nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


def _nested_text(depth: int) -> bytes:
    """`_nested(depth)` as JSON, written without recursion (json.dumps stops near 1000)."""
    opening = b"".join(b"[" if level % 2 else b'{"d":' for level in reversed(range(depth)))
    closing = b"".join(b"]" if level % 2 else b"}" for level in range(depth))
    return opening + b"0" + closing


@dataclass(frozen=True)
class Body:
    raw: bytes
    # For a JSON list: each item's verdict (True valid); None when the body is not a list.
    verdicts: tuple[bool, ...] | None


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    shape = draw(
        st.sampled_from(
            ["list", "list", "list", "not_list", "truncated", "bad_utf8", "bytes", "nested"]
        )
    )
    if shape == "bytes":
        raw = draw(st.binary(max_size=200))
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Body(raw, None)
        if isinstance(parsed, list):
            return Body(raw, tuple(False for _ in parsed))
        return Body(raw, None)
    if shape == "not_list":
        value = draw(json_values.filter(lambda v: not isinstance(v, list)))
        return Body(json.dumps(value).encode(), None)
    if shape == "nested":
        # Well below any JSON parser's depth limit (deeper: the test after this one).
        depth = draw(st.integers(2, 100))
        return Body(json.dumps([_nested(depth)]).encode(), (False,))
    pairs = draw(st.lists(items(), max_size=8))
    raw = json.dumps([item for item, _ in pairs], ensure_ascii=False).encode()
    if shape == "truncated":
        return Body(raw[: draw(st.integers(0, len(raw) - 1))], None)
    if shape == "bad_utf8":
        at = draw(st.integers(1, len(raw) - 1))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
        return Body(raw[:at] + bad + raw[at:], None)
    return Body(raw, tuple(ok for _, ok in pairs))


def _check_split(body: Body, valid: list[Any] | tuple[Any, ...], invalid: Any) -> None:
    if body.verdicts is None:
        assert not valid
        (only,) = invalid
        assert only.index is None
        assert only.raw == body.raw  # the whole body, as it came
        assert only.kind in ("invalid_json", "invalid_envelope")
        return
    assert len(valid) + len(invalid) == len(body.verdicts)
    bad_at = [bad.index for bad in invalid]
    assert bad_at == [i for i, ok in enumerate(body.verdicts) if not ok], body.raw[:300]
    parsed = orjson.loads(body.raw)
    for bad in invalid:
        assert bad.kind == "invalid_envelope"
        assert bad.reason
        again = orjson.loads(bad.raw)
        assert again == parsed[bad.index]
    assert [v.id for v in valid] == [parsed[i]["id"] for i, ok in enumerate(body.verdicts) if ok]


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_generated_bodies_are_split_without_raising_and_nothing_is_lost(body: Body) -> None:
    valid, invalid = parse_events_body(body.raw)
    _check_split(body, valid, invalid)


@pytest.mark.parametrize("depth", [255, 300, 1000])
def test_deeply_nested_item_is_an_invalid_item_not_an_exception(depth: int) -> None:
    raw = b"[" + _nested_text(depth) + b',{"not":"valid"}]'
    valid, invalid = parse_events_body(raw)
    assert valid == []
    # Nothing lost either way: both items dead-lettered, or the whole body as one.
    if [bad.index for bad in invalid] != [None]:
        _check_split(Body(raw, (False, False)), valid, invalid)
    else:
        assert invalid[0].raw == raw


def test_integer_beyond_64_bits_in_item_data_is_kept_exactly() -> None:
    item = {
        "id": 7,
        "eventType": "media.pictureTaken",
        "timestamp": 1749581447,
        "conversationId": 3,
        "data": {"mediaId": 5, "checksum": 2**70},
    }
    (valid,), invalid = parse_events_body(json.dumps([item]).encode())
    assert invalid == []
    assert valid.data == {"mediaId": 5, "checksum": 2**70}
    assert type(valid.data["checksum"]) is int


# --- The client against raw HTTP answers ----------------------------------------------------


class RawServer:
    """Answers every connection with `answer` (raw bytes), then closes it."""

    def __init__(self) -> None:
        self.answer = b""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer)
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


_STATUS_LINES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 201 Created",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 302 Found",
    b"HTTP/1.1 400 Bad Request",
    b"HTTP/1.1 401 Unauthorized",
    b"HTTP/1.1 404 Not Found",
    b"HTTP/1.1 418 Teapot",
    b"HTTP/1.1 429 Too Many",
    b"HTTP/1.1 500 Oops",
    b"HTTP/1.1 503 Down",
    b"HTTP/1.1 999 Weird",
    b"HTTP/1.1 abc Nope",
    b"HTTP/1.0 200",
    b"HTTP/2 200",
    b"garbage",
    b"",
]


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, int | None, Body]:
    """(raw HTTP answer, its status if well-formed, the body it carries)."""
    body = draw(bodies())
    status_line = draw(st.sampled_from(_STATUS_LINES))
    framing = draw(
        st.sampled_from(
            ["length", "length", "short", "long", "bad_length", "none", "chunked", "bad_chunks"]
        )
    )
    headers = [b"Content-Type: " + draw(st.sampled_from([b"application/json", b"text/html"]))]
    payload = body.raw
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(payload))
    elif framing == "short":
        headers.append(b"Content-Length: %d" % max(0, len(payload) - 3))
    elif framing == "long":
        headers.append(b"Content-Length: %d" % (len(payload) + 50))
    elif framing == "bad_length":
        headers.append(b"Content-Length: " + draw(st.sampled_from([b"-1", b"abc", b"1e3", b""])))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n" % len(payload) + payload + b"\r\n" if payload else b"") + b"0\r\n\r\n"
    elif framing == "bad_chunks":
        headers.append(b"Transfer-Encoding: chunked")
        payload = b"zz\r\n" + payload
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    b"Content-Encoding: gzip",
                    b"Content-Encoding: br",
                    b"Content-Encoding: bogus",
                    b"Retry-After: soon",
                    b"Retry-After: -5",
                    b"Retry-After: 0",
                    b"Retry-After: 99999999999999999999",
                    b"Location: /api/v3/tickets/5/events",
                    b"Location: http://127.0.0.1:1/",
                    b"Location: ::::",
                    b"X-Broken-Header",
                    b"Set-Cookie: a=" + b"x" * 9000,
                ]
            ),
            max_size=3,
            unique=True,
        )
    )
    raw = status_line + b"\r\n" + b"\r\n".join(headers + extra) + b"\r\n\r\n" + payload
    dropped = draw(st.integers(0, 9)) == 0
    if dropped:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]  # the connection drops mid-answer
    well_formed = status_line == b"HTTP/1.1 200 OK" and framing == "length" and not extra
    well_formed = well_formed and not dropped
    return raw, 200 if well_formed else None, body


def _settings(port: int) -> ApizeeSettings:
    return ApizeeSettings(
        base_url=f"http://127.0.0.1:{port}",
        token="fuzz-apizee-token",
        request_timeout_seconds=1.0,
        rate_limit_per_second=10_000.0,
        rate_limit_burst=10_000,
        max_retries=0,
        backoff_initial_seconds=0.001,
        backoff_max_seconds=0.002,
        circuit_failure_threshold=1_000_000,
        circuit_open_seconds=0.01,
    )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answer=answers())
async def test_client_answers_with_a_result_or_an_apizee_error_only(
    answer: tuple[bytes, int | None, Body],
) -> None:
    raw, well_formed, body = answer
    async with raw_server() as server, ApizeeClient(_settings(server.port)) as client:
        server.answer = raw
        try:
            result = await client.fetch_events(5)
        except ApizeeError as exc:
            assert exc.kind  # a bounded label for metrics
            assert well_formed is None, f"a plain 200 raised {exc!r}"
            if isinstance(exc, ApizeeUnavailableError):
                assert exc.kind in ApizeeUnavailableError.KINDS
            return
    assert isinstance(result, TicketEvents)
    assert result.ticket_id == 5
    if well_formed is not None:
        _check_split(body, result.items, result.invalid)
    else:
        # Whatever came through: every item is valid or invalid, none in between.
        assert all(bad.raw is not None for bad in result.invalid)


# --- The simulator's malformed modes, through the client -----------------------------------


@pytest.mark.parametrize("mode", MALFORMED_MODES)
async def test_simulator_malformed_answers_are_classified_and_nothing_is_lost(mode: str) -> None:
    faults = RestFaults(p_malformed=1.0, malformed_modes=(mode,))  # type: ignore[arg-type]
    async with Simulator(tickets=6, seed=7, faults=faults) as sim:
        api = ApizeeSettings(
            base_url=sim.base_url,
            token=sim.config.rest_token,
            max_retries=0,
            rate_limit_per_second=1000.0,
            rate_limit_burst=100,
        )
        async with ApizeeClient(api) as client:
            for ticket in sim.tickets:
                result = await client.fetch_events(ticket.ticket_id)
                recorded = ticket.event_ids
                got = [item.id for item in result.items]
                if mode in ("not_json", "truncated", "not_list"):
                    # The whole body is one dead letter; the poller retries the ticket later.
                    assert got == []
                    (bad,) = result.invalid
                    assert bad.index is None
                    assert bad.kind == (
                        "invalid_envelope" if mode == "not_list" else "invalid_json"
                    )
                elif mode == "wrong_shape":
                    (bad,) = result.invalid
                    assert bad.index is not None
                    assert len(got) + 1 == len(recorded)
                    assert len(set(recorded) - set(got)) == 1
                else:
                    assert result.invalid == ()
                    assert sorted(got) == sorted([*recorded, INJECTED_ID_BASE + ticket.ticket_id])
                    assert [i.id for i in result.unknown] == [INJECTED_ID_BASE + ticket.ticket_id]
                    assert all(i.eventType in EVENTS for i in result.items if i.id in recorded)
