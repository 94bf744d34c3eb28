"""The bridge's TLS and SASL settings against a real broker process.

What the dev broker, tansu 0.6.0, can do here (as observed; see the skip reasons):

* TLS: its `--cert` and `--key` flags are declared mutually exclusive ("the argument
  '--cert <CERT>' cannot be used with '--key <KEY>'") and either one alone is ignored (the
  listener stays plaintext), so it cannot serve TLS. The TLS tests put a stdlib TLS proxy in
  front of it instead, with tansu advertising the proxy's address: the bridge's own SSL
  context (CA, host name check) does every handshake, then speaks Kafka to tansu.
* SASL: `--authentication` offers SCRAM-SHA-256 and SCRAM-SHA-512 (not PLAIN), but no login
  can succeed, so only refused credentials are tested on tansu. Accepted credentials run
  against a real cluster named by `KAFKA_SASL_*` variables (`_SASL_VARS`), and TLS against
  one named by `KAFKA_SSL_BOOTSTRAP_SERVERS` and `KAFKA_SSL_CAFILE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.codec import Codec
from bridge.config import KafkaSettings, load_settings
from bridge.devbroker import DevBrokerError, free_port, probe_metadata, resolve_tansu_binary
from bridge.errors import KafkaUnavailableError
from bridge.models import CanonicalEvent, from_webhook, parse_webhook
from bridge.publisher import Publisher
from tests.integration.readback import consume_async

pytestmark = pytest.mark.integration

_SEED = Path(__file__).parents[1] / "fixtures" / "seed_webhook_example.json"
_LOOPBACK = "127.0.0.1"
_READY_WITHIN = 10.0
_REFUSED_WITHIN = 5.0
_MAX_BODY_BYTES = 1024 * 1024

_TANSU_NO_TLS = (
    'tansu 0.6.0 cannot serve TLS: `tansu broker --cert C --key K` exits with "the argument'
    " '--cert <CERT>' cannot be used with '--key <KEY>'\", and --cert or --key alone is"
    " ignored (plaintext listener)"
)
_TANSU_NO_LOGIN = (
    "tansu 0.6.0 cannot accept any SASL login: `tansu user create` is refused by a broker"
    " started with --authentication (NotAuthenticated), and against one without it exits 0"
    " but stores nothing with its only storage engine (dynostore: memory:// or s3://; no"
    " object written, DescribeUserScramCredentials empty), so an --authentication broker"
    " answers every SCRAM login with e=unknown-user; PLAIN is not offered (NoSharedMechanism)"
)
_SASL_VARS = (
    "KAFKA_SASL_BOOTSTRAP_SERVERS, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and optionally"
    " KAFKA_SASL_MECHANISMS (default SCRAM-SHA-256,SCRAM-SHA-512),"
    " KAFKA_SASL_SECURITY_PROTOCOL (default SASL_PLAINTEXT), KAFKA_SASL_SSL_CAFILE"
)
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


# -- certificates ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ca:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class _ServerCert:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the TLS tests make their certificates with the openssl command")
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> _Ca:
    ca = _Ca(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", ca.key, "-out", ca.cert,
    )  # fmt: skip
    return ca


def _make_server_cert(directory: Path, ca: _Ca, name: str, alt_names: str) -> _ServerCert:
    server = _ServerCert(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={alt_names}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-subj", f"/CN={name}", "-keyout", server.key, "-out", csr,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
        "-set_serial", str(secrets.randbits(63)), "-days", "1", "-extfile", ext,
        "-out", server.cert,
    )  # fmt: skip
    return server


@dataclass(frozen=True, slots=True)
class _Pki:
    ca: _Ca
    other_ca: _Ca
    server: _ServerCert  # 127.0.0.1 and localhost, signed by `ca`
    misnamed: _ServerCert  # broker.invalid only, signed by `ca`


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    """A throwaway CA with two server certificates, and an unrelated CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca = _make_ca(directory, "test-ca")
    return _Pki(
        ca=ca,
        other_ca=_make_ca(directory, "other-ca"),
        server=_make_server_cert(directory, ca, "server", "IP:127.0.0.1,DNS:localhost"),
        misnamed=_make_server_cert(directory, ca, "misnamed", "DNS:broker.invalid"),
    )


# -- processes: tansu with flags TansuBroker does not pass, and a TLS proxy ------------


class _Tansu:
    """One tansu process; `advertised_port` for a proxy in front, `authentication` for SASL."""

    def __init__(
        self, log_path: Path, *, advertised_port: int | None = None, authentication: bool = False
    ) -> None:
        self.log_path = log_path
        self.port = 0
        self._advertised_port = advertised_port
        self._authentication = authentication
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    def start(self) -> _Tansu:
        binary = resolve_tansu_binary()
        for _ in range(3):  # a port from free_port() can be taken before tansu binds it
            self.port = free_port()
            advertised = self._advertised_port or self.port
            argv = [
                binary, "broker",
                "--listener-url", f"tcp://{_LOOPBACK}:{self.port}",
                "--advertised-listener-url", f"tcp://{_LOOPBACK}:{advertised}",
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip
            if self._authentication:
                argv.append("--authentication")
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"tansu did not start; log {self.log_path}:\n{self.log_text()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            try:
                if self._authentication:
                    # Every request but the SASL ones is refused: an accepted connection it is.
                    socket.create_connection((_LOOPBACK, self.port), timeout=0.2).close()
                else:
                    probe_metadata(_LOOPBACK, self.port, timeout=0.5)
            except (OSError, struct.error, DevBrokerError):
                time.sleep(0.05)
            else:
                return True
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class _TlsProxy:
    """Terminates TLS on a loopback port and relays the bytes to a plaintext upstream.

    Runs its own event loop in a thread, so it serves whatever the test's loop is doing.
    """

    def __init__(self, context: ssl.SSLContext, port: int, upstream_port: int) -> None:
        self.port = port
        self._context = context
        self._upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        # A refused handshake (the wrong-CA test) is expected, not worth a logged traceback.
        self._loop.set_exception_handler(lambda loop, ctx: None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> _TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, _LOOPBACK, self.port, ssl=self._context),
            self._loop,
        ).result(timeout=5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(_LOOPBACK, self._upstream_port)
            await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))
        except OSError:
            writer.close()
        finally:
            self._tasks.discard(task)


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:  # ssl.SSLError included
        pass
    finally:
        sink.close()


TlsBrokerFactory = Callable[[_ServerCert], str]


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBrokerFactory]:
    """Starts tansu behind a TLS proxy serving the given certificate; returns the bootstrap."""
    stack: list[Callable[[], None]] = []

    def start(server: _ServerCert) -> str:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(server.cert, server.key)
        # The proxy needs tansu's port and tansu needs the proxy's: pick the proxy's first.
        proxy_port = free_port()
        tansu = _Tansu(tmp_path / f"tansu-{proxy_port}.log", advertised_port=proxy_port).start()
        stack.append(tansu.stop)
        stack.append(_TlsProxy(context, proxy_port, tansu.port).start().stop)
        return f"{_LOOPBACK}:{proxy_port}"

    yield start
    for stop in reversed(stack):
        stop()


@pytest.fixture(scope="module")
def auth_tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Tansu]:
    """tansu requiring SASL: SCRAM-SHA-256/512 offered, no login ever accepted."""
    tansu = _Tansu(tmp_path_factory.mktemp("auth-tansu") / "tansu.log", authentication=True)
    tansu.start()
    try:
        yield tansu
    finally:
        tansu.stop()


# -- external clusters -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SaslCluster:
    bootstrap: str
    security_protocol: str
    username: str
    password: str
    mechanisms: tuple[str, ...]
    cafile: Path | None


def _sasl_cluster() -> _SaslCluster | None:
    env = os.environ
    bootstrap = env.get("KAFKA_SASL_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        return None
    mechanisms = env.get("KAFKA_SASL_MECHANISMS", "SCRAM-SHA-256,SCRAM-SHA-512")
    cafile = env.get("KAFKA_SASL_SSL_CAFILE", "").strip()
    return _SaslCluster(
        bootstrap=bootstrap,
        security_protocol=env.get("KAFKA_SASL_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        username=env["KAFKA_SASL_USERNAME"],
        password=env["KAFKA_SASL_PASSWORD"],
        mechanisms=tuple(m.strip() for m in mechanisms.split(",") if m.strip()),
        cafile=Path(cafile) if cafile else None,
    )


def _require_sasl_cluster(mechanism: str | None = None) -> _SaslCluster:
    cluster = _sasl_cluster()
    if cluster is None:
        pytest.skip(f"{_TANSU_NO_LOGIN}; set {_SASL_VARS} to run against a real cluster")
    if mechanism is not None and mechanism not in cluster.mechanisms:
        pytest.skip(f"{mechanism} not in KAFKA_SASL_MECHANISMS ({', '.join(cluster.mechanisms)})")
    return cluster


# -- the bridge's side -----------------------------------------------------------------


_CODEC: Codec | None = None


def _codec() -> Codec:
    global _CODEC
    if _CODEC is None:
        _CODEC = Codec()
    return _CODEC


def _settings(bootstrap: str, topic_prefix: str, **security: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=topic_prefix,
        enable_idempotence=False,  # tansu has no idempotent producer
        topic_partitions=1,
        topic_replication_factor=1,
        request_timeout_ms=5000,
        publish_timeout_seconds=5.0,
        **security,
    )


def _event() -> CanonicalEvent:
    return from_webhook(parse_webhook(_SEED.read_bytes()), int(time.time() * 1000))


@contextlib.asynccontextmanager
async def _running(settings: KafkaSettings) -> AsyncIterator[Publisher]:
    publisher = Publisher(settings, _codec(), max_body_bytes=_MAX_BODY_BYTES, health_interval=0.5)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


async def _until_ready(publisher: Publisher) -> None:
    deadline = time.monotonic() + _READY_WITHIN
    while not publisher.ready:
        if time.monotonic() > deadline:
            pytest.fail(f"not ready within {_READY_WITHIN}s: {publisher.not_ready_reason}")
        await asyncio.sleep(0.05)


async def _until_refused(publisher: Publisher) -> str:
    """The reason once the supervisor has tried and failed; it must still be trying after."""
    deadline = time.monotonic() + _REFUSED_WITHIN
    while publisher.not_ready_reason == "not started":
        if time.monotonic() > deadline:
            pytest.fail(
                f"no connection attempt reported within {_REFUSED_WITHIN}s (the supervisor"
                " task may have died on an exception it does not catch)"
            )
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)  # past the first retry: still refused, still reported
    assert not publisher.ready
    reason = publisher.not_ready_reason
    assert reason is not None
    assert reason != "not started"
    return reason


async def _publish_and_read_back(
    publisher: Publisher, bootstrap: str, consumer_config: Mapping[str, Any]
) -> None:
    event = _event()
    await publisher.publish(event)
    records = await consume_async(
        bootstrap, publisher.topics.events(), min_count=1, timeout=15, config=consumer_config
    )
    assert [r.headers["event-id"] for r in records] == [str(event.event_id).encode()]
    assert records[0].key == str(event.ticket_id).encode()


@pytest.fixture
def captured_logs(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[Callable[[], str]]:
    """Everything logged meanwhile (stdlib at DEBUG, structlog, stdout/stderr), as text.

    Except aiokafka.conn's DEBUG lines: they dump every request, and a PLAIN login request
    holds the password in clear, so that logger must never run at DEBUG (a known leak when
    the bridge's log level is debug; it is not what these tests are about).
    """
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiokafka.conn")
    with structlog.testing.capture_logs() as events:

        def text() -> str:
            out, err = capfd.readouterr()
            return "\n".join([caplog.text, json.dumps(events, default=repr), out, err])

        yield text


# -- TLS -------------------------------------------------------------------------------


async def test_tls_publish_reads_back(
    tls_broker: TlsBrokerFactory, pki: _Pki, topic_prefix: str
) -> None:
    bootstrap = tls_broker(pki.server)
    settings = _settings(bootstrap, topic_prefix, security_protocol="SSL", ssl_cafile=pki.ca.cert)
    async with _running(settings) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(
            publisher,
            bootstrap,
            {"security.protocol": "SSL", "ssl.ca.location": str(pki.ca.cert)},
        )


async def test_tls_wrong_ca_leaves_publisher_not_ready(
    tls_broker: TlsBrokerFactory, pki: _Pki, topic_prefix: str
) -> None:
    bootstrap = tls_broker(pki.server)
    settings = _settings(
        bootstrap, topic_prefix, security_protocol="SSL", ssl_cafile=pki.other_ca.cert
    )
    async with _running(settings) as publisher:
        reason = await _until_refused(publisher)
        assert reason.startswith("cannot connect"), reason
        with pytest.raises(KafkaUnavailableError):
            await publisher.publish(_event())


async def test_tls_host_name_checked_unless_disabled(
    tls_broker: TlsBrokerFactory, pki: _Pki, topic_prefix: str
) -> None:
    # The certificate names broker.invalid only; the bridge dials 127.0.0.1.
    bootstrap = tls_broker(pki.misnamed)
    tls = {"security_protocol": "SSL", "ssl_cafile": pki.ca.cert}
    async with _running(_settings(bootstrap, topic_prefix, **tls)) as publisher:
        reason = await _until_refused(publisher)
        assert reason.startswith("cannot connect"), reason

    unchecked = _settings(bootstrap, topic_prefix, ssl_check_hostname=False, **tls)
    async with _running(unchecked) as publisher:
        await _until_ready(publisher)
        await publisher.publish(_event())


async def test_tls_publish_reads_back_on_external_cluster(topic_prefix: str) -> None:
    bootstrap = os.environ.get("KAFKA_SSL_BOOTSTRAP_SERVERS", "").strip()
    cafile = os.environ.get("KAFKA_SSL_CAFILE", "").strip()
    if not (bootstrap and cafile):
        pytest.skip(
            f"{_TANSU_NO_TLS} (test_tls_* run it behind a TLS proxy); set"
            " KAFKA_SSL_BOOTSTRAP_SERVERS and KAFKA_SSL_CAFILE to run against a real cluster"
        )
    settings = _settings(bootstrap, topic_prefix, security_protocol="SSL", ssl_cafile=cafile)
    async with _running(settings) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(
            publisher, bootstrap, {"security.protocol": "SSL", "ssl.ca.location": cafile}
        )


# -- SASL ------------------------------------------------------------------------------


def _sasl_security(
    protocol: str, mechanism: str, username: str, password: str, cafile: Path | None
) -> dict[str, Any]:
    security: dict[str, Any] = {
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_username": username,
        "sasl_password": password,
    }
    if cafile is not None:
        security["ssl_cafile"] = cafile
    return security


@pytest.mark.parametrize("target", ["tansu", "external"])
@pytest.mark.parametrize(
    ("mechanism", "via"),
    [("SCRAM-SHA-256", "password"), ("SCRAM-SHA-512", "password_file"), ("PLAIN", "password")],
)
async def test_refused_credentials_leave_publisher_not_ready(
    request: pytest.FixtureRequest,
    target: str,
    mechanism: str,
    via: str,
    tmp_path: Path,
    topic_prefix: str,
    captured_logs: Callable[[], str],
) -> None:
    password = f"not-the-password-{secrets.token_hex(8)}"
    if target == "tansu":
        tansu: _Tansu = request.getfixturevalue("auth_tansu")
        security = _sasl_security("SASL_PLAINTEXT", mechanism, "bridge", password, cafile=None)
        bootstrap = tansu.bootstrap_servers
    else:
        cluster = _require_sasl_cluster()
        security = _sasl_security(
            cluster.security_protocol, mechanism, cluster.username, password, cluster.cafile
        )
        bootstrap = cluster.bootstrap
    if via == "password_file":
        secret_file = tmp_path / "sasl-password"
        secret_file.write_text(password + "\n")
        del security["sasl_password"]
        security["sasl_password_file"] = secret_file

    async with _running(_settings(bootstrap, topic_prefix, **security)) as publisher:
        reason = await _until_refused(publisher)
        assert reason.startswith("cannot connect"), reason
        with pytest.raises(KafkaUnavailableError) as refused:
            await publisher.publish(_event())

    assert password not in reason
    assert password not in str(refused.value)
    assert password not in captured_logs()


@pytest.mark.parametrize("mechanism", _MECHANISMS)
async def test_accepted_credentials_publish_and_read_back(
    mechanism: str, topic_prefix: str, captured_logs: Callable[[], str]
) -> None:
    cluster = _require_sasl_cluster(mechanism)
    security = _sasl_security(
        cluster.security_protocol, mechanism, cluster.username, cluster.password, cluster.cafile
    )
    async with _running(_settings(cluster.bootstrap, topic_prefix, **security)) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(publisher, cluster.bootstrap, _librdkafka(cluster, mechanism))
    assert cluster.password not in captured_logs()


async def test_password_file_from_environment_publishes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, topic_prefix: str
) -> None:
    cluster = _require_sasl_cluster()
    mechanism = cluster.mechanisms[0]
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(cluster.password + "\n")
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    env = {
        "BOOTSTRAP_SERVERS": cluster.bootstrap,
        "TOPIC_PREFIX": topic_prefix,
        "ENABLE_IDEMPOTENCE": "false",
        "TOPIC_PARTITIONS": "1",
        "TOPIC_REPLICATION_FACTOR": "1",
        "SECURITY_PROTOCOL": cluster.security_protocol,
        "SASL_MECHANISM": mechanism,
        "SASL_USERNAME": cluster.username,
        "SASL_PASSWORD_FILE": str(secret_file),
        "SSL_CAFILE": str(cluster.cafile or ""),
    }
    for name, value in env.items():
        monkeypatch.setenv(f"BRIDGE_KAFKA_{name}", value)
    settings = load_settings(auth={"token": "x"}).kafka

    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == cluster.password
    async with _running(settings) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(publisher, cluster.bootstrap, _librdkafka(cluster, mechanism))


def _librdkafka(cluster: _SaslCluster, mechanism: str) -> dict[str, Any]:
    config = {
        "security.protocol": cluster.security_protocol,
        "sasl.mechanism": mechanism,
        "sasl.username": cluster.username,
        "sasl.password": cluster.password,
    }
    if cluster.cafile is not None:
        config["ssl.ca.location"] = str(cluster.cafile)
    return config
