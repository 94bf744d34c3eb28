"""The dead-letter contract (bridge/dlq.py): headers built for both sources, read back
leniently, and the ticket a refused webhook body names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import dlq
from bridge.catalog import INT64_MAX
from bridge.models import Source


def test_both_sources_build_the_same_header_set() -> None:
    hook = dlq.webhook_headers(request_id="r1", received_at_ms=5, ticket_id=361)
    poll = dlq.poller_headers(request_id="r2", received_at_ms=6, ticket_id=362)
    assert set(hook) == set(poll) == {"source", "received-at", "request-id", "ticket-id"}
    assert hook == {"source": "WEBHOOK", "received-at": "5", "request-id": "r1", "ticket-id": "361"}
    assert poll["source"] == "POLLER"


def test_a_webhook_body_without_a_ticket_has_no_ticket_header() -> None:
    headers = dlq.webhook_headers(request_id="r", received_at_ms=5, ticket_id=None)
    assert "ticket-id" not in headers


@pytest.mark.parametrize(
    ("body", "ticket"),
    [
        (b'{"props":{"ticketId":361}}', 361),
        (b'{"objectId":"x","props":{"ticketId":0,"eventType":5}}', 0),
        (b'{"props":{"ticketId":"361"}}', None),
        (b'{"props":{"ticketId":true}}', None),
        (b'{"props":{"ticketId":-1}}', None),
        (b'{"props":{"ticketId":1.0}}', None),
        (b'{"props":{"ticketId":9223372036854775808}}', None),
        (b'{"props":[]}', None),
        (b"[1,2]", None),
        (b'{"props":{"ticketId":361}', None),  # truncated: not JSON
        (b"\xff", None),
        (b"", None),
    ],
)
def test_ticket_in_body(body: bytes, ticket: int | None) -> None:
    assert dlq.ticket_in_body(body) == ticket


@given(st.binary(max_size=200))
def test_ticket_in_body_never_raises(body: bytes) -> None:
    found = dlq.ticket_in_body(body)
    assert found is None or 0 <= found <= INT64_MAX


def test_headers_are_read_back() -> None:
    headers = [
        ("dlq-kind", b"invalid_envelope"),
        ("dlq-reason", b"props.ticketId: Field required"),
        *(
            (k, v.encode())
            for k, v in dlq.poller_headers(
                request_id="abc", received_at_ms=1234, ticket_id=77
            ).items()
        ),
    ]
    letter = dlq.DeadLetter.from_headers(headers, timestamp_ms=9)
    assert letter == dlq.DeadLetter(
        kind="invalid_envelope",
        reason="props.ticketId: Field required",
        source=Source.POLLER,
        received_at_ms=1234,
        request_id="abc",
        ticket_id=77,
    )


def test_records_of_older_versions_are_read_leniently() -> None:
    # The ingress's encode_error records had no source; nothing had ticket-id.
    letter = dlq.DeadLetter.from_headers(
        {"dlq-kind": b"encode_error", "received-at": b"not a number"}, timestamp_ms=42
    )
    assert letter.source is Source.WEBHOOK
    assert letter.received_at_ms == 42
    assert (letter.request_id, letter.ticket_id, letter.reason) == (None, None, "")
