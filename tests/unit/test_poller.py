"""The gap-filling poller (bridge/poller.py) against a scripted event list and a publisher
that records what it is given: scheduling, the gap rule, the DLQ, dedupe with a concurrent
webhook, failures on either side, retirement, and isolation between tickets.

Scheduling and the gap rule run on fake clocks (the poller's monotonic clock, and the wall
clock `bridge.poller.now_ms` it reads for ages); the tests of the poll loop run it for real
with short timings and wait for what it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import structlog
from prometheus_client import REGISTRY

from bridge import poller as poller_module
from bridge.apizee import InvalidItem, TicketEvents
from bridge.catalog import TERMINAL_EVENT_TYPES
from bridge.config import PollerSettings
from bridge.dedupe import RecentIds
from bridge.errors import (
    ApizeeError,
    ApizeeNotFoundError,
    ApizeeUnavailableError,
    InvalidEventError,
    KafkaUnavailableError,
    Problem,
    PublishError,
    PublishTimeoutError,
)
from bridge.models import CanonicalEvent, RestEvent, Source, parse_rest_item
from bridge.poller import Poller, PollResult
from bridge.publisher import Publisher
from bridge.state import StateStore, TicketState, now_ms, partition_for

MAX_IDS = 100
# What a DLQ record carries besides dlq-kind and dlq-reason, whichever path parked it.
DLQ_HEADERS = {"source", "received-at", "request-id", "ticket-id"}
TICKET = 361
CONVERSATION = 548
T0_MS = 1_750_000_000_000  # the fake wall clock's start: whole seconds, like Apizee's times
T0_S = T0_MS // 1000


# -- fakes -----------------------------------------------------------------------------------


class Clock:
    """The poller's two clocks: monotonic seconds (scheduling), wall ms (ages, retirement)."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_ms = T0_MS

    def monotonic(self) -> float:
        return self.mono

    def ms(self) -> int:
        return self.wall_ms

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_ms += round(seconds * 1000)


class Lister:
    """Apizee's REST list, scripted per ticket; records every fetch."""

    def __init__(self) -> None:
        self.items: dict[int, list[RestEvent]] = {}
        self.invalid: dict[int, list[InvalidItem]] = {}
        self.errors: dict[int, BaseException] = {}
        # A fetch of that ticket waits for the event (once: the gate is used up).
        self.gates: dict[int, asyncio.Event] = {}
        self.calls: list[int] = []
        self.returned: list[TicketEvents] = []
        self.cancelled: list[int] = []
        self.used_gates: list[asyncio.Event] = []

    async def fetch_events(self, ticket_id: int) -> TicketEvents:
        self.calls.append(ticket_id)
        gate = self.gates.pop(ticket_id, None)
        if gate is not None:
            self.used_gates.append(gate)
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(ticket_id)
                raise
        error = self.errors.get(ticket_id)
        if error is not None:
            raise error
        fetched = TicketEvents(
            ticket_id,
            now_ms(),
            tuple(self.items.get(ticket_id, ())),
            tuple(self.invalid.get(ticket_id, ())),
        )
        self.returned.append(fetched)
        return fetched


@dataclass(frozen=True)
class DlqRecord:
    body: bytes
    kind: str
    reason: str
    headers: dict[str, str]


@dataclass
class RecordingPublisher:
    """Stands in for the Kafka publisher: keeps what it was asked to publish.

    `failures` / `dlq_failures` are raised by the next calls, one per call, in order.
    """

    events: list[CanonicalEvent] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    failures: list[PublishError] = field(default_factory=list)
    dlq_failures: list[PublishError] = field(default_factory=list)
    publish_timeout: float = 10.0

    async def publish(self, event: CanonicalEvent) -> None:
        await asyncio.sleep(0)  # a real publish always yields to the loop
        if self.failures:
            raise self.failures.pop(0)
        self.events.append(event)

    async def publish_dlq(
        self, body: bytes, *, kind: str, reason: str, headers: dict[str, str]
    ) -> None:
        await asyncio.sleep(0)
        if self.dlq_failures:
            raise self.dlq_failures.pop(0)
        self.dlq.append(DlqRecord(body, kind, reason, dict(headers)))

    @property
    def ids(self) -> list[int]:
        return [e.event_id for e in self.events]


@dataclass
class Rig:
    poller: Poller
    lister: Lister
    publisher: RecordingPublisher
    store: StateStore
    dedupe: RecentIds
    monotonic: Callable[[], float]

    def due_in(self, ticket_id: int) -> float | None:
        """Seconds until the ticket's next poll; None when it is not scheduled."""
        due = self.poller._due.get(ticket_id)
        return None if due is None else round(due - self.monotonic(), 6)

    @property
    def scheduled(self) -> set[int]:
        return set(self.poller._due)


def make_rig(
    clock: Clock | None = None,
    *,
    partitions: int = 1,
    owned: tuple[int, ...] = (0,),
    **settings: Any,
) -> Rig:
    """A poller over fakes. With `clock`, every clock is fake; without, all are real."""
    values: dict[str, Any] = {
        "interval_seconds": 60.0,
        "jitter_ratio": 0.0,
        "settle_seconds": 30.0,
        "terminal_poll_delay_seconds": 15.0,
        "retire_grace_seconds": 300.0,
        "idle_ttl_seconds": 3600.0,
        **settings,
    }
    monotonic = clock.monotonic if clock is not None else time.monotonic
    store = StateStore(MAX_IDS, clock=clock.ms if clock is not None else now_ms)
    store.set_partitions(partitions)
    store.assign(owned)
    dedupe = RecentIds(600.0, 10_000, clock=monotonic)
    lister, publisher = Lister(), RecordingPublisher()
    poller = Poller(
        PollerSettings(**values),
        lister,
        cast(Publisher, publisher),
        store,
        dedupe,
        clock=monotonic,
        rng=random.Random(7),
    )
    return Rig(poller, lister, publisher, store, dedupe, monotonic)


def item(
    event_id: int,
    event_type: str = "consent.accepted",
    *,
    at: float,
    data: dict[str, Any] | None = None,
) -> RestEvent:
    """One REST list item, recorded by Apizee at `at` (epoch seconds)."""
    return parse_rest_item(
        {
            "id": event_id,
            "eventType": event_type,
            "timestamp": at,
            "conversationId": CONVERSATION,
            "data": data or {},
        }
    )


def invalid(raw: bytes) -> InvalidItem:
    error = InvalidEventError("invalid_envelope", [Problem("id", "not an integer")])
    return InvalidItem(raw, error, index=0)


def tickets_in(partition: int, partitions: int, count: int = 1) -> list[int]:
    found = [t for t in range(1, 10_000) if partition_for(t, partitions) == partition]
    return found[:count]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"apizee_bridge_{name}", labels) or 0.0


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """What the poller logged (and nothing written to a stream another test may have closed)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(poller_module, "now_ms", fake.ms)
    return fake


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    # Polling: the conditions are the fakes' and the poller's plain attributes.
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Rig]:
    await rig.poller.start()
    try:
        yield rig
    finally:
        await rig.poller.stop()
        for gate in [*rig.lister.gates.values(), *rig.lister.used_gates]:
            gate.set()  # let nothing wait past the test


# -- scheduling ------------------------------------------------------------------------------


def test_schedule_keeps_the_earliest_due_time(clock: Clock) -> None:
    rig = make_rig(clock)
    rig.poller.schedule(TICKET, 30)
    rig.poller.schedule(TICKET, 45)
    assert rig.due_in(TICKET) == 30
    rig.poller.schedule(TICKET, 10)
    assert rig.due_in(TICKET) == 10
    rig.poller.schedule(TICKET, -5)
    assert rig.due_in(TICKET) == 0
    assert rig.poller.active == 1


def test_unschedule_forgets_the_ticket_until_it_is_scheduled_again(clock: Clock) -> None:
    rig = make_rig(clock)
    rig.poller.schedule(1, 5)
    rig.poller.schedule(2, 5)
    rig.poller.unschedule(1)
    rig.poller.unschedule(1)  # twice is harmless
    assert rig.scheduled == {2}
    assert rig.poller.active == 1
    rig.poller.schedule(1, 50)  # later than the forgotten due time: taken all the same
    assert rig.due_in(1) == 50


@pytest.mark.parametrize("terminal", sorted(TERMINAL_EVENT_TYPES))
def test_observe_polls_on_the_interval_and_soon_after_a_terminal_event(
    clock: Clock, terminal: str
) -> None:
    rig = make_rig(clock)  # interval 60 s, terminal poll delay 15 s, no jitter
    rig.poller.observe(TICKET, "ticket.new")
    assert rig.due_in(TICKET) == 60
    clock.advance(20)
    rig.poller.observe(TICKET, "ticket.assigned")  # already scheduled: not postponed
    assert rig.due_in(TICKET) == 40
    rig.poller.observe(TICKET, terminal)
    assert rig.due_in(TICKET) == 15
    rig.poller.observe(TICKET, "session.userLeft")
    assert rig.due_in(TICKET) == 15


def test_observe_ignores_tickets_another_replica_owns(clock: Clock) -> None:
    [mine], [theirs] = tickets_in(0, 4), tickets_in(1, 4)
    rig = make_rig(clock, partitions=4, owned=(0,))
    rig.poller.observe(theirs, "ticket.closed")
    rig.poller.observe(mine, "ticket.new")
    assert rig.scheduled == {mine}


def test_the_interval_is_jittered_within_the_ratio(clock: Clock) -> None:
    rig = make_rig(clock, jitter_ratio=0.2)
    for ticket_id in range(1, 201):
        rig.poller.observe(ticket_id, "ticket.new")
    dues = [rig.due_in(t) for t in range(1, 201)]
    assert all(d is not None and 48 <= d <= 72 for d in dues)
    assert max(d for d in dues if d is not None) - min(d for d in dues if d is not None) > 12


def test_reschedule_owned_polls_each_owned_live_ticket_within_one_interval(clock: Clock) -> None:
    rig = make_rig(clock, partitions=4, owned=(0, 1))
    rig.store.on_owned_change = rig.poller.reschedule_owned
    tickets = range(1, 81)
    for ticket_id in tickets:
        rig.store.record(ticket_id, ticket_id * 10, "ticket.new", 0)
    owned = [t for t in tickets if partition_for(t, 4) in (0, 1)]
    retired, kept, *others = owned
    rig.store.get(retired).retire(clock.ms())
    rig.poller.schedule(kept, 5)
    [foreign] = [t for t in tickets if partition_for(t, 4) == 2][:1]
    rig.poller.schedule(foreign, 5)  # polled before a rebalance moved its partition away

    rig.poller.reschedule_owned()
    assert rig.scheduled == set(owned) - {retired}
    assert rig.due_in(kept) == 5  # already scheduled: left as it was
    dues = [rig.due_in(t) for t in others]
    assert all(d is not None and 0 <= d <= 60 for d in dues)
    assert len(set(dues)) > len(dues) // 2  # spread over the interval, not all at once

    rig.store.revoke([1])  # a rebalance takes partition 1: its tickets are not polled here
    assert rig.scheduled == {t for t in owned if partition_for(t, 4) == 0} - {retired}


def test_track_polls_an_owned_live_ticket_that_a_state_record_names(clock: Clock) -> None:
    live, retired, unknown = tickets_in(0, 4, 3)
    [foreign] = tickets_in(1, 4)
    rig = make_rig(clock, partitions=4, owned=(0,))
    for ticket_id in (live, retired, foreign):
        rig.store.record(ticket_id, 1, "ticket.new", 0)
    rig.store.get(retired).retire(clock.ms())
    for ticket_id in (live, retired, unknown, foreign):
        rig.poller.track(ticket_id)
    assert rig.scheduled == {live}
    assert rig.due_in(live) == 60


def test_a_record_of_another_writer_makes_the_owner_poll_the_ticket(clock: Clock) -> None:
    [mine], [theirs] = tickets_in(0, 4), tickets_in(1, 4)
    rig = make_rig(clock, partitions=4, owned=(0,))
    rig.store.on_owned_record = rig.poller.track  # as bridge.app wires it
    for ticket_id in (mine, theirs):
        record = TicketState(ticket_id, ids={5}, last_event_ms=clock.ms())
        rig.store.merge_record(ticket_id, record.encode())
    assert rig.scheduled == {mine}


# -- one poll: the gap rule ------------------------------------------------------------------


async def test_settled_gaps_are_published_by_the_poller_and_recorded(clock: Clock) -> None:
    rig = make_rig(clock)  # settle 30 s
    rig.store.record(TICKET, 100, "ticket.new", 0)  # its webhook came
    rig.store.take_dirty()
    rig.lister.items[TICKET] = [
        item(100, "ticket.new", at=T0_S - 120),
        item(101, "ticket.assigned", at=T0_S - 90),  # its webhook was lost
        item(103, "ticket.invitationSent", at=T0_S - 10),  # its webhook may be on its way
    ]
    before = metric("gaps_filled_total", category="ticket")

    result = await rig.poller.poll_ticket(TICKET)
    assert result == PollResult(TICKET, fetched=3, published=1, present=1, unsettled=1)
    [event] = rig.publisher.events
    assert (event.event_id, event.event_type, event.ticket_id, event.conversation_id) == (
        101,
        "ticket.assigned",
        TICKET,
        CONVERSATION,
    )
    assert event.source is Source.POLLER
    assert event.occurred_at_ms == (T0_S - 90) * 1000
    assert event.received_at_ms == T0_MS
    state = rig.store.get(TICKET)
    assert state.has(101)
    assert not state.has(103)
    assert state.last_poll_ms == T0_MS
    assert [s.ticket_id for s in rig.store.take_dirty()] == [TICKET]
    assert metric("gaps_filled_total", category="ticket") == before + 1

    clock.advance(30)  # event 103 has settled now
    result = await rig.poller.poll_ticket(TICKET)
    assert result == PollResult(TICKET, fetched=3, published=1, present=2)
    assert rig.publisher.ids == [101, 103]


@pytest.mark.parametrize(("age_ms", "is_gap"), [(29_999, False), (30_000, True)])
async def test_an_event_is_a_gap_once_exactly_settle_seconds_old(
    clock: Clock, age_ms: int, is_gap: bool
) -> None:
    rig = make_rig(clock)
    clock.wall_ms = T0_MS + age_ms
    rig.lister.items[TICKET] = [item(1, at=T0_S)]
    result = await rig.poller.poll_ticket(TICKET)
    assert (result.published, result.unsettled) == ((1, 0) if is_gap else (0, 1))


async def test_a_settle_override_of_zero_takes_even_the_newest_events(clock: Clock) -> None:
    rig = make_rig(clock)  # what the backfill does: its tickets' events are old
    rig.lister.items[TICKET] = [item(1, at=T0_S - 100), item(2, at=T0_S)]
    result = await rig.poller.poll_ticket(TICKET, settle_seconds=0)
    assert (result.published, result.unsettled) == (2, 0)
    assert rig.publisher.ids == [1, 2]


async def test_a_terminal_gap_marks_the_ticket_terminal(clock: Clock) -> None:
    rig = make_rig(clock)
    rig.lister.items[TICKET] = [
        item(1, "ticket.new", at=T0_S - 200),
        item(2, "ticket.closed", at=T0_S - 100),
    ]
    await rig.poller.poll_ticket(TICKET)
    # Closed 100 s ago per Apizee, learned now: the grace period counts from now.
    assert rig.store.get(TICKET).terminal_ms == T0_MS


async def test_an_unknown_event_type_is_published_not_dead_lettered(clock: Clock) -> None:
    rig = make_rig(clock)
    rig.lister.items[TICKET] = [item(9, "whiteboard.drawn", at=T0_S - 60, data={"strokes": 3})]
    result = await rig.poller.poll_ticket(TICKET)
    assert (result.published, result.rejected) == (1, 0)
    [event] = rig.publisher.events
    assert (event.event_type, event.source, event.extra) == (
        "whiteboard.drawn",
        Source.POLLER,
        {"strokes": 3},
    )
    assert rig.publisher.dlq == []


# -- malformed items -------------------------------------------------------------------------


async def test_malformed_items_reach_the_dlq_once_per_ticket(clock: Clock) -> None:
    rig = make_rig(clock)
    bad_envelope = b'{"id":"57","eventType":"ticket.new","timestamp":1749581447}'
    for ticket_id in (1, 2):
        # Valid envelope, attributes of the wrong type: refused when normalized.
        bad_data = item(
            ticket_id * 10, "media.pictureTaken", at=T0_S - 60, data={"mediaId": "not-a-number"}
        )
        rig.lister.items[ticket_id] = [bad_data]
        rig.lister.invalid[ticket_id] = [invalid(bad_envelope)]

    first = await rig.poller.poll_ticket(1)
    again = await rig.poller.poll_ticket(1)
    other = await rig.poller.poll_ticket(2)  # the same bytes on another ticket: its own
    assert (first.rejected, again.rejected, other.rejected) == (2, 0, 2)
    assert first.published == again.published == other.published == 0
    assert rig.publisher.events == []

    # The DLQ header contract (docs/operations.md, "Dead letters"): the webhook's set, from the
    # fetch.
    assert all(set(r.headers) == DLQ_HEADERS for r in rig.publisher.dlq)
    polls = [rig.lister.returned[0]] * 2 + [rig.lister.returned[2]] * 2
    assert [r.headers for r in rig.publisher.dlq] == [
        {
            "source": "POLLER",
            "ticket-id": str(p.ticket_id),
            "received-at": str(p.received_at_ms),
            "request-id": p.request_id,
        }
        for p in polls
    ]
    assert polls[0].request_id != polls[2].request_id
    assert all(re.fullmatch(r"[0-9a-f]{32}", p.request_id) for p in polls)
    assert {r.kind for r in rig.publisher.dlq} == {"invalid_envelope"}
    by_body = {r.body: r.reason for r in rig.publisher.dlq[:2]}
    assert by_body[bad_envelope] == "id: not an integer"
    [(normalized, reason)] = [(b, r) for b, r in by_body.items() if b != bad_envelope]
    assert b'"not-a-number"' in normalized
    assert "mediaId" in reason
    # Never published, so never recorded: a corrected listing would still be a gap.
    assert not rig.store.get(1).has(10)


async def test_a_failed_dlq_write_is_retried_on_the_next_poll(clock: Clock) -> None:
    rig = make_rig(clock)
    rig.lister.invalid[TICKET] = [invalid(b"<html>")]
    rig.publisher.dlq_failures = [KafkaUnavailableError("broker down")]
    first = await rig.poller.poll_ticket(TICKET)
    assert (first.error, first.rejected, rig.publisher.dlq) == ("kafka_unavailable", 0, [])
    second = await rig.poller.poll_ticket(TICKET)
    assert (second.error, second.rejected) == (None, 1)
    assert [r.body for r in rig.publisher.dlq] == [b"<html>"]


# -- dedupe with the ingress -----------------------------------------------------------------


async def _poll_while_a_webhook_publishes(rig: Rig, webhook_published: bool) -> PollResult:
    rig.lister.items[TICKET] = [item(7, at=T0_S - 60)]
    assert await rig.dedupe.claim(7)  # the ingress is publishing event 7 right now
    poll = asyncio.create_task(rig.poller.poll_ticket(TICKET))
    await asyncio.sleep(0.05)
    assert not poll.done()  # the poller waits for the webhook's outcome
    assert rig.publisher.events == []
    rig.dedupe.release(7, webhook_published)
    async with asyncio.timeout(1):
        return await poll


async def test_a_concurrent_webhook_that_publishes_wins_the_claim(clock: Clock) -> None:
    rig = make_rig(clock)
    result = await _poll_while_a_webhook_publishes(rig, webhook_published=True)
    assert (result.published, result.present) == (0, 1)
    assert rig.publisher.events == []


async def test_a_concurrent_webhook_that_fails_hands_the_event_to_the_poller(clock: Clock) -> None:
    rig = make_rig(clock)
    result = await _poll_while_a_webhook_publishes(rig, webhook_published=False)
    assert (result.published, result.present) == (1, 0)
    assert rig.publisher.ids == [7]
    assert 7 in rig.dedupe  # a webhook retried now is answered "duplicate"


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [KafkaUnavailableError("broker down"), PublishTimeoutError("no ack")]
)
async def test_a_failed_publish_leaves_the_gap_for_the_next_poll(
    clock: Clock, error: PublishError
) -> None:
    rig = make_rig(clock)
    rig.lister.items[TICKET] = [item(1, at=T0_S - 100), item(2, at=T0_S - 90)]
    rig.publisher.failures = [error]
    before = metric("polls_total", outcome="publish_failed")

    result = await rig.poller.poll_ticket(TICKET)
    assert (result.error, result.published) == (error.kind, 0)
    assert rig.publisher.events == []
    state = rig.store.get(TICKET)
    assert not state.has(1)
    assert not state.has(2)
    assert 1 not in rig.dedupe
    assert metric("polls_total", outcome="publish_failed") == before + 1

    async with asyncio.timeout(1):  # the failed claim was released, not left pending
        second = await rig.poller.poll_ticket(TICKET)
    assert (second.error, second.published) == (None, 2)
    assert rig.publisher.ids == [1, 2]


@pytest.mark.parametrize(
    "error",
    [
        ApizeeUnavailableError("Apizee is down", kind="circuit_open"),
        ApizeeNotFoundError("no such ticket", status=404),
    ],
)
async def test_an_apizee_error_is_the_polls_result_not_a_crash(
    clock: Clock, error: ApizeeError
) -> None:
    rig = make_rig(clock)
    rig.lister.errors[TICKET] = error
    before = metric("polls_total", outcome=error.kind)
    result = await rig.poller.poll_ticket(TICKET)
    assert result == PollResult(TICKET, error=error.kind)
    assert rig.publisher.events == []
    assert rig.publisher.dlq == []
    assert metric("polls_total", outcome=error.kind) == before + 1


# -- the poll loop (real clocks, short timings) ----------------------------------------------


async def test_a_ticket_is_retired_a_grace_period_after_its_terminal_event() -> None:
    rig = make_rig(interval_seconds=60.0, retire_grace_seconds=0.3)
    now = now_ms()
    closed_at = now  # learned now: the grace period ends 0.3 s from now
    rig.store.record(TICKET, 1, "ticket.new", 0)
    rig.store.record(TICKET, 2, "ticket.closed", closed_at)
    rig.lister.items[TICKET] = [item(1, at=now / 1000 - 400), item(2, at=closed_at / 1000)]
    before = metric("tickets_retired_total", reason="terminal")
    async with running(rig):
        rig.poller.schedule(TICKET, 0)
        await eventually(lambda: rig.store.get(TICKET).retired)
        await asyncio.sleep(0.2)
    # Polled now, then once more at the end of the grace period (not after the 60 s
    # interval), then no more.
    assert rig.lister.calls == [TICKET, TICKET]
    assert rig.poller.active == 0
    state = rig.store.get(TICKET)
    assert (state.ids, state.floor) == (set(), 2)
    assert metric("tickets_retired_total", reason="terminal") == before + 1


async def test_a_late_terminal_event_keeps_the_ticket_polled_for_its_grace_period() -> None:
    # ticket.closed learned an hour after Apizee recorded it (a webhook retried after an
    # outage): the ticket is still polled for the whole grace period, so an event Apizee
    # lists after the close is found.
    rig = make_rig(interval_seconds=0.05, retire_grace_seconds=0.5, settle_seconds=0.0)
    an_hour_ago = now_ms() - 3_600_000
    rig.store.record(TICKET, 1, "ticket.new", an_hour_ago)
    rig.store.record(TICKET, 2, "ticket.closed", an_hour_ago)
    rig.lister.items[TICKET] = [
        item(1, "ticket.new", at=an_hour_ago / 1000),
        item(2, "ticket.closed", at=an_hour_ago / 1000),
    ]
    async with running(rig):
        rig.poller.schedule(TICKET, 0)
        await eventually(lambda: len(rig.lister.calls) >= 1)
        rig.lister.items[TICKET].append(item(3, "survey.answered", at=time.time()))
        await eventually(lambda: rig.publisher.ids == [3])
        assert not rig.store.get(TICKET).retired
        await eventually(lambda: rig.store.get(TICKET).retired)


async def test_a_ticket_without_events_for_the_idle_ttl_is_retired() -> None:
    rig = make_rig(idle_ttl_seconds=60.0)
    stale, fresh = 1, 2
    for ticket_id in (stale, fresh):
        rig.store.record(ticket_id, ticket_id, "ticket.new", 0)
    rig.store.get(stale).last_event_ms = now_ms() - 61_000
    before = metric("tickets_retired_total", reason="idle")
    async with running(rig):
        rig.poller.schedule(stale, 0)
        rig.poller.schedule(fresh, 0)
        await eventually(lambda: rig.store.get(stale).retired and rig.due_in(fresh) is not None)
    assert sorted(rig.lister.calls) == [stale, fresh]
    assert not rig.store.get(fresh).retired
    assert rig.scheduled == {fresh}  # polled again on the interval
    assert metric("tickets_retired_total", reason="idle") == before + 1


async def test_a_crashing_or_hanging_ticket_does_not_stall_the_others(
    logs: list[dict[str, Any]],
) -> None:
    rig = make_rig(interval_seconds=0.05, concurrency=2)
    crashing, hanging, first, second = 1, 2, 3, 4
    for ticket_id in (crashing, hanging, first, second):
        rig.store.record(ticket_id, ticket_id, "ticket.new", 0)
    rig.lister.errors[crashing] = RuntimeError("a defect, not an Apizee error")
    rig.lister.gates[hanging] = asyncio.Event()  # never answers
    rig.lister.items[first] = [item(31, at=time.time() - 100)]
    rig.lister.items[second] = [item(41, at=time.time() - 100)]
    async with running(rig):
        for ticket_id in (crashing, hanging, first, second):
            rig.poller.schedule(ticket_id, 0)
        # The crashing ticket is tried again on the interval; the others get polled.
        await eventually(lambda: rig.lister.calls.count(crashing) >= 3)
        await eventually(lambda: rig.lister.calls.count(first) >= 2)
        await eventually(lambda: rig.lister.calls.count(second) >= 2)
    assert sorted(rig.publisher.ids) == [31, 41]
    assert rig.lister.calls.count(hanging) == 1
    crashes = [e for e in logs if e["event"] == "poll_crashed"]
    assert crashes
    assert {e["ticket_id"] for e in crashes} == {crashing}


async def test_a_ticket_due_again_while_its_poll_runs_is_polled_again() -> None:
    rig = make_rig(interval_seconds=0.1, terminal_poll_delay_seconds=0.0)
    rig.store.record(TICKET, 1, "ticket.new", 0)
    slow_poll = rig.lister.gates[TICKET] = asyncio.Event()
    async with running(rig):
        rig.poller.schedule(TICKET, 0)
        await eventually(lambda: rig.lister.calls == [TICKET])
        # A terminal webhook arrives while the (slow) poll runs: due right away.
        rig.poller.observe(TICKET, "ticket.closed")
        await asyncio.sleep(0.1)  # the loop sees it due while the poll still runs
        slow_poll.set()
        await eventually(lambda: len(rig.lister.calls) >= 2)


async def test_stop_cancels_the_polls_in_flight() -> None:
    rig = make_rig()
    rig.store.record(TICKET, 1, "ticket.new", 0)
    rig.lister.gates[TICKET] = asyncio.Event()
    async with running(rig):
        rig.poller.schedule(TICKET, 0)
        await eventually(lambda: rig.lister.calls == [TICKET])
    # Nothing of the poller runs after stop(): the app closes the client and the
    # publisher right after it.
    assert rig.lister.cancelled == [TICKET]


async def test_retirement_cancels_a_poll_queued_during_the_last_one() -> None:
    rig = make_rig(retire_grace_seconds=300.0)
    rig.store.record(TICKET, 2, "ticket.closed", 0)
    rig.store.get(TICKET).terminal_ms = now_ms() - 301_000  # learned then: grace period over
    last_poll = rig.lister.gates[TICKET] = asyncio.Event()
    async with running(rig):
        rig.poller.schedule(TICKET, 0)
        await eventually(lambda: rig.lister.calls == [TICKET])
        rig.poller.schedule(TICKET, 0.2)  # e.g. a state record named it meanwhile
        last_poll.set()
        await eventually(lambda: rig.store.get(TICKET).retired)
        await asyncio.sleep(0.4)
    assert rig.lister.calls == [TICKET]
    assert rig.poller.active == 0
