"""What a Kafka cluster tells this principal about the bridge's topics and groups, read only.

Brokers are reached one by one (so a failure names its broker and its cause), topics are
described without auto-creating them, and the operations the principal may perform come from
the brokers themselves (KIP-430 authorized operations), which needs no right beyond DESCRIBE.
Used by `check`, `replay` and `tail`; nothing here writes to the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.protocol.admin import DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from bridge.config import KafkaSettings, env_name
from bridge.errors import BridgeError
from bridge.publisher import connection_kwargs

# The authorized-operations field when the broker computed none (not asked, or not supported).
_NOT_PROVIDED: Final = -(2**31)
_NONE: Final = 0
_TOPIC_AUTHORIZATION_FAILED: Final = 29
_GROUP_AUTHORIZATION_FAILED: Final = 30
# Coordinator loading, not available (yet), moved.
_COORDINATOR_MOVING: Final = frozenset({14, 15, 16})
_COORDINATOR_ATTEMPTS: Final = 12


class AclOperation(IntEnum):
    """Kafka's ACL operation codes (org.apache.kafka.common.acl.AclOperation); bit n of an
    authorized-operations field is operation n."""

    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


def _operations(bits: int) -> frozenset[AclOperation] | None:
    if bits == _NOT_PROVIDED:
        return None
    return frozenset(op for op in AclOperation if bits & (1 << op))


class ClusterError(BridgeError):
    """The cluster could not be asked: `what` went wrong, `fix` says what to change."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}; {fix}")
        self.what = what
        self.fix = fix


def explain(exc: BaseException, settings: KafkaSettings, where: str) -> ClusterError:
    """A connection failure as an operator reads it: what happened at `where`, and the fix."""
    protocol = settings.security_protocol
    servers = env_name("kafka", "bootstrap_servers")
    if isinstance(exc, ClusterError):
        return exc
    if isinstance(exc, socket.gaierror):
        return ClusterError(f"{where}: host name not resolved", f"check {servers} and DNS")
    if isinstance(exc, ConnectionRefusedError):
        return ClusterError(
            f"{where}: connection refused",
            f"is a broker listening there? check {servers} (and the listener's port)",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ClusterError(
            f"{where}: TLS certificate not trusted ({exc.verify_message})",
            f"set {env_name('kafka', 'ssl_cafile')} to the CA that signed the brokers'"
            f" certificates (or check {env_name('kafka', 'ssl_check_hostname')})",
        )
    if isinstance(exc, ssl.SSLError):
        return ClusterError(
            f"{where}: TLS handshake failed ({exc.reason or exc})",
            f"is this a TLS listener? check {env_name('kafka', 'security_protocol')}"
            f" ({protocol}) and the client certificate settings",
        )
    if isinstance(exc, SaslAuthenticationFailed | KeyError | ValueError):
        # aiokafka's SCRAM client ends a refused exchange with KeyError/ValueError.
        return ClusterError(
            f"{where}: SASL authentication failed ({settings.sasl_mechanism} as"
            f" {settings.sasl_username!r})",
            f"check {env_name('kafka', 'sasl_username')}, {env_name('kafka', 'sasl_password')}"
            f" and {env_name('kafka', 'sasl_mechanism')}",
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return ClusterError(
            f"{where}: the broker does not offer SASL {settings.sasl_mechanism}",
            f"set {env_name('kafka', 'sasl_mechanism')} to one it enables",
        )
    if isinstance(exc, TimeoutError):
        return ClusterError(
            f"{where}: no answer in time",
            f"check the network path (firewall, NetworkPolicy egress), and that"
            f" {env_name('kafka', 'security_protocol')} ({protocol}) matches this listener",
        )
    if isinstance(exc, KafkaConnectionError):
        return ClusterError(
            f"{where}: the broker closed the connection",
            f"does this listener expect {protocol}? check"
            f" {env_name('kafka', 'security_protocol')} (TLS? SASL?) and {servers}",
        )
    if isinstance(exc, OSError | KafkaError):
        return ClusterError(
            f"{where}: {type(exc).__name__}: {exc}",
            f"check {servers} and {env_name('kafka', 'security_protocol')} ({protocol})",
        )
    raise exc


def principal(settings: KafkaSettings) -> str:
    """The principal the brokers see for these settings, as ACLs name it (when it is known
    from the settings alone: a client certificate's name depends on the brokers' mapping)."""
    if settings.security_protocol.startswith("SASL"):
        return f"User:{settings.sasl_username}"
    if settings.security_protocol == "PLAINTEXT":
        return "User:ANONYMOUS"
    return "this principal (the client certificate's)"


@contextlib.contextmanager
def quiet_client_logs() -> Iterator[None]:
    """Silence aiokafka's own error logs while the caller reports each failure itself."""
    loggers = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.conn")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def bootstrap_addresses(settings: KafkaSettings) -> list[tuple[str, int]]:
    """The configured bootstrap brokers as (host, port)."""
    addresses = []
    for item in settings.bootstrap_servers.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(
                f"bootstrap server {item!r} is not host:port",
                f"fix {env_name('kafka', 'bootstrap_servers')}",
            )
        addresses.append((host.strip("[]"), int(port)))
    return addresses


async def probe_broker(settings: KafkaSettings, host: str, port: int, within: float) -> str:
    """Connect to one broker with the configured security (TLS, SASL) and ask its API
    versions; the protocol used. Raises ClusterError naming the cause."""
    kwargs = connection_kwargs(settings)
    try:
        async with asyncio.timeout(within):
            conn = await create_conn(
                host,
                port,
                client_id=settings.client_id,
                request_timeout_ms=int(within * 1000),
                ssl_context=kwargs.get("ssl_context"),
                security_protocol=settings.security_protocol,
                sasl_mechanism=kwargs.get("sasl_mechanism"),
                sasl_plain_username=kwargs.get("sasl_plain_username"),
                sasl_plain_password=kwargs.get("sasl_plain_password"),
            )
        try:
            # ApiVersions is answered before authentication: a request that needs it tells
            # whether this listener speaks the configured protocol.
            async with asyncio.timeout(within):
                await conn.send(_MetadataRequest([]))
        finally:
            conn.close()
    except (OSError, KafkaError, TimeoutError, KeyError, ValueError) as exc:
        raise explain(exc, settings, f"broker {host}:{port}") from None
    if settings.security_protocol.startswith("SASL"):
        return f"{settings.security_protocol} {settings.sasl_mechanism} as {settings.sasl_username}"
    return settings.security_protocol


# -- Metadata v8: authorized operations, no auto-creation ------------------------------------


class _MetadataResponseV8(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8Struct(RequestStruct):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _MetadataRequest(Request[_MetadataRequestV8Struct]):  # type: ignore[misc]
    """Metadata of named topics, never creating them, with what this principal may do."""

    API_KEY = 3

    def __init__(self, topics: Sequence[str]) -> None:
        self._topics = list(topics)

    def build(self, request_struct_class: type[_MetadataRequestV8Struct]) -> Any:
        return request_struct_class(self._topics, False, True, True)


class _DescribeGroupsRequestV3Struct(RequestStruct):  # type: ignore[misc]
    # aiokafka's own v3 struct parses the answer as v2, without authorized_operations.
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _DescribeGroupsRequest(Request[_DescribeGroupsRequestV3Struct]):  # type: ignore[misc]
    API_KEY = 15

    def __init__(self, group: str) -> None:
        self._group = group

    def build(self, request_struct_class: type[_DescribeGroupsRequestV3Struct]) -> Any:
        return request_struct_class([self._group], True)


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """One topic as the cluster describes it to this principal."""

    name: str
    # None, or the error name: UnknownTopicOrPartitionError (missing, or hidden from a
    # principal without DESCRIBE), TopicAuthorizationFailedError, ...
    error: str | None
    partitions: int = 0
    replication: int = 0
    operations: frozenset[AclOperation] | None = None

    @property
    def exists(self) -> bool:
        return self.error is None

    @property
    def denied(self) -> bool:
        return self.error == "TopicAuthorizationFailedError"

    def may(self, operation: AclOperation) -> bool | None:
        """Whether the principal may; None when the broker did not say."""
        if self.denied:
            return False
        if self.operations is None:
            return None
        return operation in self.operations


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    brokers: tuple[tuple[int, str, int], ...]
    topics: dict[str, TopicInfo]
    operations: frozenset[AclOperation] | None


class ClusterClient:
    """A read-only view of the cluster for the operator commands: `async with`."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._client = AIOKafkaClient(**connection_kwargs(settings))
        self._admin: AIOKafkaAdminClient | None = None

    async def __aenter__(self) -> ClusterClient:
        try:
            await self._client.bootstrap()
        except (OSError, KafkaError, TimeoutError, KeyError, ValueError) as exc:
            await self._client.close()
            # aiokafka only says it could not bootstrap: ask each broker why.
            timeout = self.settings.request_timeout_ms / 1000
            for host, port in bootstrap_addresses(self.settings):
                try:
                    await probe_broker(self.settings, host, port, min(timeout, 10.0))
                except ClusterError as cause:
                    raise cause from None
            raise explain(exc, self.settings, "bootstrap") from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._admin is not None:
            await self._admin.close()
        await self._client.close()

    async def describe(self, topics: Iterable[str]) -> ClusterInfo:
        """Metadata of `topics` (never auto-created) and the operations this principal may
        perform on them and on the cluster."""
        node = self._client.get_random_node()
        response: Any = await self._client.send(node, _MetadataRequest(sorted(set(topics))))
        found: dict[str, TopicInfo] = {}
        for error_code, name, _internal, partitions, topic_ops in response.topics:
            error = None if error_code == 0 else for_code(error_code).__name__
            found[name] = TopicInfo(
                name=name,
                error=error,
                partitions=len(partitions),
                replication=min((len(p[4]) for p in partitions), default=0),
                operations=None if error else _operations(topic_ops),
            )
        return ClusterInfo(
            brokers=tuple((b[0], b[1], b[2]) for b in response.brokers),
            topics=found,
            operations=_operations(response.cluster_authorized_operations),
        )

    async def group_operations(self, group: str) -> frozenset[AclOperation] | None:
        """What this principal may do with consumer group `group` (it need not exist yet);
        an empty set when it may not even describe it."""
        error_code = 0
        for attempt in range(_COORDINATOR_ATTEMPTS):
            node = self._client.get_random_node()
            found: Any = await self._client.send(node, FindCoordinatorRequest(group, 0))
            error_code = found.error_code
            if not error_code:
                response: Any = await self._client.send(
                    found.coordinator_id, _DescribeGroupsRequest(group)
                )
                error_code, *_rest, operations = response.groups[0]
                if not error_code:
                    return _operations(operations)
            if error_code == _GROUP_AUTHORIZATION_FAILED:
                return frozenset()
            if error_code not in _COORDINATOR_MOVING:
                break
            # The first group of a cluster creates __consumer_offsets, a coordinator loads
            # or moves: a moment.
            await asyncio.sleep(0.2 * (attempt + 1))
        raise for_code(error_code)(f"cannot describe consumer group {group}")

    async def topic_configs(self, topics: Sequence[str]) -> dict[str, dict[str, str] | str]:
        """Effective configs per topic (broker defaults included), or the error's name."""
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**connection_kwargs(self.settings))
            await self._admin.start()
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        out: dict[str, dict[str, str] | str] = {}
        for response in await self._admin.describe_configs(resources):
            for error_code, _message, _type, name, entries in response.resources:
                if error_code:
                    out[name] = for_code(error_code).__name__
                else:
                    out[name] = {e[0]: e[1] for e in entries if e[1] is not None}
        return out

    @property
    def client(self) -> AIOKafkaClient:
        return self._client
