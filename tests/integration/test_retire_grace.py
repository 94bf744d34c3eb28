"""The retire grace after a terminal event, against a real broker and a scripted Apizee.

A `ticket.closed` webhook that arrives long after Apizee recorded it (Apizee retrying after an
outage, or a skewed clock) must not retire its ticket at once: the grace period counts from
when the bridge learned of the close, so an event Apizee lists afterwards (a survey answered
after the close, a webhook lost on the way) is still found by the poller.
"""

from __future__ import annotations

import time

import pytest

from bridge.devtools.simulator import ApizeeRestServer, SimEvent
from tests.integration.bridgeproc import webhook
from tests.integration.pollerkit import (
    TOKEN,
    capture_tracking,
    poller_settings,
    read_events,
    replica,
    wait_until,
)

pytestmark = pytest.mark.integration

TICKET = 7301
GRACE = 5.0


def event(event_id: int, event_type: str, at: float, **attributes: object) -> SimEvent:
    return SimEvent(event_id, event_type, 10, TICKET, 548, at, dict(attributes))


async def test_a_late_ticket_closed_still_gets_its_grace_period(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    an_hour_ago = time.time() - 3600
    opened = event(91, "ticket.new", an_hour_ago - 60)
    closed = event(92, "ticket.closed", an_hour_ago)
    listed: list[SimEvent] = [opened, closed]
    rest = ApizeeRestServer(lambda t: listed if t == TICKET else None, token="simulator-token")
    await rest.start()
    captured = capture_tracking(monkeypatch)
    settings = poller_settings(
        kafka_bootstrap,
        topic_prefix,
        rest.url,
        poller={
            "interval_seconds": 0.5,
            "terminal_poll_delay_seconds": 0.2,
            "retire_grace_seconds": GRACE,
            # Apache Kafka's group.min.session.timeout.ms is 6 s.
            "group_session_timeout_ms": 6000,
            "group_heartbeat_interval_ms": 1000,
        },
    )
    try:
        async with replica(settings, captured) as bridge:
            for sent in (opened, closed):  # the close arrives an hour after Apizee had it
                async with bridge.session.post(
                    bridge.webhook_url,
                    json=webhook(
                        sent.event_type,
                        event_id=sent.event_id,
                        ticket_id=TICKET,
                        time=sent.timestamp,
                    ),
                    headers={"X-Webhook-Token": TOKEN},
                ) as response:
                    assert response.status == 200, await response.text()
            learned = time.monotonic()

            async def polled_after_close() -> bool:
                return any(p.ticket_id == TICKET and p.started > learned for p in bridge.polls)

            await wait_until(polled_after_close, 5.0, "a poll of the ticket after its close")
            # Recorded by Apizee after the close: only the poller can bring it.
            late = event(93, "survey.answered", time.time() - 1)
            listed.append(late)

            async def late_published() -> bool:
                census = await read_events(kafka_bootstrap, topic_prefix)
                return late.event_id in census.counts

            await wait_until(late_published, GRACE, "the event listed after the close is filled")
            state = bridge.tracking.store.get(TICKET)
            assert not state.retired, "retired before its grace period was over"

            async def retired() -> bool:
                return bridge.tracking.store.get(TICKET).retired

            took = await wait_until(retired, GRACE + 5, "the ticket retired after its grace")
            assert time.monotonic() - learned >= GRACE - 0.5, took
        census = await read_events(kafka_bootstrap, topic_prefix)
        assert census.counts == {91: 1, 92: 1, 93: 1}
        assert census.by_source()["POLLER"] == {93}
    finally:
        await rest.stop()
