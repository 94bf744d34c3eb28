"""One DLQ header contract for both sources (docs/operations.md, "Dead letters"): a webhook body
and a REST item parked by the poller carry the same headers, read back with confluent-kafka."""

from __future__ import annotations

import re
import time

import pytest

from bridge.devtools.simulator import ApizeeRestServer, SimEvent
from tests.integration.bridgeproc import webhook
from tests.integration.pollerkit import (
    TOKEN,
    capture_tracking,
    poller_settings,
    read_to_end,
    replica,
    wait_until,
)

pytestmark = pytest.mark.integration

CONTRACT = {"dlq-kind", "dlq-reason", "source", "received-at", "request-id", "ticket-id"}


async def test_webhook_and_poller_dead_letters_carry_the_same_headers(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticket = 8801
    # A REST item Apizee lists with an attribute of the wrong type: the poller parks it.
    bad_item = SimEvent(
        7001, "media.pictureTaken", 41, ticket, 548, time.time() - 60, {"mediaId": "x"}
    )
    rest = ApizeeRestServer(lambda t: [bad_item] if t == ticket else None, token="simulator-token")
    await rest.start()
    captured = capture_tracking(monkeypatch)
    settings = poller_settings(
        kafka_bootstrap,
        topic_prefix,
        rest.url,
        poller={"group_session_timeout_ms": 6000, "group_heartbeat_interval_ms": 1000},
    )
    dlq = f"{topic_prefix}.dlq"
    try:
        async with replica(settings, captured) as bridge:
            before = time.time() * 1000
            # The same mistake through the webhook: answered 400, parked by the ingress. Its
            # ticket is then polled, and the poller parks its REST twin.
            body = webhook("media.pictureTaken", {"mediaId": "x"}, event_id=7001, ticket_id=ticket)
            async with bridge.session.post(
                bridge.webhook_url, json=body, headers={"X-Webhook-Token": TOKEN}
            ) as response:
                assert response.status == 400
                request_id = response.headers["X-Request-Id"]
            # An accepted event of the ticket makes the poller poll it.
            accepted = webhook("ticket.new", event_id=7000, ticket_id=ticket)
            async with bridge.session.post(
                bridge.webhook_url, json=accepted, headers={"X-Webhook-Token": TOKEN}
            ) as response:
                assert response.status == 200

            async def both_parked() -> bool:
                return len(read_to_end(kafka_bootstrap, [dlq])) >= 2

            await wait_until(both_parked, 15.0, "both dead letters on the DLQ")
        records = {r.headers["source"]: r for r in read_to_end(kafka_bootstrap, [dlq])}
        assert set(records) == {b"WEBHOOK", b"POLLER"}
        for record in records.values():
            assert set(record.headers) == CONTRACT, record.headers
            assert record.headers["dlq-kind"] == b"invalid_envelope"
            assert b"mediaId" in record.headers["dlq-reason"]
            assert record.headers["ticket-id"] == str(ticket).encode()
            received = int(record.headers["received-at"])
            assert before - 1000 <= received <= time.time() * 1000
        assert records[b"WEBHOOK"].headers["request-id"] == request_id.encode()
        assert re.fullmatch(rb"[0-9a-f]{32}", records[b"POLLER"].headers["request-id"])
    finally:
        await rest.stop()
