"""The dead-letter contract: which headers a `{prefix}.dlq` record carries, whichever path
parked it (webhook or poller), built for the publisher and read back for `replay` and `tail`.

The value is always the raw bytes as they came: a webhook body, one REST list item, or a whole
REST body when the body itself was unusable. docs/operations.md ("Dead letters") documents the
same table.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import pydantic_core

from bridge.catalog import INT64_MAX
from bridge.models import Source

KIND: Final = "dlq-kind"
REASON: Final = "dlq-reason"
SOURCE: Final = "source"
RECEIVED_AT: Final = "received-at"
REQUEST_ID: Final = "request-id"
TICKET_ID: Final = "ticket-id"

# The kinds a record may have: the body was not JSON, its shape or a field was wrong, its
# event's record is larger than its topic accepts, or the bridge could not encode an event it
# had accepted (a defect of ours).
KINDS: Final = ("invalid_json", "invalid_envelope", "record_too_large", "encode_error")


def new_request_id() -> str:
    """An id for a REST request of the poller: 32 hex digits, like the ingress's ids."""
    return secrets.token_hex(16)


def ticket_in_body(body: bytes) -> int | None:
    """The `props.ticketId` a webhook body names, if it names a valid one; never raises.

    Best effort for a body that failed validation: the ticket lets operators find its dead
    letters (`tail --ticket`, `replay --ticket`).
    """
    try:
        parsed: Any = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError:
        return None
    props = parsed.get("props") if isinstance(parsed, dict) else None
    ticket = props.get("ticketId") if isinstance(props, dict) else None
    if type(ticket) is int and 0 <= ticket <= INT64_MAX:
        return ticket
    return None


def webhook_headers(
    *, request_id: str, received_at_ms: int, ticket_id: int | None
) -> dict[str, str]:
    """The headers (besides kind and reason) of a webhook body parked on the DLQ."""
    return _headers(Source.WEBHOOK, request_id, received_at_ms, ticket_id)


def poller_headers(*, request_id: str, received_at_ms: int, ticket_id: int) -> dict[str, str]:
    """The headers (besides kind and reason) of a REST item or body parked on the DLQ."""
    return _headers(Source.POLLER, request_id, received_at_ms, ticket_id)


def _headers(
    source: Source, request_id: str, received_at_ms: int, ticket_id: int | None
) -> dict[str, str]:
    headers = {
        SOURCE: source.value,
        RECEIVED_AT: str(received_at_ms),
        REQUEST_ID: request_id,
    }
    if ticket_id is not None:
        headers[TICKET_ID] = str(ticket_id)
    return headers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What a DLQ record's headers say, read leniently: records parked by older versions may
    lack `source` (then WEBHOOK, the only path that wrote none), `received-at` (then the
    record's Kafka timestamp) or `request-id`."""

    kind: str
    reason: str
    source: Source
    received_at_ms: int
    request_id: str | None
    ticket_id: int | None

    @classmethod
    def from_headers(
        cls, headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes], *, timestamp_ms: int
    ) -> DeadLetter:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        found = {name: value.decode("utf-8", "replace") for name, value in pairs}
        source = Source.POLLER if found.get(SOURCE) == Source.POLLER.value else Source.WEBHOOK
        return cls(
            kind=found.get(KIND, "unknown"),
            reason=found.get(REASON, ""),
            source=source,
            received_at_ms=_int(found.get(RECEIVED_AT)) or timestamp_ms,
            request_id=found.get(REQUEST_ID),
            ticket_id=_int(found.get(TICKET_ID)),
        )


def _int(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= INT64_MAX else None
