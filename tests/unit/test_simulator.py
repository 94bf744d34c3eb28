"""The Apizee simulator: realistic, valid payloads over all 32 types; the REST endpoint with its
auth and failure modes; the webhook sender's losses, retries, outcomes and signatures."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from bridge.auth import Authenticator, AuthError
from bridge.catalog import EVENTS, TERMINAL_EVENT_TYPES
from bridge.cli import build_parser
from bridge.config import AuthSettings
from bridge.devtools.simulator import (
    COVERAGE_MIN_TICKETS,
    EVENT_CODES,
    INJECTED_ID_BASE,
    MALFORMED_MODES,
    FaultWindow,
    Outcome,
    RestFaults,
    SimEvent,
    Simulator,
    SimulatorConfig,
    WebhookConfig,
    WebhookSender,
    configs_from_args,
    generate_tickets,
    parse_window,
    run_simulation,
)
from bridge.errors import InvalidEventError
from bridge.models import from_rest, from_webhook, parse_rest_item, parse_webhook

START = 1_741_621_530.0
TOKEN = "rest-token-0123456789"


def config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {"tickets": 20, "start_time": START, "rest_token": TOKEN}
    values.update(overrides)
    return SimulatorConfig(**values)


def events_of(**overrides: Any) -> list[SimEvent]:
    tickets = generate_tickets(config(**overrides))
    return sorted((e for t in tickets for e in t.events), key=lambda e: e.event_id)


async def get_events(
    session: aiohttp.ClientSession, sim: Simulator, ticket_id: int, token: str | None = TOKEN
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    url = f"{sim.base_url}/api/v3/tickets/{ticket_id}/events"
    async with session.get(url, headers=headers) as response:
        return response.status, response.headers, await response.read()


class Receiver:
    """A tiny bridge stand-in: records each POST, answers what `respond` says."""

    def __init__(self, respond: Callable[[bytes, int], web.Response] | None = None) -> None:
        self.respond = respond or (lambda body, n: web.json_response({"status": "accepted"}))
        self.bodies: list[bytes] = []
        self.headers: list[CIMultiDictProxy[str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        self.headers.append(request.headers)
        return self.respond(body, len(self.bodies))

    def event_ids(self) -> list[int]:
        return [orjson.loads(b)["objectId"] for b in self.bodies]


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/webhooks", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks"
    try:
        yield receiver
    finally:
        await runner.cleanup()


# --- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("tickets", [COVERAGE_MIN_TICKETS, 7, 20, 93])
@pytest.mark.parametrize("seed", [1, 2, 99])
def test_every_event_type_occurs(tickets: int, seed: int) -> None:
    assert {e.event_type for e in events_of(tickets=tickets, seed=seed)} == set(EVENTS)


def test_generation_is_deterministic_for_a_seed() -> None:
    first = [e.webhook_body() for e in events_of(seed=5)]
    assert first == [e.webhook_body() for e in events_of(seed=5)]
    assert first != [e.webhook_body() for e in events_of(seed=6)]


def test_ids_grow_with_time_and_tickets_are_coherent() -> None:
    tickets = generate_tickets(config(tickets=60))
    events = sorted((e for t in tickets for e in t.events), key=lambda e: e.event_id)
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert len({t.ticket_id for t in tickets}) == len(tickets)
    assert len({t.conversation_id for t in tickets}) == len(tickets)
    for ticket in tickets:
        types = [e.event_type for e in ticket.events]
        assert types[0] == "ticket.new"
        assert types[-1] in TERMINAL_EVENT_TYPES
        assert sum(t in TERMINAL_EVENT_TYPES for t in types) == 1
        assert ticket.event_ids == sorted(ticket.event_ids)
        assert {e.conversation_id for e in ticket.events} == {ticket.conversation_id}
        assert {e.ticket_id for e in ticket.events} == {ticket.ticket_id}
        if "session.established" in types:
            assert types.index("ticket.invitationAccepted") < types.index("session.established")
    assert all(e.event_code == EVENT_CODES[e.event_type] for e in events)
    assert EVENT_CODES["media.OCRDone"] == 41  # the seed's example


def test_attributes_are_shaped_like_the_seed(seed_props: dict[str, dict[str, Any]]) -> None:
    events = events_of(tickets=80)
    for event in events:
        example = seed_props[event.event_type]
        assert set(event.attributes) == set(example), event.event_type
        for role in ("agent", "requestor"):
            if role in example:
                assert set(event.attributes[role]) == set(example[role])
                assert all(isinstance(v, str) for v in event.attributes[role].values())
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event.event_type, []).append(event.attributes)
    assert all(isinstance(a["geoloc"]["lat"], float) for a in by_type["geo.ansAllowed"])
    assert all(isinstance(a["mediaId"], int) for a in by_type["media.pictureTaken"])
    assert any("\n" in a["text"] for a in by_type["media.OCRDone"])
    persons = [a[r] for e in events for r in ("agent", "requestor") if r in (a := e.attributes)]
    assert any(p["phone"] == "" for p in persons)
    assert any(not p["firstname"].isascii() for p in persons)
    questions = [q for a in by_type["survey.answered"] for q in a["surveyAnswer"]["questions"]]
    assert all({"fr", "en"} <= set(q["label"]) for q in questions)
    assert {q["answer"] for q in questions} <= {"Not satisfied", "Satisfied", "Very satisfied"}
    changes = by_type["ticket.priorityChanged"]
    assert all(a["oldPriority"] != a["newPriority"] for a in changes)


def test_payloads_pass_the_bridge_edge_models() -> None:
    for event in events_of(tickets=60, unknown_rate=0.05):
        webhook = from_webhook(parse_webhook(orjson.dumps(event.webhook_body())), 0)
        rest = from_rest(parse_rest_item(orjson.loads(orjson.dumps(event.rest_item()))), 1, 0)
        for canonical in (webhook, rest):
            assert canonical.event_id == event.event_id
            assert canonical.event_type == event.event_type
            assert canonical.occurred_at_ms == event.timestamp * 1000
            if event.known:
                # Every attribute the simulator sends is one the catalog types.
                assert canonical.extra == {}, event.event_type
            else:
                assert canonical.category == "unknown"
                assert canonical.extra == event.attributes
        assert webhook.ticket_id == event.ticket_id
        assert webhook.event_code == event.event_code


def test_unknown_events_only_on_request() -> None:
    assert all(e.known for e in events_of(tickets=50))
    unknown = [e for e in events_of(tickets=50, unknown_rate=0.05) if not e.known]
    assert unknown
    assert {e.event_type for e in unknown} <= {
        "whiteboard.drawn",
        "chat.messageSent",
        "screen.shareStarted",
    }


# --- REST endpoint ---------------------------------------------------------------------------


async def test_rest_requires_the_bearer_token() -> None:
    async with Simulator(config()) as sim, aiohttp.ClientSession() as session:
        ticket = sim.ticket_ids()[0]
        for token in (None, "wrong", TOKEN + "x"):
            status, headers, body = await get_events(session, sim, ticket, token)
            assert status == 401
            assert headers["Content-Type"].startswith("application/json")
            assert "Bearer" in headers["WWW-Authenticate"]
            assert orjson.loads(body)["error"] == "unauthorized"
        status, _, body = await get_events(session, sim, ticket)
        assert status == 200
        assert [i["id"] for i in orjson.loads(body)] == sim.ids_by_ticket()[ticket]


async def test_rest_serves_items_like_the_seed() -> None:
    async with Simulator(config()) as sim, aiohttp.ClientSession() as session:
        for ticket in sim.tickets:
            status, _, body = await get_events(session, sim, ticket.ticket_id)
            assert status == 200
            items = orjson.loads(body)
            assert [i["id"] for i in items] == ticket.event_ids
            for item, event in zip(items, ticket.events, strict=True):
                assert set(item) == {"id", "eventType", "timestamp", "conversationId", "data"}
                assert item == event.rest_item()
                from_rest(parse_rest_item(item), ticket.ticket_id, 0)


async def test_rest_404s() -> None:
    async with Simulator(config()) as sim, aiohttp.ClientSession() as session:
        status, _, body = await get_events(session, sim, max(sim.ticket_ids()) + 1)
        assert status == 404
        assert orjson.loads(body)["error"] == "not_found"
        for bad in ("abc", "%C2%B2", "9" * 5000):
            async with session.get(
                f"{sim.base_url}/api/v3/tickets/{bad}/events",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response:
                assert response.status == 404


async def test_rest_lists_only_recorded_events() -> None:
    async with Simulator(config(manual=True)) as sim, aiohttp.ClientSession() as session:
        first = sim.events[0].ticket_id
        assert (await get_events(session, sim, first))[0] == 404  # not created yet
        sim.record(40)
        recorded = set(sim.recorded_ids())
        assert len(recorded) == 40
        for ticket, ids in sim.ids_by_ticket().items():
            status, _, body = await get_events(session, sim, ticket)
            shown = [i["id"] for i in orjson.loads(body)] if status == 200 else []
            assert shown == [i for i in ids if i in recorded]
            assert status == (200 if shown else 404)
        sim.record_all()
        assert sim.all_recorded
        status, _, body = await get_events(session, sim, first)
        assert [i["id"] for i in orjson.loads(body)] == sim.ids_by_ticket()[first]


async def test_paced_recording_follows_the_clock() -> None:
    async with Simulator(config(tickets=4, rate=400.0, start_time=None)) as sim:
        assert not sim.all_recorded
        seen = [e.event_id async for e in sim.recorded_events()]
        assert sim.all_recorded
        assert seen == sim.event_ids()
        assert abs(sim.events[-1].timestamp - time.time()) < 5


@pytest.mark.parametrize("form", ["delta", "date"])
async def test_429_carries_retry_after(form: str) -> None:
    faults = RestFaults(p_429=1.0, retry_after_seconds=3, retry_after_form=form)  # type: ignore[arg-type]
    async with Simulator(config(faults=faults)) as sim, aiohttp.ClientSession() as session:
        status, headers, body = await get_events(session, sim, sim.ticket_ids()[0])
        assert status == 429
        value = headers["Retry-After"]
        if form == "delta":
            assert value == "3"
        else:
            assert 1 <= parsedate_to_datetime(value).timestamp() - time.time() <= 5
        assert orjson.loads(body)["error"] == "too_many_requests"
        assert sim.rest.stats().by_fault == {"429": 1}


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        (RestFaults(p_500=1.0), 500),
        (RestFaults(p_502=1.0), 502),
        (RestFaults(p_503=1.0), 503),
    ],
)
async def test_server_errors(faults: RestFaults, status: int) -> None:
    async with Simulator(config(faults=faults)) as sim, aiohttp.ClientSession() as session:
        assert (await get_events(session, sim, sim.ticket_ids()[0]))[0] == status


async def test_fault_probabilities_and_request_log() -> None:
    faults = RestFaults(p_429=0.2, p_500=0.2)
    async with Simulator(config(faults=faults)) as sim, aiohttp.ClientSession() as session:
        ticket = sim.ticket_ids()[0]
        for _ in range(300):
            await get_events(session, sim, ticket)
        await get_events(session, sim, ticket, token=None)
        stats = sim.rest.stats()
        assert stats.total == 301 == len(sim.rest.requests)
        assert stats.by_ticket == {ticket: 301}
        assert 30 < stats.by_status[429] < 90
        assert 30 < stats.by_status[500] < 90
        assert stats.by_status[401] == 1
        assert stats.max_per_second >= 1
        assert sim.rest.max_in_window(60.0) == 301
        assert sim.rest.max_in_window(60.0, statuses=[401]) == 1


async def test_slow_answers_and_windows() -> None:
    windows = (FaultWindow(kind="outage", start=0.0, duration=0.4),)
    faults = RestFaults(p_slow=1.0, slow_seconds=0.2, windows=windows)
    async with Simulator(config(faults=faults)) as sim, aiohttp.ClientSession() as session:
        ticket = sim.ticket_ids()[0]
        # Outage: 503 even without credentials, as when the whole API is down.
        assert (await get_events(session, sim, ticket, token=None))[0] == 503
        await asyncio.sleep(0.45)
        started = time.monotonic()
        assert (await get_events(session, sim, ticket))[0] == 200
        assert time.monotonic() - started >= 0.2
        sim.rest.clear_faults()
        sim.rest.inject("429", duration=0.3)
        assert (await get_events(session, sim, ticket))[0] == 429
        await asyncio.sleep(0.35)
        assert (await get_events(session, sim, ticket))[0] == 200
        faults_seen = [r.fault for r in sim.rest.requests]
        assert faults_seen == ["outage", "slow", "429", None]


def _refused(item: Any) -> bool:
    try:
        parse_rest_item(item)
    except InvalidEventError:
        return True
    return False


@pytest.mark.parametrize("mode", MALFORMED_MODES)
async def test_malformed_answers_are_what_they_claim(mode: str) -> None:
    faults = RestFaults(p_malformed=1.0, malformed_modes=(mode,))  # type: ignore[arg-type]
    async with Simulator(config(faults=faults)) as sim, aiohttp.ClientSession() as session:
        ticket = sim.tickets[0]
        status, _, body = await get_events(session, sim, ticket.ticket_id)
        assert status == 200
        assert sim.rest.requests[-1].fault == f"malformed:{mode}"
        if mode in ("not_json", "truncated"):
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(body)
            return
        parsed = orjson.loads(body)
        if mode == "not_list":
            assert isinstance(parsed, dict)
            return
        assert isinstance(parsed, list)
        refused = [item for item in parsed if _refused(item)]
        if mode == "wrong_shape":
            assert len(parsed) == len(ticket.events)
            assert len(refused) == 1
        else:
            assert refused == []
            extra = [i for i in parsed if i["eventType"] not in EVENTS]
            assert [i["id"] for i in extra] == [INJECTED_ID_BASE + ticket.ticket_id]
            assert [i["id"] for i in parsed if i["eventType"] in EVENTS] == ticket.event_ids


# --- webhook sender --------------------------------------------------------------------------


async def test_send_all_delivers_every_event_with_the_token() -> None:
    auth = Authenticator(AuthSettings(token="hook-token"))
    async with receiving(Receiver()) as receiver, Simulator(config()) as sim:
        report = await sim.send_all(receiver.url, token="hook-token")
        assert sorted(receiver.event_ids()) == sim.event_ids()
        for headers, body in zip(receiver.headers, receiver.bodies, strict=True):
            assert headers["Content-Type"] == "application/json"
            assert auth.verify(headers, {}, body, time.time()) == "token"
            parse_webhook(body)
        assert sim.acked_ids() == set(sim.event_ids())
        assert report.summary()["acked"] == report.events == len(sim.events)
        assert report.summary()["failed"] == 0


@pytest.mark.parametrize("encoding", ["hex", "base64"])
async def test_hmac_signatures_verify(encoding: str) -> None:
    settings = AuthSettings(
        hmac_secret="s3cret",
        hmac_encoding=encoding,
        hmac_prefix="sha256=",
        timestamp_header="X-Apizee-Timestamp",
    )
    auth = Authenticator(settings)
    async with receiving(Receiver()) as receiver, Simulator(config(tickets=4)) as sim:
        await sim.send_all(
            receiver.url,
            hmac_secret="s3cret",
            hmac_encoding=encoding,
            hmac_prefix="sha256=",
            timestamp_header="X-Apizee-Timestamp",
        )
        assert len(receiver.bodies) == len(sim.events)
        for headers, body in zip(receiver.headers, receiver.bodies, strict=True):
            assert auth.verify(headers, {}, body, time.time()) == "hmac"
            with pytest.raises(AuthError):
                auth.verify(headers, {}, body + b" ", time.time())


async def test_drop_duplicate_and_reorder_rates() -> None:
    async with receiving(Receiver()) as receiver, Simulator(config(tickets=250)) as sim:
        total = len(sim.events)
        assert total > 3000
        report = await sim.send_all(
            receiver.url, token="t", drop=0.2, duplicate=0.05, reorder_window=5, concurrency=32
        )
        dropped, duplicated = report.dropped, report.duplicated
        assert 0.17 < len(dropped) / total < 0.23
        assert 0.035 < len(duplicated) / (total - len(dropped)) < 0.065
        assert not dropped & duplicated
        counts = Counter(receiver.event_ids())
        assert set(counts) == set(sim.event_ids()) - dropped
        assert {i for i, c in counts.items() if c == 2} == duplicated
        assert max(counts.values()) == 2
        assert receiver.event_ids() != sorted(receiver.event_ids())
        assert sim.dropped_ids() == dropped
        outcomes = report.outcomes()
        assert {i for i, o in outcomes.items() if o is Outcome.DROPPED} == dropped
        assert report.acked_ids() == set(sim.event_ids()) - dropped
        for ticket in sim.tickets_without_webhook():
            assert set(sim.ids_by_ticket()[ticket]) <= dropped


async def test_reorder_window_one_keeps_order() -> None:
    async with receiving(Receiver()) as receiver, Simulator(config(tickets=6)) as sim:
        await sim.send_all(receiver.url, token="t", concurrency=1)
        assert receiver.event_ids() == sim.event_ids()


async def test_retries_503_until_accepted_and_records_outcomes() -> None:
    answers: dict[int, list[web.Response]] = {}

    def respond(body: bytes, n: int) -> web.Response:
        event_id = orjson.loads(body)["objectId"]
        script = answers.setdefault(event_id, script_for(event_id))
        return script.pop(0) if script else web.json_response({"status": "duplicate"})

    ids = events_of(tickets=4)[:5]

    def script_for(event_id: int) -> list[web.Response]:
        kind = [e.event_id for e in ids].index(event_id)

        def busy() -> web.Response:
            return web.json_response({}, status=503, headers={"Retry-After": "0"})

        return [
            [busy(), busy(), web.json_response({"status": "accepted"})],
            [web.json_response({"status": "accepted"}, status=202)],
            [web.json_response({"status": "duplicate"})],
            [web.json_response({"error": "bad"}, status=400)],
            [web.Response(status=500) for _ in range(10)],
        ][kind]

    async with receiving(Receiver(respond)) as receiver:
        sender = WebhookSender(
            WebhookConfig(url=receiver.url, token="t", max_retries=3, backoff_initial=0.01)
        )
        report = await sender.send(ids)
    by_id = {d.event_id: d for d in report.deliveries}
    first, second, third, fourth, fifth = (by_id[e.event_id] for e in ids)
    assert (first.outcome, first.status, first.attempts) == (Outcome.ACCEPTED, 200, 3)
    assert (second.outcome, second.status) == (Outcome.ACCEPTED_UNKNOWN, 202)
    assert third.outcome is Outcome.DUPLICATE
    assert (fourth.outcome, fourth.status, fourth.attempts) == (Outcome.REFUSED, 400, 1)
    assert (fifth.outcome, fifth.status, fifth.attempts) == (Outcome.FAILED, 500, 4)
    assert report.acked_ids() == {e.event_id for e in ids[:3]}
    assert report.refused_ids() == {ids[3].event_id}
    assert report.failed_ids() == {ids[4].event_id}
    summary = report.summary()
    assert (summary["acked"], summary["refused"], summary["failed"]) == (3, 1, 1)
    assert summary["retries"] == 2 + 3


async def test_no_retry_mode_and_connection_errors() -> None:
    events = events_of(tickets=4)[:3]
    async with receiving(Receiver()) as receiver:
        url = receiver.url
    # Nothing listens there any more: connection refused on every attempt.
    retried = WebhookSender(WebhookConfig(url=url, max_retries=2, backoff_initial=0.01))
    report = await retried.send(events)
    assert {d.outcome for d in report.deliveries} == {Outcome.FAILED}
    assert {d.attempts for d in report.deliveries} == {3}
    assert all(d.status is None and d.error for d in report.deliveries)
    once = await WebhookSender(WebhookConfig(url=url, retry=False)).send(events)
    assert {d.attempts for d in once.deliveries} == {1}


async def test_retry_after_on_503_is_honoured() -> None:
    calls: list[float] = []

    def respond(body: bytes, n: int) -> web.Response:
        calls.append(time.monotonic())
        if n == 1:
            return web.json_response({}, status=503, headers={"Retry-After": "1"})
        return web.json_response({"status": "accepted"})

    async with receiving(Receiver(respond)) as receiver:
        sender = WebhookSender(WebhookConfig(url=receiver.url, backoff_initial=0.01))
        report = await sender.send(events_of(tickets=4)[:1])
    assert report.deliveries[0].outcome is Outcome.ACCEPTED
    assert calls[1] - calls[0] >= 0.95


# --- command line ----------------------------------------------------------------------------


def test_cli_flags_build_the_configs() -> None:
    args = build_parser().parse_args(
        [
            "simulate",
            "--tickets",
            "300",
            "--bridge-url",
            "http://127.0.0.1:8080/webhooks",
            "--hmac-secret",
            "s",
            "--drop",
            "0.2",
            "--duplicate",
            "0.05",
            "--reorder-window",
            "5",
            "--rate",
            "50",
            "--fail-429",
            "0.1",
            "--outage",
            "10:5",
            "--window",
            "slow:1:2",
            "--no-retry",
        ]
    )
    sim, hook = configs_from_args(args)
    assert (sim.tickets, sim.rate, sim.faults.p_429) == (300, 50.0, 0.1)
    assert sim.faults.windows == (
        FaultWindow(kind="outage", start=10.0, duration=5.0),
        FaultWindow(kind="slow", start=1.0, duration=2.0),
    )
    assert hook is not None
    assert (hook.drop, hook.duplicate, hook.reorder_window, hook.retry) == (0.2, 0.05, 5, False)
    assert hook.hmac_secret == "s"
    with pytest.raises(ValueError, match="KIND:START:DURATION"):
        parse_window("boom:1:2")


async def test_run_simulation_prints_a_summary_and_exits_when_done() -> None:
    out = io.StringIO()
    async with receiving(Receiver()) as receiver:
        code = await run_simulation(
            config(tickets=5),
            WebhookConfig(url=receiver.url, token="t", drop=0.5),
            exit_when_done=True,
            out=out,
        )
    assert code == 0
    text = out.getvalue()
    assert "REST on http://127.0.0.1:" in text
    done = next(line for line in text.splitlines() if line.startswith("done: "))
    fields = dict(part.split("=") for part in done.removeprefix("done: ").split())
    assert int(fields["dropped"]) + int(fields["sent"]) == int(fields["events"])
    assert int(fields["acked"]) == int(fields["sent"]) == len(receiver.bodies)
