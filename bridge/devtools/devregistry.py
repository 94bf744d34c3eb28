"""A throwaway Schema Registry for the tests: Apicurio Registry (built by `make registry` from
devregistry/), H2 in memory, on a loopback port; its Confluent-compatible API is `url`.

Dev tooling only, like bridge.devtools.devbroker: it needs a Java runtime and the built jar.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final, Self

from bridge.devtools.devbroker import DevBrokerError
from bridge.devtools.devbroker._local import _LocalServer, _port_accepts, java_executable

# Overrides where the runnable jar is (default: what `make registry` builds in this checkout).
REGISTRY_JAR_ENV: Final = "APICURIO_REGISTRY_JAR"
CCOMPAT_PATH: Final = "/apis/ccompat/v7"
_LOOPBACK: Final = "127.0.0.1"
_POLL_INTERVAL: Final = 0.1
_DEFAULT_JAR: Final = (
    Path(__file__).resolve().parents[2]
    / "devregistry"
    / "server"
    / "target"
    / "apicurio-registry-runner.jar"
)


def registry_jar() -> Path:
    """The runnable jar of the test registry; DevBrokerError naming `make registry` if absent."""
    jar = Path(os.environ.get(REGISTRY_JAR_ENV) or _DEFAULT_JAR)
    if not jar.is_file():
        raise DevBrokerError(
            f"no Apicurio Registry jar at {jar}: run `make registry` (or set {REGISTRY_JAR_ENV})"
        )
    return jar


class RegistryServer(_LocalServer):
    """Apicurio Registry on a free loopback port, in memory: a restart starts empty.

    with RegistryServer() as registry:
        registry.url  # http://127.0.0.1:PORT/apis/ccompat/v7
    """

    _name = "schema registry"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = _LOOPBACK,
        jar: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        heap: str = "384m",
        start_timeout: float = 120.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            port,
            host=host,
            log_path=log_path,
            log_prefix="apicurio-",
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        self._jar = Path(jar) if jar is not None else None
        self.heap = heap
        self.started_in: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what BRIDGE_SCHEMA_REGISTRY_URL takes."""
        return self.base_url + CCOMPAT_PATH

    def start(self) -> Self:
        """Spawn the registry and return once its Confluent API answers (a few seconds)."""
        if self.is_running:
            return self
        jar = self._jar or registry_jar()
        java = java_executable("the test registry")
        return self._start_on_a_port(lambda: self._spawn(java, jar))

    def _spawn(self, java: str, jar: Path) -> None:
        if _port_accepts(self.host, self.port):
            raise DevBrokerError(f"{self.host}:{self.port} is already taken by another process")
        argv = [
            java,
            f"-Xmx{self.heap}",
            # A test server: start fast rather than peak throughput.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dquarkus.http.host={self.host}",
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.http.access-log.enabled=false",
            "-jar",
            str(jar),
        ]
        started = time.monotonic()
        self._launch(argv)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        self.started_in = time.monotonic() - started

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        probe = f"{self.url}/subjects"
        last_error: object = None
        while time.monotonic() < deadline:
            self._raise_if_exited("Apicurio Registry")
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:  # noqa: S310
                    response.read()
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
            except OSError as exc:
                last_error = exc
            time.sleep(_POLL_INTERVAL)
        raise DevBrokerError(
            f"Apicurio Registry on {self.base_url} did not answer GET {probe} within"
            f" {self.start_timeout}s ({last_error!r}); log {self.log_path}:\n{self.log_tail()}"
        )
