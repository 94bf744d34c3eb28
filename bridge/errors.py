"""Every error the bridge raises on purpose, in one hierarchy.

The ingress maps each class to one HTTP status and one metric reason; nothing else does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


class BridgeError(Exception):
    """Base of all bridge errors."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem: where (a dotted path into the payload) and why."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class InvalidEventError(BridgeError):
    """Bytes that are not a valid Apizee event: answered 400, raw body kept on the DLQ.

    `kind` is a bounded label for metrics and DLQ headers: `invalid_json` when the bytes
    are not JSON at all, `invalid_envelope` when the shape or a field is wrong.
    """

    MAX_REASON_CHARS = 2000

    def __init__(self, kind: str, problems: list[Problem]) -> None:
        self.kind = kind
        self.problems = tuple(problems)
        reason = "; ".join(str(p) for p in problems) or kind
        if len(reason) > self.MAX_REASON_CHARS:
            reason = reason[: self.MAX_REASON_CHARS - 3] + "..."
        self.reason = reason
        super().__init__(reason)


class CodecError(BridgeError):
    """An event could not be encoded or a record could not be decoded."""


class UnknownSchemaError(CodecError):
    """A record names a schema (fingerprint or registry id) this codec does not hold."""


class PublishError(BridgeError):
    """Kafka did not acknowledge a record: answered 503 so that the sender retries.

    `kind` is a bounded label: `kafka_unavailable` (not connected, or the cluster refused),
    `publish_timeout` (no acknowledgement within the publish timeout).
    """

    kind = "kafka_unavailable"


class KafkaUnavailableError(PublishError):
    """The producer is not connected, or Kafka answered with an error."""

    kind = "kafka_unavailable"


class PublishTimeoutError(PublishError):
    """No acknowledgement within the publish timeout: the event is *maybe stored*.

    `landing`, when set, is the producer's future of the record that was handed over and
    abandoned: it may still be written (and then resolves with its metadata). The dedupe
    window keeps the id claimed until it resolves, so that a retry meanwhile waits for it
    instead of writing a second copy, and a retry after it landed is a duplicate.
    """

    kind = "publish_timeout"

    def __init__(self, reason: str, *, landing: asyncio.Future[Any] | None = None) -> None:
        super().__init__(reason)
        self.landing = landing


class RecordTooLargeError(BridgeError):
    """A record is larger than its topic accepts: definitive (413), never retried.

    Decided before sending from the producer's max request size and the topic's
    `max.message.bytes`, or reported by the broker (`by_broker`) when the topic's limit was
    lowered since the bridge read it. The webhook's raw body goes to the DLQ.
    """

    def __init__(self, topic: str, size: int, limit: int, *, by_broker: bool = False) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        self.by_broker = by_broker
        if by_broker:
            self.reason = f"Kafka refused a record of {size} bytes as too large for {topic}"
        else:
            self.reason = f"record of {size} bytes is larger than the {limit} bytes {topic} accepts"
        super().__init__(self.reason)


class UnsupportedMediaTypeError(BridgeError):
    """The webhook's Content-Type is not application/json: answered 415, not stored."""

    def __init__(self, reason: str = "Content-Type must be application/json") -> None:
        self.reason = reason
        super().__init__(reason)


class OverCapacityError(BridgeError):
    """The ingress holds as many body bytes as it may (or as many connections): answered 503
    with Retry-After at once, before the body is read, instead of buffering it."""


class RequestTimeoutError(BridgeError):
    """The sender did not deliver the whole body within the request timeout (slowloris)."""


class BodyTooLargeError(BridgeError):
    """The webhook body exceeds the configured limit: answered 413, not stored."""


class ApizeeError(BridgeError):
    """Apizee's REST API did not give a ticket's events.

    `kind` is a bounded label for metrics and logs; `status` is the HTTP status when Apizee
    answered one.
    """

    kind: str = "apizee_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApizeeAuthError(ApizeeError):
    """Apizee refused the token (401) or the role's rights (403): not retried, fix the token."""

    kind = "auth_failed"


class ApizeeNotFoundError(ApizeeError):
    """Apizee does not know the ticket (404): not retried."""

    kind = "not_found"


class ApizeeRequestError(ApizeeError):
    """Apizee refused the request with another status (400, 410, an unfollowed 3xx): not retried."""

    kind = "rejected"


class ApizeeUnavailableError(ApizeeError):
    """Apizee is unreachable or failing: retries exhausted, or the circuit is open (fail fast).

    `kind`: `circuit_open`, `server_error` (5xx), `timeout`, `connection_error`,
    `rate_limited` (429 on every attempt) or `client_error` (another transport failure).
    """

    KINDS = (
        "circuit_open",
        "server_error",
        "timeout",
        "connection_error",
        "rate_limited",
        "client_error",
    )

    def __init__(self, message: str, *, kind: str, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.kind = kind


class SchemasNotRegisteredError(PublishError):
    """Registry mode, and the schema ids are not known yet: answered 503 so that the sender
    retries (nothing is published in a framing consumers do not expect)."""

    kind = "schemas_not_registered"


class SchemaRegistryError(BridgeError):
    """The Schema Registry did not register or give a schema.

    `outcome` is a bounded label for metrics (`conflict`, `invalid`, `unauthorized`,
    `not_found`, `client_error`, `server_error`, `timeout`, `connection_error`); `status` is
    the HTTP status when the registry answered one.
    """

    def __init__(self, message: str, *, outcome: str, status: int | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status = status


class SchemaRegistryUnavailableError(SchemaRegistryError):
    """Unreachable, timed out, failing (5xx) or refusing the request for a reason a retry may
    cure (credentials not yet provisioned, a registry still starting): retried with backoff."""


class SchemaRejectedError(SchemaRegistryError):
    """The registry refused a schema (409: incompatible with what the subject holds; 422: not
    a valid schema): the bridge refuses to start. Carries the subject and the registry's
    own message."""

    def __init__(self, subject: str, registry_message: str, *, outcome: str, status: int) -> None:
        super().__init__(
            f"schema registry refused subject {subject!r} ({status}): {registry_message}",
            outcome=outcome,
            status=status,
        )
        self.subject = subject
        self.registry_message = registry_message


class TransactionsUnavailableError(BridgeError):
    """exactly_once was asked for, but the cluster cannot run Kafka transactions (a broker
    without them, such as tansu, or no right to a transactional id): the bridge refuses to
    start rather than run with a weaker guarantee than configured."""


class TransactionalIdDeniedError(TransactionsUnavailableError):
    """The cluster runs transactions, but the principal may not use the intake's
    transactional ids."""
