"""Apizee's REST client: one ticket's event list, fetched politely (token bucket, Retry-After,
backoff with jitter, circuit breaker) and split into valid items and items bound for the DLQ.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import pydantic_core
import structlog
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

from bridge import __version__, metrics
from bridge.catalog import EVENTS
from bridge.config import ApizeeSettings
from bridge.dlq import new_request_id
from bridge.errors import (
    ApizeeAuthError,
    ApizeeNotFoundError,
    ApizeeRequestError,
    ApizeeUnavailableError,
    InvalidEventError,
    Problem,
)
from bridge.models import RestEvent, parse_rest_item

log = structlog.get_logger(__name__)

EVENTS_PATH: Final = "/api/v3/tickets/{ticket_id}/events"
USER_AGENT: Final = f"apizee-kafka-bridge/{__version__}"

Clock = Callable[[], float]


# --- What a fetch returns -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvalidItem:
    """A list item (or a whole body) that failed validation: its raw JSON goes to the DLQ.

    `index` is the item's position in the list, None when the whole body was unusable.
    """

    raw: bytes
    error: InvalidEventError
    index: int | None = None

    @property
    def kind(self) -> str:
        return self.error.kind

    @property
    def reason(self) -> str:
        return self.error.reason


@dataclass(frozen=True, slots=True)
class TicketEvents:
    """One ticket's REST event list: valid items (known or unknown eventType) and invalid ones.

    The caller normalizes `items` with `models.from_rest` (an unknown eventType lands on
    `{prefix}.unknown` through its category) and writes `invalid` to `{prefix}.dlq`.
    """

    ticket_id: int
    received_at_ms: int
    items: tuple[RestEvent, ...]
    invalid: tuple[InvalidItem, ...] = ()
    # The id this fetch sent as X-Request-Id (on every attempt): dead letters carry it.
    request_id: str = field(default_factory=new_request_id)

    @property
    def unknown(self) -> tuple[RestEvent, ...]:
        """Valid items whose eventType the catalog does not know."""
        return tuple(item for item in self.items if item.eventType not in EVENTS)


def parse_events_body(body: bytes) -> tuple[list[RestEvent], list[InvalidItem]]:
    """Split a response body into valid items and invalid ones; never raises.

    Same rules as the ingress: bytes that are not JSON are `invalid_json`; a body that is not
    a list, or an item of the wrong shape, is `invalid_envelope`.
    """
    try:
        # The webhook's parser (jiter): integers beyond 64 bits stay exact (orjson makes
        # them floats), NaN is refused, nesting is bounded below what to_json can write.
        parsed: Any = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        # The parser's message gives the position, not the content.
        error = InvalidEventError("invalid_json", [Problem("body", f"not JSON: {exc}")])
        return [], [InvalidItem(body, error)]
    if not isinstance(parsed, list):
        message = f"expected a JSON array of events, got {_json_type(parsed)}"
        error = InvalidEventError("invalid_envelope", [Problem("body", message)])
        return [], [InvalidItem(body, error)]
    valid: list[RestEvent] = []
    invalid: list[InvalidItem] = []
    for index, item in enumerate(parsed):
        try:
            valid.append(parse_rest_item(item))
        except InvalidEventError as exc:
            invalid.append(InvalidItem(pydantic_core.to_json(item), exc, index))
    return valid, invalid


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 10.2.3): delta-seconds or an
    HTTP-date. None when absent or garbled; a date in the past is 0.

    Fractional seconds are accepted, though the RFC only allows integers.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, origin unknown"
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# --- Rate limit -----------------------------------------------------------------------------


class TokenBucket:
    """Client-side rate limit: `rate` requests per second, bursts of up to `burst`.

    Shared by every caller of a client; waiters are served in order (one lock). A 429's
    Retry-After pauses every caller through `pause_for`, not only the one that got it.
    Hand-written: aiolimiter's leaky bucket has no pause, and this is about 30 lines.
    """

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._not_before = 0.0
        self._lock = asyncio.Lock()

    @property
    def paused_until(self) -> float:
        """Clock time before which no request starts (0 when not paused)."""
        return self._not_before

    def pause_for(self, seconds: float) -> None:
        """Let no caller start a request for `seconds` (a pause already longer is kept)."""
        self._not_before = max(self._not_before, self._clock() + seconds)

    async def acquire(self) -> float:
        """Take one token, waiting as long as needed; return the seconds waited (0 if none)."""
        started = self._clock()
        waited = self._lock.locked()
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                delay = max(self._not_before - now, (1.0 - self._tokens) / self._rate)
                if delay <= 0:
                    break
                waited = True
                # Holding the lock while sleeping keeps the order; a pause that arrives
                # meanwhile is seen on the next turn of the loop.
                await asyncio.sleep(delay)
            self._tokens -= 1.0
        return self._clock() - started if waited else 0.0


# --- Circuit breaker ------------------------------------------------------------------------


class CircuitState(IntEnum):
    """The value of the circuit-state gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Stops calling Apizee after `threshold` consecutive failed calls, for `open_seconds`;
    then lets one trial call through: success closes the circuit, failure re-opens it.

    A failure is a call that ended on 5xx, timeouts or connection errors after its retries;
    any other HTTP answer (2xx, 4xx, 429) shows Apizee is up and counts as a success.
    """

    def __init__(self, threshold: int, open_seconds: float, clock: Clock = time.monotonic) -> None:
        self._threshold = threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        metrics.APIZEE_CIRCUIT_STATE.set(CircuitState.CLOSED)

    @property
    def state(self) -> CircuitState:
        return self._state

    def admit(self) -> bool:
        """Let a call through or raise ApizeeUnavailableError; True when it is the trial."""
        if self._state is CircuitState.OPEN:
            if self._clock() - self._opened_at < self._open_seconds:
                raise self._fail_fast()
            self._set(CircuitState.HALF_OPEN)
        if self._state is CircuitState.HALF_OPEN:
            if self._trial_in_flight:
                raise self._fail_fast()
            self._trial_in_flight = True
            return True
        return False

    def check(self, trial: bool) -> None:
        """Before a retry: stop when another call opened the circuit meanwhile."""
        if self._state is not CircuitState.CLOSED and not trial:
            raise self._fail_fast()

    def record_success(self, trial: bool) -> None:
        if trial:
            self._trial_in_flight = False
        self._failures = 0
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)
            log.info("apizee_circuit_closed")

    def record_failure(self, trial: bool) -> None:
        if trial:
            self._trial_in_flight = False
            self._open()
        elif self._state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()

    def release(self, trial: bool) -> None:
        """A call ended without telling anything (cancelled, circuit opened meanwhile)."""
        if trial:
            self._trial_in_flight = False

    def _open(self) -> None:
        self._failures = 0
        self._opened_at = self._clock()
        self._set(CircuitState.OPEN)
        metrics.APIZEE_CIRCUIT_OPENS.inc()
        log.warning("apizee_circuit_opened", open_seconds=self._open_seconds)

    def _set(self, state: CircuitState) -> None:
        self._state = state
        metrics.APIZEE_CIRCUIT_STATE.set(state)

    def _fail_fast(self) -> ApizeeUnavailableError:
        return ApizeeUnavailableError(
            "Apizee circuit is open after repeated failures; not calling it", kind="circuit_open"
        )


# --- Bearer token ---------------------------------------------------------------------------


class BearerToken:
    """The Bearer token: fixed, or read from a file and re-read when the file changes.

    One stat per request (cheap next to an HTTPS request) catches a rotated secret; a
    missing, unreadable or empty file keeps the last good token and is logged once.
    """

    def __init__(self, token: SecretStr | None, path: Path | None) -> None:
        if token is None and path is None:
            raise ValueError("an Apizee token or token file is required")
        self._token = token.get_secret_value() if token is not None else ""
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._problem_logged = False

    def value(self) -> str:
        if self._path is not None:
            self._reload(self._path)
        return self._token

    def _reload(self, path: Path) -> None:
        try:
            st = path.stat()
            # Kubernetes swaps a symlink on rotation: the inode changes even if size and
            # mtime do not.
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._problem(path, f"cannot read token file: {why}")
            return
        text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        if not text:
            self._problem(path, "token file is empty")
            return
        changed = self._stamp is not None and text != self._token
        self._token, self._stamp, self._problem_logged = text, stamp, False
        if changed:
            log.info("apizee_token_reloaded", path=str(path))

    def _problem(self, path: Path, message: str) -> None:
        if not self._problem_logged:
            self._problem_logged = True
            log.error("apizee_token_file_problem", path=str(path), error=message)


# --- The client -----------------------------------------------------------------------------


class _Transient(Exception):  # noqa: N818 - a retry signal inside this module, never raised out
    """A failure worth retrying: 5xx, 429, timeout, connection error."""

    def __init__(
        self, kind: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


def _status_label(status: int) -> str:
    if status in (200, 401, 403, 404, 429):
        return str(status)
    if 500 <= status <= 599:
        return "5xx"
    return "other"


class ApizeeClient:
    """GET /api/v3/tickets/{ticketId}/events for the poller and backfill.

    One client (one aiohttp session, token bucket and circuit breaker) is shared by all its
    callers; `start()`/`close()` or `async with` own the session.
    """

    def __init__(self, settings: ApizeeSettings) -> None:
        if settings.base_url is None:
            raise ValueError("BRIDGE_APIZEE_BASE_URL is not set")
        self._settings = settings
        self._base_url = settings.base_url.rstrip("/")
        self._token = BearerToken(settings.token, settings.token_file)
        self.rate_limiter = TokenBucket(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.circuit = CircuitBreaker(
            settings.circuit_failure_threshold, settings.circuit_open_seconds
        )
        # Equal jitter (AWS): half of the exponential delay fixed, half random, so the first
        # retry waits about backoff_initial_seconds and concurrent retries spread out.
        half_initial = settings.backoff_initial_seconds / 2
        half_max = settings.backoff_max_seconds / 2
        self._backoff = wait_exponential(multiplier=half_initial, max=half_max) + (
            wait_random_exponential(multiplier=half_initial, max=half_max)
        )
        self._session: aiohttp.ClientSession | None = None
        self._auth_failure_logged = False

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout_seconds),
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def fetch_events(self, ticket_id: int) -> TicketEvents:
        """One ticket's events. Malformed items come back in `invalid`, not as exceptions.

        Raises ApizeeAuthError (401/403), ApizeeNotFoundError (404), ApizeeRequestError
        (another 4xx) at once, and ApizeeUnavailableError when retries are exhausted or the
        circuit is open.
        """
        if self._session is None:
            raise RuntimeError("ApizeeClient.start() was not called")
        session = self._session
        request_id = new_request_id()
        trial = self.circuit.admit()
        retrying = AsyncRetrying(
            # The half-open trial is one request, not a burst of retries.
            stop=stop_after_attempt(1 if trial else 1 + self._settings.max_retries),
            wait=self._wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=self._before_retry,
            reraise=True,
        )
        try:
            body: bytes = await retrying(self._attempt, session, ticket_id, trial, request_id)
        except _Transient as exc:
            if exc.kind == "rate_limited":
                self.circuit.record_success(trial)  # Apizee answered: it is up
            else:
                self.circuit.record_failure(trial)
            raise ApizeeUnavailableError(
                f"Apizee ticket {ticket_id}: {exc.kind} after"
                f" {retrying.statistics.get('attempt_number', 1)} attempt(s)",
                kind=exc.kind,
                status=exc.status,
            ) from exc
        except (ApizeeAuthError, ApizeeNotFoundError, ApizeeRequestError):
            self.circuit.record_success(trial)  # Apizee answered: it is up
            raise
        except BaseException:
            # Cancelled, or the circuit opened during our retries: no verdict, but a trial
            # must not stay "in flight" forever.
            self.circuit.release(trial)
            raise
        self.circuit.record_success(trial)
        items, invalid = parse_events_body(body)
        for bad in invalid:
            metrics.APIZEE_INVALID_ITEMS.labels(kind=bad.kind).inc()
        if invalid:
            log.warning(
                "apizee_invalid_items",
                ticket_id=ticket_id,
                request_id=request_id,
                count=len(invalid),
                first_reason=invalid[0].reason,
            )
        return TicketEvents(
            ticket_id=ticket_id,
            received_at_ms=time.time_ns() // 1_000_000,
            items=tuple(items),
            invalid=tuple(invalid),
            request_id=request_id,
        )

    async def _attempt(
        self, session: aiohttp.ClientSession, ticket_id: int, trial: bool, request_id: str
    ) -> bytes:
        self.circuit.check(trial)
        waited = await self.rate_limiter.acquire()
        if waited > 0:
            metrics.APIZEE_RATE_LIMIT_WAITS.inc()
            metrics.APIZEE_RATE_LIMIT_WAIT_SECONDS.inc(waited)
            # The circuit may have opened while this call queued for a token: a failing
            # Apizee must not get the whole queue sent to it anyway.
            self.circuit.check(trial)
        url = self._base_url + EVENTS_PATH.format(ticket_id=ticket_id)
        headers = {"Authorization": f"Bearer {self._token.value()}", "X-Request-Id": request_id}
        label = "other"
        started = time.perf_counter()
        try:
            async with session.get(url, headers=headers) as response:
                label = _status_label(response.status)
                status = response.status
                retry_after_header = response.headers.get("Retry-After")
                body = await response.read()
        except TimeoutError as exc:
            label = "timeout"
            raise _Transient("timeout") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            label = "connection_error"
            raise _Transient("connection_error") from exc
        except aiohttp.ClientError as exc:
            label = "other"
            raise _Transient("client_error") from exc
        finally:
            metrics.APIZEE_REQUESTS.labels(status=label).inc()
            metrics.APIZEE_REQUEST_DURATION.labels(status=label).observe(
                time.perf_counter() - started
            )
        if 200 <= status <= 299:
            self._auth_failure_logged = False
            return body
        if status == 429:
            retry_after = parse_retry_after(retry_after_header)
            if retry_after is not None:
                retry_after = min(retry_after, self._settings.backoff_max_seconds)
                # Every caller shares Apizee's quota: all of them pause, not only this one.
                self.rate_limiter.pause_for(retry_after)
            log.info("apizee_rate_limited", ticket_id=ticket_id, retry_after=retry_after)
            raise _Transient("rate_limited", status, retry_after)
        if 500 <= status <= 599:
            raise _Transient("server_error", status)
        message = f"Apizee answered {status} for ticket {ticket_id}"
        if status in (401, 403):
            # Logged once until a request succeeds again: every ticket would hit it.
            if not self._auth_failure_logged:
                self._auth_failure_logged = True
                log.error(
                    "apizee_auth_failed",
                    status=status,
                    hint="check BRIDGE_APIZEE_TOKEN / BRIDGE_APIZEE_TOKEN_FILE and its role",
                )
            raise ApizeeAuthError(message, status=status)
        if status == 404:
            raise ApizeeNotFoundError(message, status=status)
        raise ApizeeRequestError(message, status=status)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Transient) and exc.kind == "rate_limited":
            if exc.retry_after is None:
                # 429 without a usable Retry-After: back off, all callers together.
                self.rate_limiter.pause_for(self._backoff(state))
            # The shared pause in the token bucket does the waiting.
            return 0.0
        return self._backoff(state)

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "apizee_retry",
            attempt=state.attempt_number,
            kind=exc.kind if isinstance(exc, _Transient) else type(exc).__name__,
            delay=round(state.upcoming_sleep, 3),
        )
