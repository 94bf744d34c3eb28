"""What the local servers of the tests have in common: free loopback ports, a Metadata probe,
a process with a log file and a start/stop lifecycle.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_LOOPBACK = "127.0.0.1"
# free_port() draws from here: below the kernel's ephemeral port range.
_PORT_LOW, _PORT_HIGH = 20_000, 32_000
_rng = random.SystemRandom()
_handed_out: set[int] = set()
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40


class DevBrokerError(RuntimeError):
    """The dev broker could not be found, started or stopped; the message has the log tail."""


class _ExitedEarlyError(DevBrokerError):
    """The process died before answering, typically because it lost the race for its port."""


def java_executable(what: str) -> str:
    """The `java` of $JAVA_HOME, else the one on PATH; `what` names who needs it."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not os.access(java, os.X_OK):
        raise DevBrokerError(f"{what} needs a Java runtime (java on PATH, or JAVA_HOME)")
    return java


def free_port(host: str = _LOOPBACK) -> int:
    """A TCP port that was free on `host` a moment ago, for a server started later.

    Drawn below the kernel's ephemeral range (Linux: 32768-60999): a port the kernel hands
    out (port 0, or the local end of an outgoing connection, such as a Kafka client's)
    could be taken again before our server binds it; these are never handed out.
    """
    for _ in range(200):
        port = _rng.randrange(_PORT_LOW, _PORT_HIGH)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise DevBrokerError(f"no free port in {_PORT_LOW}-{_PORT_HIGH} on {host}")


def probe_metadata(host: str, port: int, timeout: float = 1.0) -> list[tuple[int, str, int]]:
    """Send one Metadata request and return the advertised brokers (node id, host, port).

    Hand-written Metadata v0 (api key 3, the oldest version every broker accepts) because it
    must run synchronously, before any client and outside any event loop.
    """
    correlation_id = 1
    client_id = b"devbroker-probe"
    # Request header v1: api_key, api_version, correlation_id, client_id; body: an empty
    # topic array, which in v0 means "all topics" (we only read the broker list).
    request = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    request += struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        payload = _recv_exactly(sock, size)
    got_id, count = struct.unpack_from(">ii", payload, 0)
    if got_id != correlation_id:
        raise DevBrokerError(f"metadata probe: correlation id {got_id} != {correlation_id}")
    brokers: list[tuple[int, str, int]] = []
    offset = 8
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", payload, offset)
        offset += 6
        broker_host = payload[offset : offset + host_len].decode()
        offset += host_len
        (broker_port,) = struct.unpack_from(">i", payload, offset)
        offset += 4
        brokers.append((node_id, broker_host, broker_port))
    return brokers


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        chunks += chunk
    return bytes(chunks)


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if `process` has not exited within `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _temp_log(prefix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.close(fd)
    return Path(name)


class _LocalServer:
    """A server process of ours on a loopback port: its log file, lifecycle and context use."""

    _name = "server"

    def __init__(
        self,
        port: int | None,
        *,
        host: str,
        log_path: str | os.PathLike[str] | None,
        log_prefix: str,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        self.host = host
        self._port = port
        self.log_path = Path(log_path) if log_path is not None else _temp_log(log_prefix)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevBrokerError(f"the {self._name} has no port until it is started")
        return self._port

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        raise NotImplementedError

    def restart(self) -> Self:
        """Stop if running, then start again on the same port."""
        self.stop()
        return self.start()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the process has not exited within `stop_timeout`."""
        _stop_process(self._process, self.stop_timeout)
        self._release()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, connections reset (a Kafka node keeps what
        reached the page cache; tansu loses everything)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=self.stop_timeout)
        self._release()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _log_tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return (
            f"{type(self).__name__}({self.host}:{self._port}, {state}, log={str(self.log_path)!r})"
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_on_a_port(self, spawn: Callable[[], None]) -> Self:
        """Run `spawn` (launch and wait until ready) on this server's port.

        A port picked by free_port() can be taken before the process binds it: then another
        is picked. An explicit port, or the port of a restart, stays as it is.
        """
        retries = 2 if self._port is None else 0
        if self._port is None:
            self._port = free_port(self.host)
        while True:
            try:
                spawn()
            except _ExitedEarlyError:
                if retries == 0:
                    raise
                retries -= 1
                self._port = free_port(self.host)
            else:
                return self

    def _launch(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Spawn `argv` in a session of its own, its output appended to the log."""
        # Appending keeps the log of earlier runs, so a restart test can show both.
        self._log = self.log_path.open("ab")
        self._log.write(f"--- devbroker: starting {' '.join(argv)}\n".encode())
        self._log.flush()
        try:
            self._process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a Ctrl-C in `make run` reaches the bridge, which then stops
                # the broker after its last flush instead of losing it mid-shutdown.
                start_new_session=True,
            )
        except OSError as exc:
            self._release()
            raise DevBrokerError(f"cannot run {argv[0]!r}: {exc}") from exc

    def _raise_if_exited(self, what: str) -> None:
        """While waiting for readiness: fail at once, with its log, if the process died."""
        process = self._process
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            raise _ExitedEarlyError(
                f"{what} exited early (code {code}) on {self.host}:{self._port}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _release(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _log_tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as log:
            tail = deque(log, maxlen=lines)
    except FileNotFoundError:
        return f"(no log at {path})"
    return b"".join(tail).decode(errors="replace")


async def create_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int = 3,
    replication_factor: int = 1,
    request_timeout_ms: int = 10_000,
) -> None:
    """Create `topics`; ones that already exist are fine, any other error raises."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    names = list(topics)
    if not names:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=request_timeout_ms
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor) for name in names],
            timeout_ms=request_timeout_ms,
        )
    finally:
        await admin.close()
    topic_already_exists = 36  # Kafka error code TOPIC_ALREADY_EXISTS
    failures = [
        f"{topic}: {code} {message}"
        # v0 responses carry (topic, code); v1+ add an error message.
        for topic, code, *message in response.topic_errors
        if code not in (0, topic_already_exists)
    ]
    if failures:
        raise DevBrokerError("create_topics failed: " + "; ".join(failures))
