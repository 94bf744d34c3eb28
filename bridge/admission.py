"""Admission control of the public port: what is refused before a request's body is read.

A cap on connections per worker, a budget of body bytes in flight, and the answers aiohttp
gives by itself (HTTP-layer 400s) in the bridge's JSON with an `X-Request-Id`, like every
other answer. Memory stays bounded whatever strangers send: nothing is buffered for them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from typing import Any, Final, cast

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from bridge import metrics
from bridge.logs import Throttled

log = structlog.get_logger(__name__)

# After a refusal whose request body was not read, what the sender still sends is read and
# discarded for this long (no buffering), so that it sees the answer rather than a reset.
LINGER_SECONDS: Final = 2.0


class _RequestIds:
    """New request ids: 32 hex digits, a random per-process prefix and a counter.

    As unique as uuid4 in practice (64 random bits per process, a counter within it) at a
    fraction of its cost; the prefix is drawn again in a forked child.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_REQUEST_IDS: Final = _RequestIds()


def new_request_id() -> str:
    """A fresh request id (the caller's own is used when it sends a plain one)."""
    return _REQUEST_IDS.next()


class BodyBudget:
    """Body bytes the handlers hold (or are about to read), against a per-worker limit.

    A request takes its declared length before its body is read and gives it back once it
    is answered; one that does not fit is refused at once (503 with Retry-After).
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


def _answer(
    status: str, code: int, body: dict[str, str], request_id: str, headers: dict[str, str]
) -> bytes:
    """A whole HTTP/1.1 response that closes its connection, for answers given without
    aiohttp's request machinery."""
    payload = orjson.dumps(body)
    lines = [
        f"HTTP/1.1 {code} {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        f"X-Request-Id: {request_id}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + payload


class _OverCapacity(asyncio.Protocol):
    """A connection beyond the cap: answered 503 at once, its bytes discarded, then closed."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._close: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are TCP transports.
        transport = cast(asyncio.Transport, transport)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._close = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        """Discarded: nothing of a refused connection is kept."""

    def eof_received(self) -> bool:
        return False  # the sender is done too: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close is not None:
            self._close.cancel()


class _PublicHandler(RequestHandler):
    """aiohttp's connection handler, with its own 400s (a request line or header it cannot
    parse) answered in JSON with a request id, and logged as one line instead of a trace."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = new_request_id()
        if status >= 500:
            log.error("http_error", request_id=request_id, status=status, exc_info=exc)
            reason = "internal error"
        else:
            reason = (message or "bad request").splitlines()[0][:200]
            log.info("http_refused", request_id=request_id, status=status, reason=reason)
        response = web.Response(
            status=status,
            body=orjson.dumps(
                {"status": "bad_request" if status < 500 else "error", "reason": reason}
            ),
            content_type="application/json",
            headers={"X-Request-Id": request_id},
        )
        response.force_close()
        return response


class _PublicServer(web.Server):
    """aiohttp's server for the public port: over `max_connections`, a new connection gets
    `_OverCapacity`; below, the bridge's own connection handler."""

    max_connections: int
    retry_after_seconds: int

    def __call__(self) -> Any:
        # `connections` is aiohttp's own count: handlers from accept to close.
        if len(self._connections) >= self.max_connections:
            metrics.CONNECTIONS_REFUSED.inc()
            _CONNECTIONS_REFUSED(max_connections=self.max_connections)
            answer = _answer(
                "Service Unavailable",
                503,
                {"status": "unavailable", "reason": "too many connections, retry later"},
                new_request_id(),
                {"Retry-After": str(self.retry_after_seconds)},
            )
            return _OverCapacity(answer)
        return _PublicHandler(self, loop=self._loop, **self._kwargs)


_CONNECTIONS_REFUSED: Final = Throttled("connections_refused")


class PublicRunner(web.AppRunner):
    """The public port's runner: aiohttp's AppRunner with the admission rules above."""

    def __init__(
        self, app: web.Application, *, max_connections: int, retry_after_seconds: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self._retry_after_seconds = retry_after_seconds

    @property
    def connections(self) -> int:
        """Connections open on the public port now."""
        return 0 if self.server is None else len(self.server.connections)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server with arguments of its own (the app's handler, request
        # factory, handler options); the subclass only adds behaviour, no state of its own
        # beyond two settings, so adopting the built instance is the smallest hook.
        server.__class__ = _PublicServer
        assert isinstance(server, _PublicServer)
        server.max_connections = self._max_connections
        server.retry_after_seconds = self._retry_after_seconds
        return server
