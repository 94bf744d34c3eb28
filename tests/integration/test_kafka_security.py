"""The bridge's TLS, SASL and ACL settings against Apache Kafka with those listeners on.

One cluster for the module: SASL_PLAINTEXT and SASL_SSL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512,
user `bridge` created at format time), SSL (server authentication, CA verified, host name
checked) and MTLS (client certificates required; CN=bridge maps to User:bridge), with
StandardAuthorizer: User:bridge may do only what an ACL allows. Its PLAINTEXT listener is the
tests' own admin (ANONYMOUS is a super user there) and reads back what the bridge wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import structlog
from apizee_session_events.kafka import Event, KafkaReadError, read_events
from confluent_kafka.admin import AclOperation, ResourceType
from prometheus_client import REGISTRY, generate_latest

from bridge.codec import Codec
from bridge.config import KafkaSettings, load_settings
from bridge.devtools.devbroker import KafkaCluster, KafkaTls
from bridge.errors import KafkaUnavailableError
from bridge.models import CanonicalEvent, from_webhook, parse_webhook
from bridge.publisher import Publisher, TopicNames
from tests.integration import kafkakit
from tests.integration.bridgeproc import bridge_settings, running_bridge, webhook
from tests.integration.conftest import forget, remember
from tests.integration.pki import Cert, make_ca, make_cert
from tests.integration.readback import consume_async

pytestmark = pytest.mark.integration

_SEED = Path(__file__).parents[1] / "fixtures" / "seed_webhook_example.json"
_READY_WITHIN = 20.0
_REFUSED_WITHIN = 10.0
_MAX_BODY_BYTES = 1024 * 1024
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
USER: Final = "bridge"
# Secrets of this run: none may appear in a log line, metric or answer.
PASSWORD: Final = f"pw-{secrets.token_hex(12)}"
KEY_PASSWORD: Final = f"key-{secrets.token_hex(12)}"
PRINCIPAL: Final = f"User:{USER}"


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Cert
    other_ca: Cert
    server: Cert  # IP:127.0.0.1 only (no DNS name), signed by `ca`
    client: Cert  # CN=bridge, key encrypted with KEY_PASSWORD, signed by `ca`
    stranger: Cert  # CN=bridge, signed by `other_ca`


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(directory, "test-ca"), make_ca(directory, "other-ca")
    return Pki(
        ca=ca,
        other_ca=other,
        server=make_cert(directory, ca, "server", alt_names="IP:127.0.0.1"),
        client=make_cert(directory, ca, USER, client=True, key_password=KEY_PASSWORD),
        stranger=make_cert(directory, other, "stranger", client=True),
    )


@pytest.fixture(scope="module")
def secure_kafka(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaCluster]:
    tls = KafkaTls(cert_chain=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert)
    with KafkaCluster(
        nodes=1,
        workdir=tmp_path_factory.mktemp("secure-kafka"),
        users={USER: PASSWORD},
        tls=tls,
        authorizer=True,
    ) as cluster:
        remember(request.config, cluster)
        yield cluster
        forget(request.config, cluster)


@pytest.fixture
def prefix(secure_kafka: KafkaCluster) -> str:
    """A topic prefix on which User:bridge may do everything (topics and groups)."""
    name = f"sec.{uuid.uuid4().hex[:8]}"
    grant(secure_kafka, name, [AclOperation.ALL], groups=True)
    return name


def grant(
    cluster: KafkaCluster, prefix: str, operations: list[AclOperation], *, groups: bool = False
) -> None:
    kafkakit.allow(
        cluster.bootstrap_servers, PRINCIPAL, operations, ResourceType.TOPIC, prefix, prefixed=True
    )
    if groups:
        kafkakit.allow(
            cluster.bootstrap_servers,
            PRINCIPAL,
            [AclOperation.ALL],
            ResourceType.GROUP,
            prefix,
            prefixed=True,
        )


# -- the bridge's side -----------------------------------------------------------------


_CODEC: Codec | None = None


def _codec() -> Codec:
    global _CODEC
    if _CODEC is None:
        _CODEC = Codec()
    return _CODEC


def _settings(bootstrap: str, topic_prefix: str, **security: Any) -> KafkaSettings:
    """The bridge's defaults (idempotent, acks=all, replication factor -1) plus `security`."""
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=1,
        request_timeout_ms=5000,
        publish_timeout_seconds=5.0,
        **security,
    )


def _sasl(mechanism: str, password: str = PASSWORD, **more: Any) -> dict[str, Any]:
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_username": USER,
        "sasl_password": password,
        **more,
    }


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
            pytest.fail(f"no connection attempt reported within {_REFUSED_WITHIN}s")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # past the first retry: still refused, still reported
    assert not publisher.ready
    reason = publisher.not_ready_reason
    assert reason is not None
    assert reason != "not started"
    return reason


async def _publish_and_read_back(publisher: Publisher, cluster: KafkaCluster) -> None:
    event = _event()
    await publisher.publish(event)
    # Read back by another client, on the admin listener.
    records = await consume_async(
        cluster.bootstrap_servers, publisher.topics.events(), min_count=1, timeout=15
    )
    assert [r.headers["event-id"] for r in records] == [str(event.event_id).encode()]
    assert records[0].key == str(event.ticket_id).encode()


@pytest.fixture
def captured_logs(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[Callable[[], str]]:
    """Everything logged meanwhile (stdlib at DEBUG, structlog, stdout/stderr), as text,
    and the metrics the process exposes.

    Except aiokafka.conn's DEBUG lines: they dump every request, and a PLAIN login request
    holds the password in clear, so that logger must never run at DEBUG (the bridge never
    sets it below INFO: see bridge/logs.py).
    """
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiokafka.conn")
    with structlog.testing.capture_logs() as events:

        def text() -> str:
            out, err = capfd.readouterr()
            metrics = generate_latest(REGISTRY).decode()
            return "\n".join([caplog.text, json.dumps(events, default=repr), out, err, metrics])

        yield text


def _failure_lines(logs: str, event: str = "kafka_connect_failed") -> list[str]:
    return [line for line in logs.splitlines() if event in line]


# -- SASL ------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", _MECHANISMS)
async def test_sasl_publishes_and_reads_back(
    secure_kafka: KafkaCluster, prefix: str, mechanism: str, captured_logs: Callable[[], str]
) -> None:
    bootstrap = secure_kafka.bootstrap("SASL_PLAINTEXT")
    async with _running(_settings(bootstrap, prefix, **_sasl(mechanism))) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(publisher, secure_kafka)
    assert PASSWORD not in captured_logs()


async def test_sasl_ssl_scram_publishes(secure_kafka: KafkaCluster, pki: Pki, prefix: str) -> None:
    security = _sasl("SCRAM-SHA-512", security_protocol="SASL_SSL", ssl_cafile=pki.ca.cert)
    bootstrap = secure_kafka.bootstrap("SASL_SSL")
    async with _running(_settings(bootstrap, prefix, **security)) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(publisher, secure_kafka)


async def test_secrets_from_files_through_the_environment(
    secure_kafka: KafkaCluster,
    pki: Pki,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    captured_logs: Callable[[], str],
) -> None:
    """BRIDGE_KAFKA_SASL_PASSWORD_FILE over SASL_SSL, as a chart mounts a Secret."""
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(PASSWORD + "\n")
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    env = {
        "BOOTSTRAP_SERVERS": secure_kafka.bootstrap("SASL_SSL"),
        "TOPIC_PREFIX": prefix,
        "TOPIC_PARTITIONS": "1",
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-256",
        "SASL_USERNAME": USER,
        "SASL_PASSWORD_FILE": str(secret_file),
        "SSL_CAFILE": str(pki.ca.cert),
    }
    for name, value in env.items():
        monkeypatch.setenv(f"BRIDGE_KAFKA_{name}", value)
    settings = load_settings(auth={"token": "x"}).kafka
    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == PASSWORD
    async with _running(settings) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(publisher, secure_kafka)
    assert PASSWORD not in captured_logs()


@pytest.mark.parametrize(
    ("mechanism", "via"),
    [("SCRAM-SHA-256", "password"), ("SCRAM-SHA-512", "password_file"), ("PLAIN", "password")],
)
async def test_refused_credentials_leave_publisher_not_ready(
    secure_kafka: KafkaCluster,
    mechanism: str,
    via: str,
    tmp_path: Path,
    prefix: str,
    captured_logs: Callable[[], str],
) -> None:
    wrong = f"not-the-password-{secrets.token_hex(8)}"
    security = _sasl(mechanism, wrong)
    if via == "password_file":
        secret_file = tmp_path / "sasl-password"
        secret_file.write_text(wrong + "\n")
        del security["sasl_password"]
        security["sasl_password_file"] = secret_file
    bootstrap = secure_kafka.bootstrap("SASL_PLAINTEXT")
    async with _running(_settings(bootstrap, prefix, **security)) as publisher:
        reason = await _until_refused(publisher)
        with pytest.raises(KafkaUnavailableError) as refused:
            await publisher.publish(_event())

    logs = captured_logs()
    assert "authentication failed" in reason, reason
    assert mechanism in reason, reason
    failures = _failure_lines(logs)
    assert failures, "no log line says why the connection failed"
    assert all(mechanism in line for line in failures), failures
    for secret in (wrong, PASSWORD):
        assert secret not in reason
        assert secret not in str(refused.value)
        assert secret not in logs


# -- TLS -------------------------------------------------------------------------------


async def test_tls_publish_reads_back(secure_kafka: KafkaCluster, pki: Pki, prefix: str) -> None:
    bootstrap = secure_kafka.bootstrap("SSL")
    settings = _settings(bootstrap, prefix, security_protocol="SSL", ssl_cafile=pki.ca.cert)
    async with _running(settings) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(publisher, secure_kafka)


async def test_tls_untrusted_certificate_leaves_publisher_not_ready(
    secure_kafka: KafkaCluster, pki: Pki, prefix: str, captured_logs: Callable[[], str]
) -> None:
    bootstrap = secure_kafka.bootstrap("SSL")
    settings = _settings(bootstrap, prefix, security_protocol="SSL", ssl_cafile=pki.other_ca.cert)
    async with _running(settings) as publisher:
        reason = await _until_refused(publisher)
        with pytest.raises(KafkaUnavailableError):
            await publisher.publish(_event())
    assert "certificate verify failed" in reason, reason
    failures = _failure_lines(captured_logs())
    assert failures
    assert all("certificate verify failed" in line for line in failures), failures


async def test_tls_host_name_checked_unless_disabled(
    secure_kafka: KafkaCluster, pki: Pki, prefix: str
) -> None:
    # The certificate names IP 127.0.0.1 only; "localhost" is not in it.
    port = secure_kafka.nodes[0].ports["SSL"]
    bootstrap = f"localhost:{port}"
    tls = {"security_protocol": "SSL", "ssl_cafile": pki.ca.cert}
    async with _running(_settings(bootstrap, prefix, **tls)) as publisher:
        reason = await _until_refused(publisher)
    assert "certificate verify failed" in reason, reason
    assert "localhost" in reason, reason

    unchecked = _settings(bootstrap, prefix, ssl_check_hostname=False, **tls)
    async with _running(unchecked) as publisher:
        await _until_ready(publisher)
        await publisher.publish(_event())


async def test_mtls_client_certificate_with_encrypted_key_from_file(
    secure_kafka: KafkaCluster,
    pki: Pki,
    prefix: str,
    tmp_path: Path,
    captured_logs: Callable[[], str],
) -> None:
    key_password_file = tmp_path / "key-password"
    key_password_file.write_text(KEY_PASSWORD + "\n")
    settings = _settings(
        secure_kafka.bootstrap("MTLS"),
        prefix,
        security_protocol="SSL",
        ssl_cafile=pki.ca.cert,
        ssl_certfile=pki.client.cert,
        ssl_keyfile=pki.client.key,
        ssl_key_password_file=key_password_file,
    )
    # The broker knows the bridge by its certificate: User:bridge, which the ACLs allow.
    async with _running(settings) as publisher:
        await _until_ready(publisher)
        await _publish_and_read_back(publisher, secure_kafka)
    assert KEY_PASSWORD not in captured_logs()


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_mtls_refuses_a_missing_or_untrusted_client_certificate(
    secure_kafka: KafkaCluster, pki: Pki, prefix: str, client: str
) -> None:
    security: dict[str, Any] = {"security_protocol": "SSL", "ssl_cafile": pki.ca.cert}
    if client == "stranger":
        security.update(ssl_certfile=pki.stranger.cert, ssl_keyfile=pki.stranger.key)
    settings = _settings(secure_kafka.bootstrap("MTLS"), prefix, **security)
    async with _running(settings) as publisher:
        reason = await _until_refused(publisher)
    assert reason.startswith("cannot connect"), reason


# -- ACLs --------------------------------------------------------------------------------


def _acl_bridge(cluster: KafkaCluster, prefix: str, **kafka: Any) -> Any:
    """An in-process bridge on the SASL listener as User:bridge."""
    return bridge_settings(
        cluster.bootstrap("SASL_PLAINTEXT"),
        prefix,
        kafka={**_sasl("SCRAM-SHA-512"), "topic_partitions": 1, **kafka},
    )


async def test_without_write_on_one_topic_its_webhooks_get_503_the_others_200(
    secure_kafka: KafkaCluster, captured_logs: Callable[[], str]
) -> None:
    prefix = f"acl.{uuid.uuid4().hex[:8]}"
    topics = TopicNames(prefix)
    denied = topics.category("media")
    for topic in topics.events():
        operations = [AclOperation.DESCRIBE, AclOperation.CREATE]
        if topic != denied:
            operations.append(AclOperation.WRITE)
        kafkakit.allow(
            secure_kafka.bootstrap_servers, PRINCIPAL, operations, ResourceType.TOPIC, topic
        )
    async with running_bridge(_acl_bridge(secure_kafka, prefix)) as bridge:
        media = await bridge.post(webhook("media.pictureTaken", {"mediaId": 7}, event_id=1))
        ticket = await bridge.post(webhook("ticket.new", event_id=2))
        readyz = await bridge.readyz()
    assert media.status == 503, media
    assert media.headers["Retry-After"].isdigit()
    assert ticket.status == 200, ticket
    assert readyz is not None
    assert readyz.status == 200, "one topic without rights does not make the bridge unready"
    logs = captured_logs()
    rejected = _failure_lines(logs, "publish_rejected")
    assert rejected, "no log line names the refused topic"
    assert all(denied in line and "TopicAuthorizationFailed" in line for line in rejected)
    assert 'apizee_bridge_publish_errors_total{kind="rejected"}' in logs


async def test_create_topics_false_runs_without_create_rights(
    secure_kafka: KafkaCluster,
) -> None:
    prefix = f"acl.{uuid.uuid4().hex[:8]}"
    topics = TopicNames(prefix)
    kafkakit.create_topics(
        secure_kafka.bootstrap_servers, topics.events(), partitions=1, replication=1
    )
    for topic in topics.events():
        kafkakit.allow(
            secure_kafka.bootstrap_servers,
            PRINCIPAL,
            [AclOperation.DESCRIBE, AclOperation.WRITE],
            ResourceType.TOPIC,
            topic,
        )
    settings = _acl_bridge(secure_kafka, prefix, create_topics=False)
    async with running_bridge(settings) as bridge:
        reply = await bridge.post(webhook("ticket.new", event_id=3))
    assert reply.status == 200, reply
    records = await consume_async(
        secure_kafka.bootstrap_servers, [topics.category("ticket")], min_count=1, timeout=15
    )
    assert [r.headers["event-id"] for r in records] == [b"3"]


async def test_without_read_on_the_poller_group_readyz_names_it(
    secure_kafka: KafkaCluster,
) -> None:
    prefix = f"acl.{uuid.uuid4().hex[:8]}"
    group = f"{prefix}.poller"
    # Every topic right, no group right at all.
    grant(secure_kafka, prefix, [AclOperation.ALL])
    settings = bridge_settings(
        secure_kafka.bootstrap("SASL_PLAINTEXT"),
        prefix,
        kafka={**_sasl("SCRAM-SHA-512"), "topic_partitions": 1},
        apizee={"base_url": "http://127.0.0.1:9", "token": "x"},
        poller={"group_id": group},
    )
    async with running_bridge(settings, wait_ready=False) as bridge:
        await bridge.wait_ready(ready=False)
        deadline = time.monotonic() + 30
        while True:
            readyz = await bridge.readyz()
            assert readyz is not None
            reason = readyz.json().get("reason", "")
            if "GroupAuthorizationFailed" in reason or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert readyz.status == 503, readyz
    assert "GroupAuthorizationFailed" in reason, reason
    assert group in reason, reason


# -- the consumers' reader (apizee_session_events.kafka) ---------------------------------


def _reader_sasl(password: str = PASSWORD) -> dict[str, str]:
    """librdkafka's settings for User:bridge on the SASL listener, as `read_events(config=)`."""
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": USER,
        "sasl.password": password,
    }


async def _read_events(cluster: KafkaCluster, prefix: str, **options: Any) -> list[Event]:
    def read() -> list[Event]:
        return list(
            read_events(
                cluster.bootstrap("SASL_PLAINTEXT"),
                prefix=prefix,
                idle_timeout_seconds=3,
                join_timeout_seconds=60,
                **options,
            )
        )

    return await asyncio.to_thread(read)


async def test_read_events_reads_with_sasl_and_raises_on_refused_credentials(
    secure_kafka: KafkaCluster, prefix: str, captured_logs: Callable[[], str]
) -> None:
    async with running_bridge(_acl_bridge(secure_kafka, prefix)) as bridge:
        reply = await bridge.post(webhook("ticket.new", event_id=11))
    assert reply.status == 200, reply
    group = f"{prefix}.readers"  # the `prefix` fixture granted its groups

    events = await _read_events(secure_kafka, prefix, group_id=group, config=_reader_sasl())
    assert [(e.headers["event-id"], e.fields["eventType"]) for e in events] == [
        ("11", "ticket.new")
    ]

    wrong = f"wrong-{secrets.token_hex(6)}"
    started = time.monotonic()
    with pytest.raises(KafkaReadError) as raised:
        await _read_events(secure_kafka, prefix, group_id=group, config=_reader_sasl(wrong))
    assert time.monotonic() - started < 30, "a refused login must not wait for the join timeout"
    message = str(raised.value)
    assert "Authentication failed" in message or "AUTHENTICATION" in message, message
    assert wrong not in message
    assert PASSWORD not in captured_logs()


async def test_read_events_without_rights_on_its_group_raises(
    secure_kafka: KafkaCluster, prefix: str
) -> None:
    group = f"stranger.{uuid.uuid4().hex[:8]}"  # no ACL names it
    with pytest.raises(KafkaReadError) as raised:
        await _read_events(secure_kafka, prefix, group_id=group, config=_reader_sasl())
    assert "GROUP_AUTHORIZATION_FAILED" in str(raised.value), raised.value
