"""Open-loop HTTP load for bench/ingress.py: request i is due at t0 + i/rate whatever happened
to the requests before it, and its latency runs from that due time, so a stall of the server
shows up as latency instead of as fewer requests sent (no coordinated omission, as wrk2).

Keep-alive HTTP/1.1 on a fixed pool of connections, one request in flight on each: a request
due while every connection is busy waits for the next free one, and that wait is part of its
latency. How late each request went out is reported apart, split into the generator's own lag
(it woke up late) and waits for a connection, so a generator that falls behind is seen.
Prints one JSON line: exact percentiles from every sample of the measured part.
Usage: python bench/loadgen.py SPEC.json (see `Spec`); the caller pins it to a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import math
import os
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import uvloop

NS = 1_000_000_000
LATE_NS = 1_000_000  # a request sent more than 1 ms after its due time is "late"
DRAIN_SECONDS = 10.0  # after the last due time, how long answers may still come
TICKETS = 1000


# -- a timer with nanosecond resolution ---------------------------------------------------


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class DueTimer:
    """A Linux timerfd on CLOCK_MONOTONIC (the clock of time.monotonic_ns), armed at absolute
    times. asyncio's and uvloop's own timers round to milliseconds: they alone would make
    requests up to 1 ms late. Python 3.13 has os.timerfd_create; 3.11 needs libc."""

    _CLOCK_MONOTONIC = 1
    _TFD_TIMER_ABSTIME = 1

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd: int = self._libc.timerfd_create(
            self._CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC
        )
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self._spec = _Itimerspec()

    def arm(self, at_ns: int) -> None:
        """Readable at `at_ns` (monotonic), at once if that is past."""
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(max(at_ns, 1), NS)
        if self._libc.timerfd_settime(
            self.fd, self._TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None
        ):
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


# -- the run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    """What to send, read from the JSON file the caller writes."""

    host: str
    port: int
    path: str
    headers: dict[str, str]
    bodies: list[str]  # request i sends bodies[i % n] % (id_base + i, i % TICKETS + 1)
    id_base: int
    rate: float  # requests per second
    warmup: float  # seconds sent on the same schedule, not measured
    seconds: float  # measured
    connections: int


@dataclass(frozen=True, slots=True)
class Result:
    rate: float  # offered, requests/s
    seconds: float
    connections: int
    sent: int  # measured requests (all of them are sent, late or not)
    ok: int  # 2xx answers to measured requests
    ok_total: int  # 2xx answers, warm-up included
    non2xx: int  # warm-up included, as every error below
    statuses: str
    socket_errors: int  # connections lost with a request in flight
    unanswered: int  # no answer within DRAIN_SECONDS after the last due time
    achieved: float  # 2xx answers to measured requests per second (see _result)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    lag_p50_ms: float  # how late measured requests were sent
    lag_p99_ms: float
    lag_max_ms: float
    late: int  # sent more than 1 ms late by the generator (woke up late, or busy with answers)
    queued: int  # sent late because every connection was busy (server-caused)
    max_in_flight: int
    cpu_seconds: float  # the generator's own, whole run
    # Request i was due at t0_ns + i/rate (CLOCK_MONOTONIC, shared by the machine's
    # processes): a reader of the topics times each event from its due time.
    t0_ns: int = 0
    first_measured: int = 0


def percentile(ordered: list[int], p: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in milliseconds."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] / 1e6


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight."""

    def __init__(self, load: OpenLoop) -> None:
        self._load = load
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.due = 0  # due time of the request in flight, 0 if none
        self.measured = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            # Servers under test answer with Content-Length (aiohttp does for plain responses).
            head = bytes(buffer[:end]).lower()
            start = head.find(b"\r\ncontent-length:")
            if start < 0:
                # Counted as a socket error: the request in flight gets no answer.
                print(f"loadgen: answer without Content-Length: {head[:200]!r}", file=sys.stderr)
                assert self.transport is not None
                self.transport.close()
                return
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : stop if stop >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                return
            status = int(buffer[9:12])
            del buffer[: end + 4 + length]
            self._load.answered(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._load.lost(self)


class OpenLoop:
    """One run: the schedule, the pool of connections, and every sample."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._loop = asyncio.get_running_loop()
        head = f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in spec.headers.items()
        )
        self._head = head.encode()
        self._bodies = [body.encode() for body in spec.bodies]
        self._total = round(spec.rate * (spec.warmup + spec.seconds))
        self._first_measured = round(spec.rate * spec.warmup)
        self._t0 = 0
        self._next = 0
        self._idle: deque[_Connection] = deque()
        self._pending: deque[tuple[int, int]] = deque()  # (i, due) waiting for a connection
        self._in_flight = 0
        self._max_in_flight = 0
        self._latencies: list[int] = []
        self._lags: list[int] = []
        self._late = self._queued = 0
        self._measured_ok = 0
        self._statuses: Counter[int] = Counter()
        self._socket_errors = 0
        self._reconnects: set[asyncio.Task[None]] = set()
        self._last_answer = 0
        self._timer = DueTimer()
        self._done: asyncio.Future[None] = self._loop.create_future()

    def _due(self, i: int) -> int:
        return self._t0 + round(i * NS / self.spec.rate)

    async def _connect(self) -> None:
        _, protocol = await self._loop.create_connection(
            lambda: _Connection(self), self.spec.host, self.spec.port
        )
        self._free(protocol)

    async def run(self) -> Result:
        spec = self.spec
        await asyncio.gather(*(self._connect() for _ in range(spec.connections)))
        cpu = time.process_time()
        # The run allocates no cycles worth a pause: a collection would only add latency.
        gc.collect()
        gc.freeze()
        gc.disable()
        self._t0 = time.monotonic_ns() + NS // 20
        self._loop.add_reader(self._timer.fd, self._tick)
        self._timer.arm(self._t0)
        end = self._due(self._total) / NS - time.monotonic_ns() / NS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._done), end + DRAIN_SECONDS)
        self._loop.remove_reader(self._timer.fd)
        self._timer.close()
        gc.enable()
        cpu = time.process_time() - cpu
        for connection in list(self._idle):
            if connection.transport is not None:
                connection.transport.close()
        return self._result(cpu)

    def _tick(self) -> None:
        self._timer.clear()
        now = time.monotonic_ns()
        while self._next < self._total:
            due = self._due(self._next)
            if due > now:
                self._timer.arm(due)
                return
            self._issue(self._next, due)
            self._next += 1
        self._loop.remove_reader(self._timer.fd)
        self._check_done()

    def _issue(self, i: int, due: int) -> None:
        if self._idle:
            self._send(self._idle.popleft(), i, due, queued=False)
        else:
            self._pending.append((i, due))

    def _send(self, connection: _Connection, i: int, due: int, *, queued: bool) -> None:
        body = self._bodies[i % len(self._bodies)] % (self.spec.id_base + i, i % TICKETS + 1)
        request = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)
        now = time.monotonic_ns()
        assert connection.transport is not None
        connection.transport.write(request)
        connection.due = due
        connection.measured = i >= self._first_measured
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        if connection.measured:
            lag = now - due
            self._lags.append(lag)
            if queued:
                self._queued += 1
            elif lag > LATE_NS:
                self._late += 1

    def answered(self, connection: _Connection, status: int) -> None:
        now = time.monotonic_ns()
        # Every answer's latency counts, errors too (the run fails on any error anyway).
        if connection.measured:
            self._latencies.append(now - connection.due)
            self._last_answer = now
            self._measured_ok += 200 <= status < 300
        self._statuses[status] += 1
        connection.due = 0
        self._in_flight -= 1
        self._free(connection)
        self._check_done()

    def _free(self, connection: _Connection) -> None:
        if self._pending:
            i, due = self._pending.popleft()
            self._send(connection, i, due, queued=True)
        else:
            self._idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        """The server closed a connection: its request (if any) failed; open another."""
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        if connection.due:
            self._socket_errors += 1
            self._in_flight -= 1
            connection.due = 0
        if not self._done.done():
            task = self._loop.create_task(self._connect())
            self._reconnects.add(task)
            task.add_done_callback(self._reconnected)
        self._check_done()

    def _reconnected(self, task: asyncio.Task[None]) -> None:
        self._reconnects.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._socket_errors += 1  # the pool is one connection smaller from now on

    def _check_done(self) -> None:
        finished = self._next >= self._total and not self._in_flight and not self._pending
        if finished and not self._done.done():
            self._done.set_result(None)

    def _result(self, cpu: float) -> Result:
        spec = self.spec
        latencies, lags = sorted(self._latencies), sorted(self._lags)
        non2xx = sum(n for status, n in self._statuses.items() if not 200 <= status < 300)
        # From the first measured due time to the last answer, at least the measured seconds.
        span = max(spec.seconds, (self._last_answer - self._due(self._first_measured)) / NS)
        return Result(
            rate=spec.rate,
            seconds=spec.seconds,
            connections=spec.connections,
            sent=self._total - self._first_measured,
            ok=self._measured_ok,
            ok_total=sum(self._statuses.values()) - non2xx,
            non2xx=non2xx,
            statuses=" ".join(str(s) for s in sorted(self._statuses) if not 200 <= s < 300),
            socket_errors=self._socket_errors,
            unanswered=self._in_flight + len(self._pending),
            achieved=self._measured_ok / span if span > 0 else math.nan,
            p50_ms=percentile(latencies, 50),
            p90_ms=percentile(latencies, 90),
            p99_ms=percentile(latencies, 99),
            p999_ms=percentile(latencies, 99.9),
            max_ms=latencies[-1] / 1e6 if latencies else math.nan,
            lag_p50_ms=percentile(lags, 50),
            lag_p99_ms=percentile(lags, 99),
            lag_max_ms=lags[-1] / 1e6 if lags else math.nan,
            late=self._late,
            queued=self._queued,
            max_in_flight=self._max_in_flight,
            cpu_seconds=cpu,
            t0_ns=self._t0,
            first_measured=self._first_measured,
        )


def load_spec(path: Path) -> Spec:
    data: dict[str, Any] = json.loads(path.read_text())
    return Spec(**data)


async def main(spec: Spec) -> None:
    result = await OpenLoop(spec).run()
    print("BENCH_JSON " + json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    uvloop.run(main(load_spec(Path(sys.argv[1]))))
