"""The webhook ingress: Apizee's `conversationevent.create` POSTs in, Kafka acks out.

The handler does the business (read, authenticate, validate, dedupe, publish); `observe`,
around it, maps every outcome to a status, a JSON body and the request metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Protocol

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http import HttpVersion11

from bridge import dlq, metrics
from bridge.admission import BodyBudget, new_request_id
from bridge.auth import Authenticator, AuthError
from bridge.config import BridgeSettings
from bridge.dedupe import RecentIds
from bridge.errors import (
    BodyTooLargeError,
    BridgeError,
    CodecError,
    InvalidEventError,
    OverCapacityError,
    PublishError,
    PublishTimeoutError,
    RecordTooLargeError,
    RequestTimeoutError,
    SchemasNotRegisteredError,
    UnsupportedMediaTypeError,
)
from bridge.logs import Throttled
from bridge.models import CanonicalEvent, from_webhook, parse_webhook
from bridge.publisher import Publisher

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER: Final = "X-Request-Id"
# A caller's request id is echoed and logged only if it is short and plain (no log injection).
_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_JSON: Final = "application/json"
# How stale the in-flight and dedupe gauges may be between scrapes (seconds).
GAUGE_INTERVAL: Final = 0.1


class Tracker(Protocol):
    """Downstream of a publish: the ticket state and the poller (when Apizee is configured)."""

    @property
    def not_ready_reason(self) -> str | None: ...

    def seen(self, ticket_id: int, event_id: int) -> bool:
        """True if the ticket state says this event was already published."""
        ...

    def published(self, event: CanonicalEvent) -> None:
        """Record a published event and keep its ticket polled."""
        ...


class Schemas(Protocol):
    """Registry mode: the registration of the schemas (bridge.registry.SchemaRegistration)."""

    @property
    def not_ready_reason(self) -> str | None: ...


class EventSink(Protocol):
    """Where events go: the Publisher (at_least_once), or exactly_once's intake, whose
    publish() returns once the transaction holding the event committed."""

    async def publish(self, event: CanonicalEvent) -> None: ...


class Delivery(Protocol):
    """exactly_once: the intake group's member (bridge.exactly_once.ExactlyOnce)."""

    @property
    def not_ready_reason(self) -> str | None: ...


@dataclass
class Ingress:
    """What the webhook handler needs, shared with the admin app for readiness."""

    settings: BridgeSettings
    publisher: Publisher
    authenticator: Authenticator
    dedupe: RecentIds
    tracker: Tracker | None = None
    schemas: Schemas | None = None
    # exactly_once: the intake (events go through it) and its engine (readiness).
    sink: EventSink | None = None
    delivery: Delivery | None = None
    shutting_down: bool = field(default=False)
    # Webhooks being handled now; the gauge samples it (see sample_gauges).
    in_flight: int = field(default=0)
    # Body bytes being read or handled (BRIDGE_INGRESS_MAX_BODY_BYTES_IN_FLIGHT).
    budget: BodyBudget = field(init=False)
    # Connections open on the public port, once its server runs (for the gauge).
    connections: Callable[[], int] = field(default=lambda: 0)

    def __post_init__(self) -> None:
        self.budget = BodyBudget(self.settings.ingress.max_body_bytes_in_flight)

    @property
    def not_ready_reason(self) -> str | None:
        if self.shutting_down:
            return "shutting down"
        reason = self.publisher.not_ready_reason
        if reason is None and self.schemas is not None:
            reason = self.schemas.not_ready_reason
        if reason is None and self.delivery is not None:
            reason = self.delivery.not_ready_reason
        if reason is None and self.tracker is not None:
            reason = self.tracker.not_ready_reason
        return reason


INGRESS: Final = web.AppKey("ingress", Ingress)
# Per request: its id, and the outcome when the handler answers without raising.
REQUEST_ID: Final = web.RequestKey("request_id", str)
REASON: Final = web.RequestKey("reason", str)


def _json(
    status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID_RE.fullmatch(given):
        return given
    return new_request_id()


def _error_response(exc: Exception, ingress: Ingress) -> tuple[web.Response, str]:
    """The one place that maps each error to its status and metric reason."""
    if isinstance(exc, InvalidEventError):
        return _json(400, {"status": "invalid", "reason": exc.reason}), exc.kind
    if isinstance(exc, AuthError):
        headers = None
        if "basic" in ingress.authenticator.methods:
            headers = {"WWW-Authenticate": 'Basic realm="apizee-kafka-bridge"'}
        return _json(401, {"status": "unauthorized", "reason": exc.reason}, headers), exc.reason
    if isinstance(exc, BodyTooLargeError):
        limit = ingress.settings.ingress.max_body_bytes
        body = {"status": "too_large", "reason": f"body larger than {limit} bytes"}
        return _json(413, body), "body_too_large"
    if isinstance(exc, RecordTooLargeError):
        # Definitive: the record will never fit its topic, so the sender must not retry.
        return _json(413, {"status": "too_large", "reason": exc.reason}), "record_too_large"
    if isinstance(exc, RequestTimeoutError):
        timeout = ingress.settings.ingress.request_timeout_seconds
        body = {"status": "timeout", "reason": f"body not received within {timeout:g}s"}
        return _json(408, body, {"Connection": "close"}), "request_timeout"
    if isinstance(exc, UnsupportedMediaTypeError):
        body = {"status": "unsupported_media_type", "reason": exc.reason}
        return _json(415, body), "unsupported_media_type"
    if isinstance(exc, OverCapacityError):
        # Before the body was read: closing spares reading what the sender still sends.
        headers = {
            "Retry-After": str(ingress.settings.ingress.retry_after_seconds),
            "Connection": "close",
        }
        body = {"status": "unavailable", "reason": "too many webhook bodies in flight"}
        return _json(503, body, headers), "over_capacity"
    if isinstance(exc, PublishError):
        retry_after = {"Retry-After": str(ingress.settings.ingress.retry_after_seconds)}
        why = str(exc) if isinstance(exc, SchemasNotRegisteredError) else None
        body = {"status": "unavailable", "reason": why or f"Kafka did not acknowledge: {exc.kind}"}
        return _json(503, body, retry_after), exc.kind
    return _json(500, {"status": "error", "reason": "internal error"}), "internal_error"


_OVER_BUDGET: Final = Throttled("webhooks_over_budget")
_UNAVAILABLE: Final = Throttled("webhook_failed")
_REQUESTS_BY: Final = metrics.Children(metrics.WEBHOOK_REQUESTS)
_DURATION_BY: Final = metrics.Children(metrics.WEBHOOK_DURATION)
_DUPLICATES_BY: Final = metrics.Children(metrics.DUPLICATES)


async def observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, in-flight gauge, outcome metrics and the error mapping around `handler`."""
    ingress = request.app[INGRESS]
    request_id = _request_id(request)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    ingress.in_flight += 1
    try:
        response = await handler(request)
        reason: str = request.get(REASON, "accepted")
    except web.HTTPException:
        # Routing errors (404, 405) from aiohttp itself: answered as they are, not counted.
        raise
    except (BridgeError, Exception) as exc:
        response, reason = _error_response(exc, ingress)
        if isinstance(exc, OverCapacityError):
            _OVER_BUDGET(budget_bytes=ingress.budget.limit)
        elif isinstance(exc, PublishError):
            # Kafka down: every webhook fails alike; counted each, logged once per 10 s.
            _UNAVAILABLE(
                request_id=request_id,
                status=response.status,
                reason=reason,
                error=type(exc).__name__,
                consequence="answered 503 with Retry-After: the sender retries, the poller"
                " fills the gap",
            )
        elif response.status >= 500:
            log_call = log.error if response.status == 500 else log.warning
            log_call(
                "webhook_failed",
                request_id=request_id,
                status=response.status,
                reason=reason,
                error=type(exc).__name__,
                exc_info=response.status == 500,
            )
        elif isinstance(exc, RecordTooLargeError):
            # An operator's matter (topic limits), not only the sender's: say which sizes.
            log.warning(
                "webhook_refused",
                request_id=request_id,
                status=response.status,
                reason=reason,
                topic=exc.topic,
                record_bytes=exc.size,
                limit_bytes=exc.limit,
                by_broker=exc.by_broker,
            )
        else:
            log.info(
                "webhook_refused", request_id=request_id, status=response.status, reason=reason
            )
    finally:
        ingress.in_flight -= 1
    response.headers[REQUEST_ID_HEADER] = request_id
    status = str(response.status)
    _REQUESTS_BY(status, reason).inc()
    _DURATION_BY(status).observe(time.perf_counter() - started)
    return response


async def receive_webhook(request: web.Request) -> web.Response:
    """POST {path}: one Apizee event; answered only after Kafka acknowledged it.

    Everything that can be refused from the headers is, before the body is read (and before
    `100 Continue`, for a sender that waits for it): credentials that do not need the body
    (token, basic; a missing or malformed signature) first, so that a stranger learns
    nothing but 401; then media type, size from Content-Length, and the worker's budget of
    body bytes in flight.
    """
    ingress = request.app[INGRESS]
    settings = ingress.settings.ingress
    now = time.time()
    admitted = ingress.authenticator.admit(request.headers, request.query, now)
    if request.content_type != _JSON:
        raise UnsupportedMediaTypeError
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        # Apizee does not compress; decoding before authentication would be a bomb anyway.
        raise UnsupportedMediaTypeError(f"Content-Encoding {encoding[:40]!r} is not supported")
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise BodyTooLargeError
    if request.content.is_eof():
        # The whole body came with the headers (the usual small webhook): it is in memory
        # already, within what aiohttp buffers per connection (bounded by the connection
        # cap), so it waits for nothing and takes no budget: a flood of large bodies cannot
        # crowd out ordinary webhooks.
        reserved = 0
    else:
        # A chunked body's length is known only once read: it may be as large as the limit.
        reserved = settings.max_body_bytes if length is None else length
    if not ingress.budget.take(reserved):
        raise OverCapacityError
    try:
        if reserved and _expects_continue(request):
            # Everything the headers can decide is decided: the sender may send its body.
            # Only a well-formed HMAC signature gets here unauthenticated; its body is read
            # within the size limit and the budget just taken, then verified (401 if not).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the 100 is not part of the response's size
        return await _receive(request, ingress, admitted, now)
    finally:
        ingress.budget.give_back(reserved)


def _expects_continue(request: web.BaseRequest) -> bool:
    return (
        request.version == HttpVersion11
        and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"
    )


async def _decide_before_continue(request: web.Request) -> web.StreamResponse | None:
    """The routes' expect handler: no `100 Continue` yet.

    aiohttp's default sends it as soon as the headers are in, before the handler decided
    anything: a stranger, or a body over the limit, would be invited to send its bytes
    first. The webhook handler sends it once the headers passed (receive_webhook); other
    routes answer without ever asking for the body.
    """
    if request.version == HttpVersion11 and not _expects_continue(request):
        body = {"status": "expectation_failed", "reason": "only Expect: 100-continue"}
        return _json(417, body, {REQUEST_ID_HEADER: _request_id(request)})
    return None


async def _receive(
    request: web.Request, ingress: Ingress, admitted: str | None, now: float
) -> web.Response:
    settings = ingress.settings.ingress
    try:
        # Bounded by the app's client_max_size, also for chunked bodies without a length,
        # and in time: a sender trickling its body must not hold the connection forever.
        if request.content.is_eof():
            # The whole body came with the headers (the usual case): reading it cannot
            # wait, so it needs no timer.
            body = await request.read()
        else:
            async with asyncio.timeout(settings.request_timeout_seconds):
                body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLargeError from None
    except TimeoutError:
        raise RequestTimeoutError from None
    metrics.WEBHOOK_BODY_BYTES.observe(len(body))
    if admitted is None:
        ingress.authenticator.verify_body(request.headers, body, now)

    received_at_ms = time.time_ns() // 1_000_000
    try:
        event = from_webhook(parse_webhook(body), received_at_ms)
    except InvalidEventError as exc:
        # Nothing Apizee sends is lost: the raw bytes go to the DLQ before the 400 (and a
        # DLQ failure becomes a 503, so that the sender retries; a DLQ too small for the
        # body, a 413).
        await ingress.publisher.publish_dlq(
            body,
            kind=exc.kind,
            reason=exc.reason,
            headers=dlq.webhook_headers(
                request_id=request[REQUEST_ID],
                received_at_ms=received_at_ms,
                ticket_id=dlq.ticket_in_body(body),
            ),
        )
        raise

    dlq_headers = dlq.webhook_headers(
        request_id=request[REQUEST_ID], received_at_ms=received_at_ms, ticket_id=event.ticket_id
    )
    tracker = ingress.tracker
    # A delivery of this id still on its way (maybe a record abandoned by an earlier 503) is
    # waited for, as long as a publish of our own would be: never a second copy meanwhile.
    within = ingress.settings.kafka.publish_timeout_seconds
    if (tracker is not None and tracker.seen(event.ticket_id, event.event_id)) or not (
        await ingress.dedupe.claim(event.event_id, within)
    ):
        request[REASON] = "duplicate"
        _DUPLICATES_BY("WEBHOOK").inc()
        return _json(200, {"status": "duplicate", "eventId": event.event_id})
    published = False
    landing = None
    try:
        await (ingress.sink or ingress.publisher).publish(event)
        published = True
    except PublishTimeoutError as exc:
        # Maybe stored: the id stays claimed until the record's outcome is known.
        landing = exc.landing
        raise
    except RecordTooLargeError as exc:
        # Valid, but its record can never fit its topic: kept raw on the DLQ, answered 413.
        await ingress.publisher.publish_dlq(
            body, kind="record_too_large", reason=exc.reason, headers=dlq_headers
        )
        raise
    except CodecError as exc:
        # A defect of ours, not of the sender: keep the bytes, answer 500.
        log.error("encode_failed", request_id=request[REQUEST_ID], error=str(exc))
        await ingress.publisher.publish_dlq(
            body,
            kind="encode_error",
            reason=str(exc),
            headers=dlq_headers,
        )
        raise
    finally:
        if landing is not None:
            on_landed = None if tracker is None else partial(tracker.published, event)
            ingress.dedupe.release_when_landed(event.event_id, landing, on_landed)
        else:
            ingress.dedupe.release(event.event_id, published)
    if tracker is not None:
        tracker.published(event)

    if event.spec is None:
        request[REASON] = "unknown_event_type"
        return _json(202, {"status": "unknown_event_type", "eventId": event.event_id})
    return _json(200, {"status": "accepted", "eventId": event.event_id})


def sample_gauges(ingress: Ingress) -> None:
    """The ingress's gauges, from its counts: set on an interval and on each scrape rather
    than on every request (a gauge update per request costs more than the request's share)."""
    metrics.WEBHOOKS_IN_FLIGHT.set(ingress.in_flight)
    metrics.DEDUPE_ENTRIES.set(len(ingress.dedupe))
    metrics.WEBHOOK_BODY_BYTES_IN_FLIGHT.set(ingress.budget.used)
    metrics.CONNECTIONS.set(ingress.connections())


async def _sample_gauges_forever(ingress: Ingress) -> None:
    while True:
        sample_gauges(ingress)
        await asyncio.sleep(GAUGE_INTERVAL)


async def _gauges(app: web.Application) -> AsyncIterator[None]:
    ingress = app[INGRESS]
    sampler = asyncio.create_task(_sample_gauges_forever(ingress), name="ingress-gauges")
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        sample_gauges(ingress)


async def handle_webhook(request: web.Request) -> web.StreamResponse:
    """The webhook route: `receive_webhook` observed."""
    return await observe(request, receive_webhook)


async def _not_found(request: web.Request) -> web.Response:
    return _json(
        404,
        {"status": "not_found", "reason": "no such resource"},
        {REQUEST_ID_HEADER: _request_id(request)},
    )


async def _method_not_allowed(request: web.Request) -> web.Response:
    return _json(
        405,
        {"status": "method_not_allowed", "reason": "only POST"},
        {REQUEST_ID_HEADER: _request_id(request), "Allow": "POST"},
    )


def build_public_app(ingress: Ingress) -> web.Application:
    """The public port: the webhook route, observed; anything else 404 or 405, in JSON
    with a request id like every answer (not counted as webhooks).

    Not an aiohttp middleware: with none, aiohttp skips its middleware chain on every
    request.
    """
    settings = ingress.settings.ingress
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[INGRESS] = ingress
    webhook = app.router.add_resource(settings.path)
    webhook.add_route("POST", handle_webhook, expect_handler=_decide_before_continue)
    webhook.add_route("*", _method_not_allowed, expect_handler=_decide_before_continue)
    app.router.add_route("*", "/{anything:.*}", _not_found, expect_handler=_decide_before_continue)
    app.cleanup_ctx.append(_gauges)
    return app


async def metrics_handler(request: web.Request) -> web.Response:
    sample_gauges(request.app[INGRESS])
    return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    reason = request.app[INGRESS].not_ready_reason
    if reason:
        return _json(503, {"status": "not_ready", "reason": reason})
    return _json(200, {"status": "ready"})


def build_admin_app(ingress: Ingress) -> web.Application:
    """The admin port: /metrics, /healthz, /readyz; never on the public port."""
    app = web.Application()
    app[INGRESS] = ingress
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class AccessLogger(AbstractAccessLogger):
    """One structured line per request: path without the query (it may hold the token)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info(
            "http_request",
            method=request.method,
            path=request.path,
            status=response.status,
            seconds=round(time, 6),
            request_id=response.headers.get(REQUEST_ID_HEADER),
        )

    @property
    def enabled(self) -> bool:
        return True
