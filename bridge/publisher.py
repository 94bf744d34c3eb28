"""Publish canonical events to Kafka (aiokafka, acks=all) and report the cluster's health.

One producer per process. A supervisor task connects (retrying while Kafka is down),
creates missing topics, and checks cluster metadata on an interval; publishing fails fast
with KafkaUnavailableError while the cluster is unreachable, so webhooks get a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.errors import RecordTooLargeError as KafkaRecordTooLargeError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.transaction import InitProducerIdRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bridge import dlq, metrics
from bridge.catalog import CATEGORIES, EVENTS, UNKNOWN_CATEGORY
from bridge.codec import Codec
from bridge.config import DLQ_RECORD_OVERHEAD_BYTES, KafkaSettings, env_name
from bridge.errors import (
    CodecError,
    KafkaUnavailableError,
    PublishTimeoutError,
    RecordTooLargeError,
    SchemasNotRegisteredError,
)
from bridge.logs import name_brokers
from bridge.metadata import ask_every_broker
from bridge.models import CanonicalEvent

log = structlog.get_logger(__name__)

DLQ_SUFFIX: Final = "dlq"
STATE_SUFFIX: Final = "bridge-state"
# exactly_once: what the replicas' intake group reads, and its owners' dedupe state.
INTAKE_SUFFIX: Final = "intake"
INTAKE_STATE_SUFFIX: Final = "intake-state"
# The state topic keeps the latest record per ticket; older ones may be compacted away.
_STATE_TOPIC_CONFIG: Final = {"cleanup.policy": "compact"}
# Replication of created topics when the setting is -1: this, or fewer on a smaller cluster.
_DEFAULT_REPLICATION: Final = 3
_TOPIC_ALREADY_EXISTS: Final = 36
# Publish timeouts fire within this long after their deadline (or 1/20 of the timeout).
_SWEEP_INTERVAL: Final = 0.05
_DLQ_REASON_MAX_BYTES: Final = 1024
# The topic setting that bounds a record batch (Kafka's RecordTooLargeException otherwise).
MAX_MESSAGE_BYTES: Final = "max.message.bytes"
# Broker answers meaning "this record will never fit": definitive, not a retryable outage.
_TOO_LARGE: Final = (MessageSizeTooLargeError, RecordListTooLargeError, KafkaRecordTooLargeError)
# aiokafka's SCRAM client raises KeyError or ValueError, not a KafkaError, when the broker
# ends the exchange with an error ("e=unknown-user", "e=invalid-proof") or a bad signature.
_CONNECT_ERRORS: Final = (KafkaError, OSError, TimeoutError, KeyError, ValueError)
IDEMPOTENCE_VARIABLE: Final = env_name("kafka", "enable_idempotence")
# How long readiness waits for a connection to each broker while metadata fails.
_PROBE_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The topics this bridge writes, derived from the prefix."""

    prefix: str

    def category(self, category: str) -> str:
        return f"{self.prefix}.{category}"

    @property
    def unknown(self) -> str:
        return self.category(UNKNOWN_CATEGORY)

    @property
    def dlq(self) -> str:
        return self.category(DLQ_SUFFIX)

    @property
    def state(self) -> str:
        return self.category(STATE_SUFFIX)

    @property
    def intake(self) -> str:
        return self.category(INTAKE_SUFFIX)

    @property
    def intake_state(self) -> str:
        return self.category(INTAKE_STATE_SUFFIX)

    def events(self) -> list[str]:
        """The topics events and dead letters go to."""
        return [self.category(c) for c in (*CATEGORIES, UNKNOWN_CATEGORY, DLQ_SUFFIX)]


class _Deadline:
    """When one publish times out; `task` is None once the publish is over."""

    __slots__ = ("at", "expired", "task")

    def __init__(self, at: float, task: asyncio.Task[Any]) -> None:
        self.at = at
        self.task: asyncio.Task[Any] | None = task
        self.expired = False


def _ack_done(waiter: asyncio.Future[None], ack: asyncio.Future[Any]) -> None:
    """The ack's done callback: wake the publish waiting for it, if it still is."""
    if not waiter.done():
        waiter.set_result(None)
    elif not ack.cancelled():
        ack.exception()  # abandoned (timed out): its outcome is not "never retrieved"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event's record, encoded for its topic (Publisher.event_record)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    route: _Route
    source: str


@dataclass(frozen=True, slots=True)
class _Route:
    """Everything per eventType that the hot path would otherwise recompute."""

    topic: str
    category: str
    event_type_label: str
    topic_kind: str
    event_type_header: bytes
    fingerprint_header: bytes


# A JoinGroup waits on the broker for the whole rebalance (up to the session timeout of a
# member that died): a client in a group must wait longer than the producer's short timeout.
GROUP_REQUEST_TIMEOUT_MS: Final = 30_000


def group_connection_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """connection_kwargs() for a consumer that joins a group (see GROUP_REQUEST_TIMEOUT_MS)."""
    kwargs = connection_kwargs(settings)
    kwargs["request_timeout_ms"] = max(settings.request_timeout_ms, GROUP_REQUEST_TIMEOUT_MS)
    return kwargs


def producer_kwargs(settings: KafkaSettings, max_request_size: int) -> dict[str, Any]:
    """connection_kwargs() and the producer settings, for every producer the bridge runs
    (the publisher's and each exactly_once owner's transactional one)."""
    return {
        **connection_kwargs(settings),
        # acks=all: a 200 means the event is on every in-sync replica.
        "acks": "all",
        "linger_ms": settings.linger_ms,
        "max_batch_size": settings.max_batch_size,
        "max_request_size": max_request_size,
        "compression_type": (
            None if settings.compression_type == "none" else settings.compression_type
        ),
    }


def connection_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka client arguments shared by the producer, admin client and consumers."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "retry_backoff_ms": settings.retry_backoff_ms,
        "metadata_max_age_ms": settings.metadata_max_age_ms,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
            certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            password=(
                settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None
            ),
        )
        context.check_hostname = settings.ssl_check_hostname
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return kwargs


async def diagnose_connection(settings: KafkaSettings) -> str | None:
    """Why the bridge cannot connect, in words an operator can act on, or None.

    aiokafka reports any bootstrap failure as KafkaConnectionError("Unable to bootstrap");
    one connection of our own to each bootstrap server, with the same security settings,
    shows the real cause: a refused SASL login (and its mechanism) or the TLS certificate
    problem. Broker messages and certificate errors hold no secret.
    """
    kwargs = connection_kwargs(settings)
    for address in settings.bootstrap_servers.split(","):
        try:
            conn = await _open(address, kwargs)
        except ssl.SSLCertVerificationError as exc:
            return f"TLS certificate verify failed at {address}: {exc.verify_message}"
        except ssl.SSLError as exc:
            return f"TLS handshake with {address} failed: {exc.reason or exc}"
        except (SaslAuthenticationFailed, KeyError, ValueError) as exc:
            # The broker's words ("Invalid username or password"); SCRAM's client raises
            # KeyError/ValueError on an error in the server's final message.
            detail = exc.args[0] if isinstance(exc, SaslAuthenticationFailed) and exc.args else ""
            return (
                f"SASL {settings.sasl_mechanism} authentication failed for user"
                f" {settings.sasl_username!r} at {address}{f': {detail}' if detail else ''}"
            )
        except (OSError, TimeoutError) as exc:
            return (
                f"{address} unreachable: {exc.strerror or type(exc).__name__}"
                if isinstance(exc, OSError)
                else f"{address}: no answer within {kwargs['request_timeout_ms']} ms"
            )
        except KafkaError as exc:
            return f"{address}: {type(exc).__name__}"
        try:
            # Connected: the refusal may be the idempotent producer's first request.
            if settings.enable_idempotence and (refused := await _idempotence_refused(conn)):
                return f"{address} {refused}"
        finally:
            conn.close()
    return None


async def idempotence_refused(settings: KafkaSettings) -> str | None:
    """Why the cluster refuses the idempotent producer these settings ask for, or None (also
    when it cannot be asked: connection problems are diagnose_connection's)."""
    if not settings.enable_idempotence:
        return None
    kwargs = connection_kwargs(settings)
    for address in settings.bootstrap_servers.split(","):
        try:
            conn = await _open(address, kwargs)
        except (*_CONNECT_ERRORS, ssl.SSLError):
            continue
        try:
            refused = await _idempotence_refused(conn)
        finally:
            conn.close()
        return None if refused is None else f"{address} {refused}"
    return None


async def _open(address: str, kwargs: Mapping[str, Any]) -> Any:
    """One connection to `address` with the clients' security settings."""
    host, _, port = address.strip().rpartition(":")
    return await create_conn(
        host,
        int(port),
        client_id=kwargs["client_id"],
        request_timeout_ms=kwargs["request_timeout_ms"],
        ssl_context=kwargs.get("ssl_context"),
        security_protocol=kwargs["security_protocol"],
        sasl_mechanism=kwargs.get("sasl_mechanism"),
        sasl_plain_username=kwargs.get("sasl_plain_username"),
        sasl_plain_password=kwargs.get("sasl_plain_password"),
    )


async def _idempotence_refused(conn: Any) -> str | None:
    """Ask for a producer id as the idempotent producer does first (InitProducerId): aiokafka
    retries a refusal inside producer.start() and reports only its error class. None when
    the broker grants one, or does not answer (not a refusal: an outage)."""
    try:
        response = await conn.send(InitProducerIdRequest(None, 60_000))
    except _CONNECT_ERRORS:
        return None
    error_class = for_code(response.error_code)
    if not response.error_code or error_class.retriable:
        return None  # granted, or not yet (e.g. its coordinator still loading)
    error = error_class.__name__
    return (
        f"refused an idempotent producer id (InitProducerId: {error}): a broker without the"
        " idempotent producer (such as tansu) or a principal not allowed to use it; set"
        f" {IDEMPOTENCE_VARIABLE}=false for such a broker"
    )


def _leaderless(cluster: Any, topics: list[str]) -> list[str]:
    """`topic-partition` of each partition the metadata shows without a leader (a topic the
    metadata does not list yet counts whole)."""
    out: list[str] = []
    for topic in topics:
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            out.append(topic)
            continue
        led = cluster.available_partitions_for_topic(topic) or set()
        out += [f"{topic}-{p}" for p in sorted(partitions - led)]
    return out


def _error_kind(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, PublishTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, _TOO_LARGE):
        return "too_large"
    if name == "TopicAuthorizationFailedError":
        return "rejected"
    return "unavailable"


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """Bytes of a batch holding this one record, as the broker counts it against the
    topic's max.message.bytes: aiokafka's upper bound (v2 batch header + the largest record
    framing), the same figure its producer checks against max_request_size."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size


class Publisher:
    """Owns the Kafka producer: lifecycle, topics, health, and the publish calls."""

    def __init__(
        self,
        settings: KafkaSettings,
        codec: Codec,
        *,
        max_body_bytes: int,
        health_interval: float = 2.0,
        on_acked: Callable[[CanonicalEvent], None] | None = None,
        state_topic: bool = False,
        intake_topics: bool = False,
        schemas_pending: bool = False,
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._max_request_size = settings.message_bytes(max_body_bytes)
        self._max_body_bytes = max_body_bytes
        # max.message.bytes of each topic as read back from the cluster (absent: not known
        # yet, the producer's limit applies and the broker has the last word).
        self._topic_limits: dict[str, int] = {}
        self._limits_at = 0.0
        self._limits_stale = True
        self._replace_producer = False
        self._replacing = False
        # Registry mode: events wait for use_codec() (the ids); DLQ and state records do not.
        self._schemas_pending = schemas_pending
        self._health_interval = health_interval
        self._timeout = settings.publish_timeout_seconds
        self._on_acked = on_acked
        self.topics = TopicNames(settings.topic_prefix)
        # The topics this publisher needs (and creates when allowed).
        self.required_topics = self.topics.events() + ([self.topics.state] if state_topic else [])
        if intake_topics:
            self.required_topics += [self.topics.intake, self.topics.intake_state]
        # Keyed by ticket, the latest record of each is all that counts: compacted.
        self._compacted = {self.topics.state, self.topics.intake_state}
        self._routes = self._build_routes()
        # Metric children by label values, looked up once each (off the hot path).
        self._published_by = metrics.Children(metrics.EVENTS_PUBLISHED)
        self._duration_by = metrics.Children(metrics.PUBLISH_DURATION)
        self._producer: AIOKafkaProducer | None = None
        self._healthy = False
        self._not_ready_reason = "not started"
        self._metadata_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        # Publish deadlines, oldest first (one timeout for all: appended in deadline order),
        # enforced by one sweeping task instead of a timer per publish.
        self._deadlines: deque[_Deadline] = deque()
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_interval = min(_SWEEP_INTERVAL, self._timeout / 20)
        # Records handed to the producer and not acknowledged; the sweeper sets the gauge.
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        # Since when every publish failed (none acknowledged in between), and how the last
        # one failed: a cluster below min.insync.replicas still answers metadata, so only
        # the publishes themselves show it (readiness reports it, publishing goes on).
        self._failing_since: float | None = None
        self._ready_once = False
        self._last_failure_at = 0.0
        self._last_failure = ""
        # Per broker address: when it was last listed in metadata (or first found down), and
        # why those that do not answer now do not.
        self._brokers: list[str] = []
        self._broker_seen: dict[str, float] = {}
        self._unreachable: dict[str, str] = {}

    def _build_routes(self) -> dict[str, _Route]:
        routes = {}
        for event_type, writer in self._codec.writers.items():
            known = event_type in EVENTS
            category = EVENTS[event_type].category if known else UNKNOWN_CATEGORY
            routes[event_type] = _Route(
                topic=self.topics.category(category),
                category=category,
                event_type_label=event_type if known else UNKNOWN_CATEGORY,
                topic_kind="category" if known else UNKNOWN_CATEGORY,
                event_type_header=event_type.encode(),
                fingerprint_header=writer.fingerprint_hex.encode(),
            )
        return routes

    def topic_for(self, event_type: str) -> str:
        """The topic events of `event_type` go to (the unknown topic for types not in the
        catalog)."""
        return self._routes.get(event_type, self._routes[""]).topic

    def use_codec(self, codec: Codec) -> None:
        """Encode events with `codec` from now on: in registry mode, once the ids are known."""
        self._codec = codec
        self._schemas_pending = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start supervising; returns at once even when Kafka is down (readiness says so)."""
        self._supervisor = asyncio.create_task(self._supervise(), name="kafka-supervisor")

    async def stop(self) -> None:
        """Flush what the producer holds, then close it."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._set_health(False, "stopped")
        if self._producer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(self._producer.flush(), self._timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._producer is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._producer.stop()
            except TimeoutError:
                # aiokafka's stop() waits for every queued batch, forever while Kafka is gone:
                # those records were never acknowledged (their publishes failed), so the
                # producer is left behind rather than holding the process.
                log.warning("producer_stop_abandoned", seconds=self._timeout)
            self._producer = None

    @property
    def ready(self) -> bool:
        return self._healthy

    @property
    def publish_timeout(self) -> float:
        """Seconds a publish waits for its acknowledgement (then PublishTimeoutError)."""
        return self._timeout

    @property
    def not_ready_reason(self) -> str | None:
        # Both when both hold: a broker answers metadata on the connection that carries the
        # produce requests, one request at a time, so produce requests waiting for replicas
        # that never come make the metadata check time out too; the stall says why.
        reasons = [] if self._healthy else [self._not_ready_reason]
        if (stalled := self.stalled_reason) is not None:
            reasons.append(stalled)
        return "; ".join(reasons) or None

    @property
    def stalled_reason(self) -> str | None:
        """Why readiness fails while Kafka is connected but acknowledges no publish: set once
        publishes have failed for a publish timeout with no acknowledgement in between.

        Half-open, like a circuit breaker: once metadata answers and no publish has failed
        for two timeouts, the bridge says ready again, so that traffic (which a load balancer
        sends only to ready pods) can find out whether Kafka is back; the next failure says
        not ready again.
        """
        since = self._failing_since
        now = time.monotonic()
        if since is None:
            return None
        stalled = now - since
        # Unhealthy, publishes are refused without trying: no failure comes to renew it, and
        # the stall stays the likeliest cause until metadata answers again.
        if self._healthy and (
            stalled < self._timeout or now - self._last_failure_at > 2 * self._timeout
        ):
            return None
        return (
            f"Kafka acknowledged no publish for {stalled:.0f}s (last: {self._last_failure});"
            " partitions below min.insync.replicas, or their leaders unreachable"
        )

    def _failed(self, failure: str) -> None:
        now = time.monotonic()
        if self._failing_since is None or now - self._last_failure_at > 2 * self._timeout:
            self._failing_since = now
        self._last_failure_at = now
        self._last_failure = failure
        self._wake.set()

    async def wait_ready(self) -> None:
        """Until connected with every required topic present."""
        await self._ready.wait()

    @property
    def metadata_age(self) -> float | None:
        return None if not self._metadata_at else time.monotonic() - self._metadata_at

    def _set_health(self, healthy: bool, reason: str = "") -> None:
        if healthy != self._healthy:
            log.info("kafka_ready" if healthy else "kafka_not_ready", reason=reason or None)
        self._healthy = healthy
        self._not_ready_reason = reason
        if healthy:
            self._replacing = False
            self._ready_once = True
            self._ready.set()
        else:
            self._ready.clear()
        metrics.KAFKA_READY.set(1 if healthy else 0)

    async def _connect(self) -> AIOKafkaProducer:
        settings = self._settings
        producer = AIOKafkaProducer(
            **producer_kwargs(settings, self._max_request_size),
            enable_idempotence=settings.enable_idempotence,
        )
        # A hung broker must not hold the metadata refreshes that find its replacements.
        ask_every_broker(producer.client)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def ensure_topics(self) -> list[str]:
        """Create the bridge's topics that do not exist yet; returns those still missing."""
        settings = self._settings
        admin = AIOKafkaAdminClient(**connection_kwargs(settings))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in self.required_topics if t not in existing]
            if missing and settings.create_topics:
                replication = settings.topic_replication_factor
                if replication == -1:
                    # aiokafka's CreateTopics (v3) predates broker-side defaults (KIP-464).
                    brokers = (await admin.describe_cluster())["brokers"]
                    replication = max(1, min(_DEFAULT_REPLICATION, len(brokers)))
                # Each topic takes the largest record the producer may send: a dead letter of
                # any body the HTTP limit admits fits, whatever the broker's default.
                limit = {MAX_MESSAGE_BYTES: str(self._max_request_size)}
                new = [
                    NewTopic(
                        t,
                        settings.topic_partitions,
                        replication,
                        topic_configs=(
                            {**_STATE_TOPIC_CONFIG, **limit} if t in self._compacted else limit
                        ),
                    )
                    for t in missing
                ]
                with contextlib.suppress(TopicAlreadyExistsError):  # another replica won
                    response = await admin.create_topics(new)
                    failed = {
                        topic: f"error {code}: {message}"
                        for topic, code, *rest in response.topic_errors
                        if code not in (0, _TOPIC_ALREADY_EXISTS)
                        for message in (rest[0] if rest else None,)
                    }
                    if failed:
                        log.warning("topics_create_failed", topics=failed)
                log.info(
                    "topics_created",
                    topics=missing,
                    replication_factor=replication,
                    max_message_bytes=self._max_request_size,
                )
                existing = set(await admin.list_topics())
                missing = [t for t in self.required_topics if t not in existing]
                self._limits_stale = True
            return missing
        finally:
            await admin.close()

    # -- record size limits ------------------------------------------------------------

    def record_limit(self, topic: str) -> int:
        """Largest record batch `topic` takes from this bridge: the producer's max request
        size, or the topic's max.message.bytes when that is lower."""
        return min(self._max_request_size, self._topic_limits.get(topic, self._max_request_size))

    async def _refresh_limits(self) -> None:
        """Read max.message.bytes of the bridge's topics (DescribeConfigs); keep the last
        known values when the cluster does not say (no ACL for it, an older broker)."""
        admin = AIOKafkaAdminClient(**connection_kwargs(self._settings))
        await admin.start()
        try:
            responses = await admin.describe_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, t, {MAX_MESSAGE_BYTES: None})
                    for t in self.required_topics
                ]
            )
        finally:
            await admin.close()
        learned: dict[str, int] = {}
        refused: dict[str, int] = {}
        for response in responses:
            for error_code, _message, _type, topic, entries, *_ in response.resources:
                if error_code:
                    refused[topic] = error_code
                    continue
                for name, value, *_rest in entries:
                    if name == MAX_MESSAGE_BYTES and value is not None:
                        learned[topic] = int(value)
        self._limits_stale = False
        self._limits_at = time.monotonic()
        if refused:
            log.warning("topic_limits_unknown", topics=refused)
        changed = {t: n for t, n in learned.items() if self._topic_limits.get(t) != n}
        self._topic_limits.update(learned)
        for topic, limit in learned.items():
            metrics.TOPIC_MAX_MESSAGE_BYTES.labels(
                topic_suffix=topic[len(self.topics.prefix) + 1 :]
            ).set(limit)
        if changed:
            self._warn_small_topics(changed)

    def _warn_small_topics(self, changed: Mapping[str, int]) -> None:
        """One line per topic whose limit changed; a warning when bodies could not fit."""
        dlq_needs = self._max_body_bytes + DLQ_RECORD_OVERHEAD_BYTES
        for topic, limit in sorted(changed.items()):
            effective = self.record_limit(topic)
            if topic == self.topics.dlq and effective < dlq_needs:
                log.warning(
                    "dlq_topic_too_small",
                    topic=topic,
                    max_message_bytes=limit,
                    max_body_bytes=self._max_body_bytes,
                    consequence="bodies near the HTTP limit that cannot be published are"
                    " answered 413 and dropped, not kept on the DLQ",
                    fix=f"kafka-configs --alter --entity-type topics --entity-name {topic}"
                    f" --add-config {MAX_MESSAGE_BYTES}={self._max_request_size}",
                )
            elif limit < self._settings.max_batch_size:
                log.warning(
                    "topic_limit_below_batch_size",
                    topic=topic,
                    max_message_bytes=limit,
                    max_batch_size=self._settings.max_batch_size,
                    consequence="Kafka may refuse a batch of small records (answered 503)",
                    fix="lower BRIDGE_KAFKA_MAX_BATCH_SIZE or raise the topic's limit",
                )
            else:
                log.info("topic_limit", topic=topic, max_message_bytes=limit)

    async def _supervise(self) -> None:
        """Connect with backoff, then check health forever; reconnect topics when they vanish.

        A producer whose batch the broker refused as too large is replaced: with idempotence
        that batch's sequence number is spent, and the broker would refuse every later batch
        of its partition as out of order (Java's producer bumps its epoch; aiokafka does not).
        """
        logged = ""
        while True:
            backoff = 0.5
            while self._producer is None:
                try:
                    self._producer = await self._connect()
                except _CONNECT_ERRORS as exc:
                    self._replacing = False  # an outage after all: fail fast
                    cause = await diagnose_connection(self._settings) or type(exc).__name__
                    self._set_health(False, f"cannot connect: {cause}")
                    metrics.KAFKA_CONNECT_FAILURES.inc()
                    if cause != logged:  # one line per cause, not one per retry
                        log.warning("kafka_connect_failed", reason=cause, retry_in=backoff)
                        logged = cause
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
            log.info("kafka_connected", bootstrap_servers=self._settings.bootstrap_servers)
            self._replace_producer = False
            while not self._replace_producer:
                await self._check_health()
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for may swallow stop()'s
                # cancellation when the event is set at the same moment.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._health_interval):
                        await self._wake.wait()
            self._replacing = True
            self._set_health(False, "replacing the producer after a batch Kafka refused")
            old, self._producer = self._producer, None
            # Publishes wait for the new producer (until healthy again, see _set_health).
            if old is not None:
                with contextlib.suppress(KafkaError, TimeoutError):
                    await asyncio.wait_for(old.flush(), self._timeout)
                await old.stop()

    async def _check_health(self) -> None:
        assert self._producer is not None
        try:
            async with asyncio.timeout(max(self._health_interval, 1.0) * 2):
                cluster = await self._producer.client.fetch_all_metadata()
                topics = set(cluster.topics())
                missing = [t for t in self.required_topics if t not in topics]
                if missing:
                    # A new cluster, or one that lost its topics (the memory-only dev broker
                    # after a restart): create them again when we may.
                    missing = await self.ensure_topics()
                    cluster = await self._producer.client.fetch_all_metadata()
        except _CONNECT_ERRORS as exc:
            self._set_health(False, await self._unreachable_reason(exc))
            metrics.KAFKA_METADATA_AGE.set(self.metadata_age or 0.0)
            return
        self._metadata_at = time.monotonic()
        self._note_brokers(cluster)
        metrics.KAFKA_METADATA_AGE.set(0.0)
        due = time.monotonic() - self._limits_at >= self._settings.metadata_max_age_ms / 1000
        if not missing and (self._limits_stale or due):
            try:
                async with asyncio.timeout(max(self._health_interval, 1.0) * 2):
                    await self._refresh_limits()
            except _CONNECT_ERRORS as exc:
                # Not a readiness matter: the producer's limit applies meanwhile and the
                # broker refuses what does not fit (a definitive 413 all the same). Tried
                # again when due, not at every health check: a broker without
                # DescribeConfigs (tansu) would otherwise be asked, and logged, every 2 s.
                self._limits_at = time.monotonic()
                self._limits_stale = False
                log.warning(
                    "topic_limits_unknown",
                    error=type(exc).__name__,
                    reason="the cluster did not answer DescribeConfigs for the topics'"
                    f" {MAX_MESSAGE_BYTES} (a broker without it, such as tansu, or no"
                    " DescribeConfigs ACL)",
                    consequence=f"the producer's limit of {self._max_request_size} bytes"
                    " applies; the broker refuses what its topics do not take (413)",
                    retry_in_seconds=round(self._settings.metadata_max_age_ms / 1000),
                )
        if missing:
            self._set_health(False, f"topics missing: {', '.join(missing)}")
        elif not self._ready_once and (leaderless := _leaderless(cluster, self.required_topics)):
            # At start only, when topics were just created and their leaders are not elected
            # yet. Later a partition without a leader (all its replicas down) does not stop
            # the others: its publishes time out and readiness reports the stall.
            shown = ", ".join(leaderless[:5]) + (" ..." if len(leaderless) > 5 else "")
            self._set_health(False, f"partitions without a leader: {shown}")
        else:
            self._set_health(True)

    def _note_brokers(self, cluster: Any) -> None:
        """Brokers the metadata lists: reachable now, and named in the client's logs."""
        brokers = {b.nodeId: f"{b.host}:{b.port}" for b in cluster.brokers()}
        name_brokers(brokers)
        now = time.monotonic()
        self._brokers = sorted(brokers.values())
        for address in self._brokers:
            self._broker_seen[address] = now
        if self._unreachable:
            log.info("kafka_brokers_reachable", brokers=sorted(brokers.values()))
            self._unreachable = {}

    async def _unreachable_reason(self, exc: BaseException) -> str:
        """Readiness while metadata fails: the broker addresses that do not answer a
        connection (the last known brokers, else the bootstrap servers) and for how long."""
        addresses = self._brokers or [
            a.strip() for a in self._settings.bootstrap_servers.split(",") if a.strip()
        ]
        causes = await asyncio.gather(*(self._probe(a) for a in addresses))
        now = time.monotonic()
        down = {a: c for a, c in zip(addresses, causes, strict=True) if c is not None}
        if down.keys() != self._unreachable.keys():
            log.warning("kafka_brokers_unreachable", brokers=down)
        self._unreachable = down
        for address in down:
            self._broker_seen.setdefault(address, now)
        parts = [
            f"cannot reach {a} for {now - self._broker_seen[a]:.0f}s ({cause})"
            for a, cause in sorted(down.items())
        ]
        parts.append(f"metadata unavailable: {type(exc).__name__}")
        return "; ".join(parts)

    async def _probe(self, address: str) -> str | None:
        """Why a connection to `address` fails, or None when it succeeds."""
        try:
            async with asyncio.timeout(_PROBE_SECONDS):
                conn = await _open(address, connection_kwargs(self._settings))
        except TimeoutError:
            return f"no answer within {_PROBE_SECONDS:g}s"
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        except (*_CONNECT_ERRORS, ssl.SSLError) as exc:
            return type(exc).__name__
        conn.close()
        return None

    async def _sweep(self) -> None:
        """Time out the publishes past their deadline, and sample the in-flight gauge (not
        updated per publish); ends when none is pending."""
        deadlines = self._deadlines
        loop = asyncio.get_running_loop()
        try:
            while deadlines:
                metrics.PUBLISHES_IN_FLIGHT.set(self._in_flight)
                await asyncio.sleep(self._sweep_interval)
                now = loop.time()
                while deadlines:
                    oldest = deadlines[0]
                    if oldest.task is not None:
                        if oldest.at > now:
                            break
                        oldest.expired = True
                        oldest.task.cancel()
                    deadlines.popleft()
        finally:
            self._sweeper = None
            metrics.PUBLISHES_IN_FLIGHT.set(self._in_flight)

    async def partition_count(self, topic: str) -> int:
        """Partitions of `topic` (waits for the producer's metadata of it)."""
        if self._producer is None:
            raise KafkaUnavailableError(self._not_ready_reason)
        return len(await self._producer.partitions_for(topic))

    # -- publishing --------------------------------------------------------------------

    async def publish(
        self, event: CanonicalEvent, *, extra_headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Encode and publish one event; returns once Kafka acknowledged it.

        `extra_headers` follow the usual four (`replay` adds where the record came from).
        """
        record = self.event_record(event, extra_headers=extra_headers)
        await self._send(
            record.topic, record.key, record.value, record.headers, record.route.topic_kind
        )
        self.count_published(record)

    def event_record(
        self, event: CanonicalEvent, *, extra_headers: Sequence[tuple[str, bytes]] = ()
    ) -> EventRecord:
        """The record of one event on its topic, encoded, not sent (exactly_once sends it
        through the intake topic)."""
        route = self._routes.get(event.event_type)
        if route is None:
            # An eventType the catalog lacks: the generic schema's route, the event's own type.
            route = self._routes[""]
            event_type_header = event.event_type.encode()
        else:
            event_type_header = route.event_type_header
        if self._schemas_pending:
            raise SchemasNotRegisteredError("schemas not registered with the schema registry yet")
        try:
            value = self._codec.encode(event)
        except CodecError:
            metrics.PUBLISH_ERRORS.labels(kind="encode").inc()
            raise
        headers = [
            ("event-type", event_type_header),
            ("event-id", str(event.event_id).encode()),
            ("source", event.source.value.encode()),
            ("schema-fingerprint", route.fingerprint_header),
            *extra_headers,
        ]
        key = str(event.ticket_id).encode()
        return EventRecord(route.topic, key, value, headers, route, event.source.value)

    def check_fits(self, record: EventRecord) -> None:
        """RecordTooLargeError if `record` can never fit its topic (before sending it
        elsewhere first: exactly_once's intake)."""
        size = record_size(record.key, record.value, record.headers)
        limit = self.record_limit(record.topic)
        if size > limit:
            metrics.PUBLISH_ERRORS.labels(kind="too_large").inc()
            raise RecordTooLargeError(record.topic, size, limit)

    def count_published(self, record: EventRecord) -> None:
        """Count an event as published (once its record is acknowledged, or committed)."""
        route = record.route
        self._published_by(route.category, route.event_type_label, record.source).inc()
        if route.topic_kind == UNKNOWN_CATEGORY:
            metrics.UNKNOWN_EVENTS.inc()

    async def send_record(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        topic_kind: str,
    ) -> Any:
        """Send one record as it is; its RecordMetadata (partition, offset) once acknowledged."""
        return await self._send(topic, key, value, headers, topic_kind)

    async def publish_dlq(
        self, body: bytes, *, kind: str, reason: str, headers: Mapping[str, str]
    ) -> None:
        """Keep bytes that are not a valid event, as they came, with why they were refused.

        `headers`: the rest of the contract, from `bridge.dlq` (webhook_ or poller_headers).
        """
        all_headers = [
            (dlq.KIND, kind.encode()),
            (dlq.REASON, reason.encode()[:_DLQ_REASON_MAX_BYTES]),
            *((k, v.encode()) for k, v in headers.items()),
        ]
        await self._send(self.topics.dlq, None, body, all_headers, DLQ_SUFFIX)
        metrics.DLQ_RECORDS.labels(kind=kind).inc()

    async def publish_state(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Write one ticket-state record (None: a tombstone that compaction removes)."""
        await self._send(topic, key, value, [], STATE_SUFFIX)

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        topic_kind: str,
    ) -> Any:
        size = record_size(key, value, headers)
        limit = self.record_limit(topic)
        if size > limit:
            # Decided here, before Kafka is asked: this record will never fit its topic.
            metrics.PUBLISH_ERRORS.labels(kind="too_large").inc()
            raise RecordTooLargeError(topic, size, limit)
        if self._replacing:
            # A producer swap (see _supervise) takes a moment: wait for it, not fail.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await self._ready.wait()
        producer = self._producer
        if producer is None or not self._healthy:
            metrics.PUBLISH_ERRORS.labels(kind="unavailable").inc()
            raise KafkaUnavailableError(self._not_ready_reason)
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        started = time.perf_counter()
        # The publish timeout, like asyncio.timeout (the task is cancelled at the deadline and
        # the cancellation becomes a TimeoutError) but without a timer of its own.
        deadline = _Deadline(loop.time() + self._timeout, task)
        self._deadlines.append(deadline)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep(), name="publish-deadlines")
        cancelling = task.cancelling()
        self._in_flight += 1
        # The record once the producer holds it: after a timeout it may still be written.
        ack: asyncio.Future[Any] | None = None
        try:
            try:
                ack = await producer.send(topic, value, key=key, headers=headers)
                if not ack.done():
                    # Waited through a future of our own, so that a timeout abandons the
                    # wait, not the record, which may still land (what asyncio.shield does).
                    waiter: asyncio.Future[None] = loop.create_future()
                    ack.add_done_callback(partial(_ack_done, waiter))
                    await waiter
                metadata = ack.result()
            except asyncio.CancelledError:
                if deadline.expired and task.uncancel() <= cancelling:
                    raise TimeoutError from None
                raise
            finally:
                deadline.task = None
        except TimeoutError:
            metrics.PUBLISH_ERRORS.labels(kind="timeout").inc()
            self._failed(f"no acknowledgement within {self._timeout:g}s")
            # Cancelled inside send(): the producer never took the record (landing None).
            raise PublishTimeoutError(
                f"no acknowledgement within {self._timeout}s", landing=ack
            ) from None
        except _TOO_LARGE:
            # The topic's limit was lowered since it was read. Definitive only if this record
            # alone exceeds the limit read now: it may have shared the refused batch with
            # others; those get a 503 and are retried by their sender.
            metrics.PUBLISH_ERRORS.labels(kind="too_large").inc()
            self._replace_producer = self._settings.enable_idempotence
            self._wake.set()
            with contextlib.suppress(*_CONNECT_ERRORS):
                async with asyncio.timeout(self._timeout):
                    await self._refresh_limits()
            if size > self.record_limit(topic):
                raise RecordTooLargeError(topic, size, limit, by_broker=True) from None
            raise KafkaUnavailableError("a batch refused as too large") from None
        except KafkaError as exc:
            kind = _error_kind(exc)
            metrics.PUBLISH_ERRORS.labels(kind=kind).inc()
            if kind == "rejected":
                # One topic refusing (no Write ACL) says nothing of the whole
                # cluster: the webhook gets its 503, readiness stays as it is.
                log.warning("publish_rejected", topic=topic, error=type(exc).__name__)
                self._wake.set()
            else:
                self._failed(type(exc).__name__)
            raise KafkaUnavailableError(type(exc).__name__) from exc
        finally:
            self._in_flight -= 1
        self._failing_since = None
        self._duration_by(topic_kind).observe(time.perf_counter() - started)
        return metadata
