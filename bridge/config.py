"""The bridge's one config tree: env vars `BRIDGE_<SECTION>_<FIELD>`, an optional TOML file and
`*_file` secrets, validated once at start-up with messages that name the variable to fix.
"""

from __future__ import annotations

import os
import re
import tomllib
import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from bridge.errors import BridgeError

ENV_PREFIX = "BRIDGE_"
CONFIG_FILE_ENV = "BRIDGE_CONFIG_FILE"
REDACTED = "**********"

# Kafka refuses topic names over 249 chars. The prefix is followed by "." and a suffix the
# bridge owns (a category such as "mediaDevice", "unknown", "dlq", "bridge-state"); suffixes
# are kept to TOPIC_SUFFIX_MAX_CHARS so that any legal prefix yields legal topic names.
KAFKA_TOPIC_MAX_CHARS = 249
TOPIC_SUFFIX_MAX_CHARS = 32
TOPIC_PREFIX_MAX_CHARS = KAFKA_TOPIC_MAX_CHARS - 1 - TOPIC_SUFFIX_MAX_CHARS
_TOPIC_PREFIX_RE = re.compile(r"[a-zA-Z0-9._-]+")

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared, not bound

# Room a dead letter needs beyond its body: batch and record framing, the dlq-* headers (the
# reason is cut at 1 KiB) and the request id; what the bridge writes stays well below.
DLQ_RECORD_OVERHEAD_BYTES = 4096
# What the message size limit adds to the body limit when unset: room for the overhead above
# and for an event's record, which is at most its body plus a few hundred bytes.
MESSAGE_BYTES_HEADROOM = 64 * 1024


class ConfigError(BridgeError):
    """The configuration is unusable; the message has one line per problem, naming the variable."""


# What to set when no webhook authentication is configured (the "no method" problem).
NO_WEBHOOK_AUTH_FIX: Final = (
    "set BRIDGE_AUTH_HMAC_SECRET, BRIDGE_AUTH_TOKEN or BRIDGE_AUTH_BASIC_USERNAME +"
    " BRIDGE_AUTH_BASIC_PASSWORD (or their *_FILE variants), or BRIDGE_AUTH_INSECURE_NO_AUTH=true"
    " for development"
)
# Whether a webhook authentication method must be configured: not for the commands that
# serve no webhooks (load_settings(require_webhook_auth=False)). A context variable because
# pydantic-settings passes no validation context through a settings model's constructor.
_WEBHOOK_AUTH_REQUIRED: ContextVar[bool] = ContextVar("webhook_auth_required", default=True)


def _blank_to_none(value: object) -> object:
    # Helm charts and compose files render unset values as empty strings: treat them as unset.
    return None if isinstance(value, str) and not value.strip() else value


OptionalStr = Annotated[str | None, BeforeValidator(_blank_to_none)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_blank_to_none)]
OptionalPath = Annotated[Path | None, BeforeValidator(_blank_to_none)]
OptionalFile = Annotated[FilePath | None, BeforeValidator(_blank_to_none)]
OptionalInt = Annotated[int | None, BeforeValidator(_blank_to_none)]


def env_name(*path: str) -> str:
    """The env variable for a dotted config path: `env_name("kafka", "linger_ms")`."""
    return ENV_PREFIX + "_".join(path).upper()


def _problem(section: str, field: str, message: str) -> PydanticCustomError:
    # `field` travels in the error context so that ConfigError can name the variable even for
    # errors raised by a model validator, whose location is the section, not the field. The
    # message goes in the context too: as the template, a "{" in a path would break formatting.
    return PydanticCustomError(
        "config_invalid", "{message}", {"message": message, "field": field, "section": section}
    )


def _secret_file_field(secret: str, section: str) -> Any:
    return Field(
        default=None,
        description=(
            f"File holding {section}.{secret} (e.g. a mounted Kubernetes secret), read at start-up"
            f"; one trailing newline is stripped. Mutually exclusive with"
            f" {env_name(section, secret)}."
        ),
    )


class _Section(BaseModel):
    """A config section: unknown keys are refused so that a misspelt variable fails loudly."""

    model_config = ConfigDict(extra="forbid")

    SECTION: ClassVar[str]
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()

    def _resolve_secret_files(self) -> None:
        """Fill each secret `x` from `x_file` when that is set."""
        for name in self.SECRET_FIELDS:
            path: Path | None = getattr(self, f"{name}_file")
            if path is None:
                continue
            file_var = env_name(self.SECTION, f"{name}_file")
            if getattr(self, name) is not None:
                raise _problem(
                    self.SECTION,
                    f"{name}_file",
                    f"set either {env_name(self.SECTION, name)} or {file_var}, not both",
                )
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                # strerror only: the exception text of a decode error quotes the content.
                why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise _problem(
                    self.SECTION, f"{name}_file", f"cannot read secret file {path}: {why}"
                ) from None
            text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
            if not text:
                raise _problem(self.SECTION, f"{name}_file", f"secret file {path} is empty")
            setattr(self, name, SecretStr(text))


class KafkaSettings(_Section):
    """How the bridge reaches the Kafka cluster and which topics it writes."""

    SECTION = "kafka"
    SECRET_FIELDS = ("sasl_password", "ssl_key_password")

    # acks is deliberately not configurable: it is always "all". The HTTP contract answers 200
    # only once the event is durable on every in-sync replica, and the idempotent producer
    # requires acks=all anyway; a weaker setting would turn a broker failover into silent loss.

    bootstrap_servers: str = Field(
        default="localhost:9092",
        min_length=1,
        description="Comma-separated host:port list of Kafka brokers to bootstrap from.",
    )
    topic_prefix: str = Field(
        default="apizee.session-events",
        description=(
            "Prefix of every topic the bridge writes: `{prefix}.{category}`, `{prefix}.unknown`,"
            f" `{{prefix}}.dlq`, `{{prefix}}.bridge-state`. Letters, digits, `.`, `_`, `-`; at"
            f" most {TOPIC_PREFIX_MAX_CHARS} characters."
        ),
    )
    client_id: str = Field(
        default="apizee-kafka-bridge",
        min_length=1,
        description="Kafka client id, shown in broker logs and quotas.",
    )
    enable_idempotence: bool = Field(
        default=True,
        description=(
            "Idempotent producer: broker-side dedupe of retried batches, per-partition order"
            " kept across retries. Turn off only for brokers that lack it."
        ),
    )
    linger_ms: int = Field(
        default=5,
        ge=0,
        description="How long the producer waits to fill a batch before sending it (ms).",
    )
    max_batch_size: int = Field(
        default=65536,
        ge=1,
        description="Maximum size of one producer batch per partition (bytes).",
    )
    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = Field(
        default="none",
        description="Compression of producer batches: none, gzip, lz4, zstd or snappy.",
    )
    request_timeout_ms: int = Field(
        default=3000,
        ge=1,
        description=(
            "How long the producer waits for a broker's answer before it gives up on that"
            " request, reconnects and sends it again (ms; the idempotent producer makes the"
            " resend harmless). It bounds what a hung broker (frozen, not dead: its"
            " connections stay open) costs the partitions it led: their records wait for the"
            " requests in flight to it, so they reach the new leader at most this long after"
            " Kafka's failover. Kafka's client default (30000) made a frozen leader cost up"
            " to 30 s. Consumers in a group wait at least 30000 (a JoinGroup lasts a whole"
            " rebalance). Metadata is asked of every broker at once; the first answer counts."
        ),
    )
    publish_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How long a webhook waits for the broker acknowledgement before the bridge answers"
            " 503 `publish_timeout` with Retry-After. Such a 503 means *maybe stored*: the"
            " record may still be written. A retry of the same event id meanwhile waits for"
            " that record (at most this long again) instead of writing a second copy, and is"
            " answered `duplicate` once it landed."
        ),
    )
    retry_backoff_ms: int = Field(
        default=100,
        ge=0,
        description="Pause between producer retries of a failed request (ms).",
    )
    metadata_max_age_ms: int = Field(
        default=30000,
        ge=1,
        description=(
            "Refresh cluster metadata at least this often (ms), so leader moves and new"
            " partitions are picked up."
        ),
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="Protocol to talk to brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None,
        BeforeValidator(_blank_to_none),
    ] = Field(
        default=None,
        description=(
            "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); required with SASL_PLAINTEXT"
            " and SASL_SSL."
        ),
    )
    sasl_username: OptionalStr = Field(
        default=None, description="SASL username; required with SASL_PLAINTEXT and SASL_SSL."
    )
    sasl_password: OptionalSecret = Field(
        default=None, description="SASL password; required with SASL_PLAINTEXT and SASL_SSL."
    )
    sasl_password_file: OptionalPath = _secret_file_field("sasl_password", "kafka")
    ssl_cafile: OptionalFile = Field(
        default=None,
        description="PEM file of CA certificates to verify brokers; unset uses the system CAs.",
    )
    ssl_certfile: OptionalFile = Field(
        default=None,
        description="PEM client certificate for mutual TLS (may also hold the private key).",
    )
    ssl_keyfile: OptionalFile = Field(
        default=None, description="PEM private key of the client certificate for mutual TLS."
    )
    ssl_key_password: OptionalSecret = Field(
        default=None, description="Password of an encrypted ssl_keyfile."
    )
    ssl_key_password_file: OptionalPath = _secret_file_field("ssl_key_password", "kafka")
    ssl_check_hostname: bool = Field(
        default=True,
        description="Check that broker certificates match their host names; keep on in production.",
    )
    create_topics: bool = Field(
        default=True,
        description=(
            "Create missing topics at start-up. Turn off on clusters where the bridge has no"
            " admin rights and topics are provisioned separately."
        ),
    )
    topic_partitions: int = Field(
        default=6,
        ge=1,
        description="Partitions of topics the bridge creates (ignored for existing topics).",
    )
    topic_replication_factor: int = Field(
        default=-1,
        ge=-1,
        description=(
            "Replication factor of topics the bridge creates; -1 means 3, or the number of"
            " brokers when the cluster has fewer."
        ),
    )
    max_message_bytes: OptionalInt = Field(
        default=None,
        ge=1024,
        description=(
            "Largest record batch the bridge sends (the producer's max request size) and the"
            " `max.message.bytes` it sets on the topics it creates; unset means"
            f" BRIDGE_INGRESS_MAX_BODY_BYTES + {MESSAGE_BYTES_HEADROOM}, so that any body the"
            " HTTP limit admits fits the dead-letter topic. The bridge reads back"
            " `max.message.bytes` of existing topics and answers 413 (raw body to the DLQ) for"
            " a record larger than its topic accepts, before sending it."
        ),
    )

    def message_bytes(self, max_body_bytes: int) -> int:
        """The effective max_message_bytes, given the ingress's body limit."""
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        return max(max_body_bytes + MESSAGE_BYTES_HEADROOM, self.max_batch_size)

    @field_validator("topic_prefix")
    @classmethod
    def _legal_topic_prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX_RE.fullmatch(value):
            raise ValueError("use only letters, digits, '.', '_' and '-' (at least one)")
        if len(value) > TOPIC_PREFIX_MAX_CHARS:
            raise ValueError(
                f"at most {TOPIC_PREFIX_MAX_CHARS} characters, so that topic names stay within"
                f" Kafka's {KAFKA_TOPIC_MAX_CHARS}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        self._resolve_secret_files()
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise _problem(
                        "kafka",
                        name,
                        f"required when {env_name('kafka', 'security_protocol')}"
                        f" is {self.security_protocol}",
                    )
        else:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is not None:
                    raise _problem(
                        "kafka",
                        name,
                        f"only used with SASL_PLAINTEXT or SASL_SSL; set"
                        f" {env_name('kafka', 'security_protocol')} accordingly or unset this",
                    )
        if not tls:
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"):
                if getattr(self, name) is not None:
                    raise _problem(
                        "kafka",
                        name,
                        f"only used with SSL or SASL_SSL; set"
                        f" {env_name('kafka', 'security_protocol')} accordingly or unset this",
                    )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise _problem(
                "kafka", "ssl_certfile", f"required when {env_name('kafka', 'ssl_keyfile')} is set"
            )
        return self


class SchemaSettings(_Section):
    """How records are framed: Avro single-object encoding, or the Confluent wire format with
    the schemas registered in a Confluent-compatible Schema Registry."""

    SECTION = "schema"
    SECRET_FIELDS = ("registry_password",)

    registry_url: OptionalStr = Field(
        default=None,
        description=(
            "Base URL of a Confluent-compatible Schema Registry (Confluent, Karapace, Redpanda;"
            " Apicurio: `https://host/apis/ccompat/v7`). Set: the bridge registers its 33 schemas"
            " at start-up and frames every record the Confluent way (`00` + schema id). Unset:"
            " Avro single-object encoding, no registry."
        ),
    )
    registry_username: OptionalStr = Field(
        default=None, description="HTTP Basic username for the registry; set with the password."
    )
    registry_password: OptionalSecret = Field(
        default=None, description="HTTP Basic password for the registry; set with the username."
    )
    registry_password_file: OptionalPath = _secret_file_field("registry_password", "schema")
    registry_ca_file: OptionalFile = Field(
        default=None,
        description="PEM file of CA certificates to verify an https registry; unset: system CAs.",
    )
    registry_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of one registry request, connect to last byte."
    )
    registry_retry_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "While the registry is unreachable at start-up the bridge is not ready and retries"
            " with exponential backoff (from 0.5 s, with jitter) up to this delay."
        ),
    )
    subject_strategy: Literal["topic_record", "record"] = Field(
        default="topic_record",
        description=(
            "Subject names: `topic_record` (TopicRecordNameStrategy, `{topic}-{record full"
            " name}`: several event types share a category topic) or `record`"
            " (RecordNameStrategy, `{record full name}`)."
        ),
    )

    @field_validator("registry_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parsed.username is not None or parsed.password is not None:
            # Credentials in a URL end up in logs and error messages.
            raise ValueError(
                "must not carry credentials: set BRIDGE_SCHEMA_REGISTRY_USERNAME and"
                " BRIDGE_SCHEMA_REGISTRY_PASSWORD"
            )
        if parsed.query or parsed.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> SchemaSettings:
        self._resolve_secret_files()
        if (self.registry_username is None) != (self.registry_password is None):
            missing = "registry_password" if self.registry_password is None else "registry_username"
            raise _problem(
                self.SECTION,
                missing,
                f"set both {env_name(self.SECTION, 'registry_username')} and"
                f" {env_name(self.SECTION, 'registry_password')}, or neither",
            )
        if self.registry_url is None:
            for name in ("registry_username", "registry_ca_file"):
                if getattr(self, name) is not None:
                    raise _problem(
                        self.SECTION,
                        name,
                        f"only used with {env_name(self.SECTION, 'registry_url')}; set it or"
                        " unset this",
                    )
        return self


class IngressSettings(_Section):
    """The public HTTP endpoint that receives Apizee webhooks."""

    SECTION = "ingress"

    host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a container must listen on all interfaces
        description="Address the webhook server listens on.",
    )
    port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Port of the webhook server (0 picks a free port, for tests).",
    )
    path: str = Field(
        default="/webhooks/apizee",
        description="URL path Apizee posts webhooks to; must start with '/'.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Largest webhook body accepted (bytes); larger ones are answered 413.",
    )
    max_body_bytes_in_flight: int = Field(
        default=8 * 1024 * 1024,
        ge=1,
        description=(
            "Most webhook body bytes one worker reads or handles at once, counted from"
            " Content-Length (a chunked body counts as BRIDGE_INGRESS_MAX_BODY_BYTES) before"
            " the body is read; a request beyond it is answered 503 with Retry-After at once."
            " Bounds memory before authentication too (an HMAC needs the body); the default"
            " keeps a worker well inside the chart's 512Mi limit. At least max_body_bytes."
        ),
    )
    max_connections: int = Field(
        default=512,
        ge=1,
        description=(
            "Most connections one worker holds on the webhook port; a new connection beyond"
            " it is answered 503 with Retry-After and closed, unread."
        ),
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Number of worker processes serving webhooks.",
    )
    shutdown_grace_seconds: float = Field(
        default=20.0,
        ge=0,
        description=(
            "On SIGTERM, how long in-flight webhooks may finish and the producer may flush"
            " before the process exits. Keep below the pod's terminationGracePeriodSeconds."
        ),
    )
    retry_after_seconds: int = Field(
        default=5,
        ge=0,
        description="Value of the Retry-After header on 503 answers (seconds).",
    )
    request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a sender may take to deliver a webhook's body (else 408), and how long a"
            " connection may stay idle or trickle its headers before it is closed, so slow"
            " senders cannot hold connections. Must exceed kafka.publish_timeout_seconds."
        ),
    )
    access_log: bool = Field(
        default=False,
        description="Log one line per HTTP request (the metrics already count them).",
    )

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> IngressSettings:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise _problem(
                self.SECTION,
                "max_body_bytes_in_flight",
                f"must be at least {env_name(self.SECTION, 'max_body_bytes')}"
                f" ({self.max_body_bytes}), or a body at the limit is never admitted",
            )
        return self


class AdminSettings(_Section):
    """The admin HTTP endpoint: /metrics, /healthz, /readyz."""

    SECTION = "admin"

    host: str = Field(
        default="0.0.0.0",  # noqa: S104 - Prometheus and the kubelet probe from outside the pod
        description="Address the admin server (/metrics, /healthz, /readyz) listens on.",
    )
    port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port of the admin server (0 picks a free port, for tests).",
    )


class AuthSettings(_Section):
    """How webhooks prove they come from Apizee; any configured method that matches passes."""

    SECTION = "auth"
    SECRET_FIELDS = ("hmac_secret", "token", "basic_password")

    hmac_secret: OptionalSecret = Field(
        default=None,
        description="Shared secret of the HMAC-SHA256 webhook signature; set to enable HMAC.",
    )
    hmac_secret_file: OptionalPath = _secret_file_field("hmac_secret", "auth")
    hmac_header: str = Field(
        default="X-Apizee-Signature",
        min_length=1,
        description="Request header carrying the HMAC signature.",
    )
    hmac_encoding: Literal["hex", "base64"] = Field(
        default="hex", description="Encoding of the signature in the header: hex or base64."
    )
    hmac_prefix: str = Field(
        default="",
        description="Prefix stripped from the signature header before decoding, e.g. 'sha256='.",
    )
    timestamp_header: OptionalStr = Field(
        default=None,
        description=(
            "Header carrying the signing time (epoch seconds). When set, the signed message is"
            " '{timestamp}.{body}' and stale timestamps are refused (replay protection)."
        ),
    )
    timestamp_tolerance_seconds: int = Field(
        default=300,
        ge=1,
        description="Largest accepted difference between the signed timestamp and now (seconds).",
    )
    token: OptionalSecret = Field(
        default=None,
        description="Shared token the sender presents in a header or query parameter.",
    )
    token_file: OptionalPath = _secret_file_field("token", "auth")
    token_header: str = Field(
        default="X-Webhook-Token",
        min_length=1,
        description="Request header carrying the shared token.",
    )
    token_query_param: OptionalStr = Field(
        default="token",
        description=(
            "Query parameter carrying the shared token; empty disables it. Tokens in URLs end up"
            " in proxy logs: prefer the header."
        ),
    )
    basic_username: OptionalStr = Field(
        default=None, description="HTTP Basic username; set with basic_password to enable Basic."
    )
    basic_password: OptionalSecret = Field(
        default=None, description="HTTP Basic password; set with basic_username to enable Basic."
    )
    basic_password_file: OptionalPath = _secret_file_field("basic_password", "auth")
    insecure_no_auth: bool = Field(
        default=False,
        description=(
            "Accept unauthenticated webhooks. Development only: anyone who reaches the port"
            " can write to Kafka."
        ),
    )

    @property
    def methods(self) -> tuple[str, ...]:
        """The configured methods, in the order they are tried."""
        configured = {
            "hmac": self.hmac_secret is not None,
            "token": self.token is not None,
            "basic": self.basic_username is not None and self.basic_password is not None,
        }
        return tuple(name for name, on in configured.items() if on)

    @model_validator(mode="after")
    def _some_method(self) -> AuthSettings:
        self._resolve_secret_files()
        if (self.basic_username is None) != (self.basic_password is None):
            missing = "basic_password" if self.basic_password is None else "basic_username"
            raise _problem(
                "auth",
                missing,
                f"set both {env_name('auth', 'basic_username')} and"
                f" {env_name('auth', 'basic_password')}, or neither",
            )
        if self.insecure_no_auth and self.methods:
            raise _problem(
                "auth",
                "insecure_no_auth",
                "cannot be combined with a configured method (" + ", ".join(self.methods) + ")",
            )
        if not self.insecure_no_auth and not self.methods and _WEBHOOK_AUTH_REQUIRED.get():
            raise _problem(
                "auth", "*", f"no webhook authentication configured: {NO_WEBHOOK_AUTH_FIX}"
            )
        return self


class DedupeSettings(_Section):
    """The in-memory window that answers repeated webhook deliveries without republishing."""

    SECTION = "dedupe"

    window_seconds: int = Field(
        default=600,
        ge=1,
        description="How long a published event id is remembered to answer retries as duplicate.",
    )
    max_entries: int = Field(
        default=1_000_000,
        ge=1,
        description="Most event ids remembered at once; the oldest are forgotten first.",
    )


class DeliverySettings(_Section):
    """What a 200 promises about copies: at least once, or exactly once for read_committed
    consumers (Kafka transactions; docs/exactly-once.md)."""

    SECTION = "delivery"

    guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description=(
            "`at_least_once`: every acknowledged event is in Kafka; a copy may be written twice"
            " (a bridge killed mid-request, an id recognised by no dedupe window)."
            " `exactly_once`: every event id appears once for consumers reading with"
            " `isolation.level=read_committed`, whatever the retries, replicas, restarts and"
            " broker faults: webhooks go through an intake topic whose partitions the replicas"
            " share, and each partition's owner writes the category records, the ticket's"
            " dedupe state and its intake offsets in one transaction per commit interval."
            " Needs brokers with transactions (Apache Kafka; tansu is refused at start)."
        ),
    )
    commit_interval_ms: int = Field(
        default=100,
        ge=1,
        description=(
            "exactly_once: how long an intake partition's owner gathers webhooks into one"
            " transaction (group commit). Webhooks are answered when their transaction"
            " committed, so this adds to their latency; shorter costs more transactions."
        ),
    )
    transaction_timeout_ms: int = Field(
        default=30_000,
        ge=1000,
        description=(
            "exactly_once: how long a transaction may stay open before Kafka aborts it, and"
            " how long an owner waits for its commit. It must outlast a broker failover (the"
            " broker's session timeout, the ISR shrink, a request timeout or two) or every"
            " commit in flight when a broker hangs is given up and redone. An owner that died"
            " mid-transaction is fenced sooner, by the next owner after"
            " BRIDGE_POLLER_GROUP_SESSION_TIMEOUT_MS; only when no replica takes over do"
            " read_committed consumers of the partitions it wrote wait this long. Within the"
            " broker's transaction.max.timeout.ms."
        ),
    )
    horizon_hours: float = Field(
        default=168.0,
        gt=0,
        description=(
            "exactly_once: how long a ticket's event ids are kept after its last event to"
            " recognise resent ids (the dedupe state topic `{prefix}.intake-state`, compacted;"
            " then a tombstone). A copy resent later than this would be written again."
        ),
    )

    @model_validator(mode="after")
    def _interval_within_timeout(self) -> DeliverySettings:
        if self.commit_interval_ms * 10 > self.transaction_timeout_ms:
            raise _problem(
                "delivery",
                "commit_interval_ms",
                f"must be at most a tenth of {env_name('delivery', 'transaction_timeout_ms')}"
                f" ({self.transaction_timeout_ms}): a transaction lasts about one interval",
            )
        return self


class LogSettings(_Section):
    """Process logging."""

    SECTION = "log"

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level logged: DEBUG, INFO, WARNING or ERROR."
    )
    format: Literal["json", "console"] = Field(
        default="json",
        description="json (one object per line, for log shippers) or console (for humans).",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ApizeeSettings(_Section):
    """Apizee's REST API, which the poller reads to fill the gaps missed webhooks leave."""

    SECTION = "apizee"
    SECRET_FIELDS = ("token",)

    base_url: OptionalStr = Field(
        default=None,
        description=(
            "Base URL of Apizee's API, e.g. https://cloud.apizee.com (the client calls"
            " {base_url}/api/v3/tickets/{ticketId}/events). Unset disables the poller."
        ),
    )
    token: OptionalSecret = Field(
        default=None, description="Bearer token for Apizee's REST API; required with base_url."
    )
    token_file: OptionalPath = Field(
        default=None,
        description=(
            "File holding the Bearer token (a mounted secret); re-read when it changes, so a"
            " rotated token is picked up without a restart. Mutually exclusive with"
            " BRIDGE_APIZEE_TOKEN."
        ),
    )
    request_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of one REST request, connect to last byte."
    )
    rate_limit_per_second: float = Field(
        default=5.0,
        gt=0,
        description="Client-side rate limit on Apizee requests (token bucket refill rate).",
    )
    rate_limit_burst: int = Field(
        default=10, ge=1, description="Token bucket size: requests allowed in a burst."
    )
    max_retries: int = Field(
        default=4,
        ge=0,
        description="Retries of one request after 5xx, timeouts and connection errors.",
    )
    backoff_initial_seconds: float = Field(
        default=0.5, gt=0, description="First retry delay; doubles per retry, with jitter."
    )
    backoff_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest delay between retries (and longest 429 wait)."
    )
    circuit_failure_threshold: int = Field(
        default=5,
        ge=1,
        description="Consecutive failed requests that open the circuit (no requests for a while).",
    )
    circuit_open_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long the circuit stays open before one trial request is let through.",
    )

    @model_validator(mode="after")
    def _token_with_url(self) -> ApizeeSettings:
        self._resolve_secret_files()
        if self.base_url is not None and self.token is None:
            raise _problem(
                self.SECTION,
                "token",
                f"required when {env_name(self.SECTION, 'base_url')} is set"
                f" (or set {env_name(self.SECTION, 'token_file')})",
            )
        return self


class PollerSettings(_Section):
    """Gap filling: which tickets are polled, when, and when they are retired."""

    SECTION = "poller"

    enabled: bool = Field(
        default=True,
        description="Poll active tickets (effective only when BRIDGE_APIZEE_BASE_URL is set).",
    )
    interval_seconds: float = Field(
        default=60.0, gt=0, description="How often each active ticket is polled."
    )
    jitter_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Random spread of the poll interval (0.2 = +/-20%), so polls do not align.",
    )
    settle_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "An event the REST list shows counts as a gap only once it is this old: its"
            " webhook may still be on its way."
        ),
    )
    terminal_poll_delay_seconds: float = Field(
        default=15.0,
        ge=0,
        description="Delay of the extra poll after a terminal event (closed/completed/cancelled).",
    )
    retire_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description=(
            "A ticket stops being polled this long after the bridge learned of its terminal"
            " event (or after that event's own time, if later): a late terminal webhook still"
            " gets the whole grace period."
        ),
    )
    idle_ttl_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="A ticket with no new event for this long stops being polled.",
    )
    concurrency: int = Field(
        default=8, ge=1, description="Tickets polled at the same time (per replica)."
    )
    retired_ttl_seconds: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description=(
            "How long a retired ticket's floor is kept (in memory and in the state topic) so"
            " that a late event does not make the poller re-publish its history."
        ),
    )
    max_ids_per_ticket: int = Field(
        default=5000,
        ge=10,
        description=(
            "Event ids remembered per ticket; beyond it the oldest are folded into a floor"
            " (ids at or below it count as published), so memory stays bounded."
        ),
    )
    state_flush_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often changed ticket states are written to the state topic.",
    )
    group_id: str = Field(
        default="apizee-kafka-bridge",
        min_length=1,
        description=(
            "Consumer group on the state topic: replicas in one group split the tickets by"
            " the partitions it assigns them."
        ),
    )
    group_session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description=(
            "Session timeout of that group: how soon a dead replica's tickets move. Within the"
            " broker's group.min.session.timeout.ms (Kafka's default: 6000) and"
            " group.max.session.timeout.ms."
        ),
    )
    group_heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, description="Heartbeat interval of that group (ms)."
    )


with warnings.catch_warnings():
    # The section of BRIDGE_SCHEMA_* is `schema`, which shadows BaseModel.schema(), pydantic
    # v1's deprecated JSON-schema method (nothing here calls it); pydantic warns once, here.
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class _KafkaSections(BaseSettings):
        """Kafka and the framing of its records (a base of BridgeSettings only so that the
        warning is silenced where `schema` is declared; base fields come first)."""

        kafka: KafkaSettings = Field(description="Kafka cluster and topics.")
        schema: SchemaSettings = Field(  # type: ignore[assignment]
            description="Record framing and the Schema Registry."
        )


class BridgeSettings(_KafkaSections):
    """Every setting of the bridge. Section names carry no underscore: `BRIDGE_<SECTION>_` is
    split once, so the rest of the variable name is the field name."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )

    ingress: IngressSettings = Field(description="Webhook HTTP server.")
    admin: AdminSettings = Field(description="Admin HTTP server.")
    auth: AuthSettings = Field(description="Webhook authentication.")
    dedupe: DedupeSettings = Field(description="Duplicate delivery window.")
    delivery: DeliverySettings = Field(description="Delivery guarantee.")
    log: LogSettings = Field(description="Logging.")
    apizee: ApizeeSettings = Field(description="Apizee REST API (the poller's source).")
    poller: PollerSettings = Field(description="Gap-filling poller.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit overrides, then env, then the TOML file. No .env or secrets_dir:
        # secrets come from env or from the explicit *_file settings.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV, "").strip()
        if config_file:
            path = Path(config_file).expanduser()
            # The TOML source silently skips a missing file; a named file that is absent is a
            # deployment mistake, so say so.
            if not path.is_file():
                raise ConfigError(f"{CONFIG_FILE_ENV}: no such file: {path}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _sections_from_empty(cls, data: Any) -> Any:
        # Each section is validated even when no variable sets it, so that section validators
        # (e.g. "no authentication configured") run and report through the normal error path.
        if isinstance(data, dict):
            for name in cls.model_fields:
                data.setdefault(name, {})
        return data

    @model_validator(mode="after")
    def _cross_section(self) -> BridgeSettings:
        ingress, admin = self.ingress, self.admin
        hosts_overlap = (
            ingress.host == admin.host
            or ingress.host in _WILDCARD_HOSTS
            or admin.host in _WILDCARD_HOSTS
        )
        if hosts_overlap and ingress.port == admin.port and ingress.port != 0:
            raise _problem(
                "admin",
                "port",
                f"must differ from {env_name('ingress', 'port')} ({ingress.port}) when both"
                " servers listen on the same address",
            )
        kafka = self.kafka
        if kafka.max_message_bytes is not None:
            # Every body the HTTP limit admits must fit the dead-letter topic the bridge
            # creates, and a full producer batch must fit any topic.
            least = max(ingress.max_body_bytes + DLQ_RECORD_OVERHEAD_BYTES, kafka.max_batch_size)
            if kafka.max_message_bytes < least:
                raise _problem(
                    "kafka",
                    "max_message_bytes",
                    f"must be at least {least}: {env_name('ingress', 'max_body_bytes')}"
                    f" ({ingress.max_body_bytes}) + {DLQ_RECORD_OVERHEAD_BYTES} for a dead"
                    f" letter's framing and headers, and at least"
                    f" {env_name('kafka', 'max_batch_size')} ({kafka.max_batch_size})",
                )
        if ingress.request_timeout_seconds <= self.kafka.publish_timeout_seconds:
            raise _problem(
                "ingress",
                "request_timeout_seconds",
                f"must exceed {env_name('kafka', 'publish_timeout_seconds')}"
                f" ({self.kafka.publish_timeout_seconds}), or every slow publish becomes a"
                " timeout instead of a 503",
            )
        return self


def _error_line(error: Any) -> str:
    loc = tuple(str(part) for part in error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == "config_invalid":
        loc = (str(ctx["section"]), str(ctx["field"]))
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown setting (check the spelling against docs/configuration.md)"
    name = env_name(*loc) if loc else ENV_PREFIX + "*"
    return f"{name}: {message}"


def load_settings(*, require_webhook_auth: bool = True, **overrides: Any) -> BridgeSettings:
    """Load settings from overrides, env and the optional TOML file; raise ConfigError.

    `require_webhook_auth=False`: for what serves no webhooks (tail, replay, check, backfill),
    no authentication method need be configured; the rest is validated as for `run`.
    """
    required = _WEBHOOK_AUTH_REQUIRED.set(require_webhook_auth)
    try:
        return BridgeSettings(**overrides)
    except ValidationError as exc:
        # errors() without input: pydantic's own str() quotes the input value, which may be a
        # secret.
        lines = [_error_line(e) for e in exc.errors(include_url=False, include_input=False)]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}: not valid TOML: {exc}") from None
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        _WEBHOOK_AUTH_REQUIRED.reset(required)


def redacted_dump(settings: BridgeSettings) -> dict[str, Any]:
    """The effective config as JSON-ready data, secrets shown as REDACTED (null when unset)."""
    # JSON mode renders SecretStr as "**********" and None as null.
    return settings.model_dump(mode="json")


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def env_var_docs() -> list[tuple[str, str, str]]:
    """(env variable, default as text, description) for every setting, for docs/configuration.md."""
    rows = [
        (
            CONFIG_FILE_ENV,
            "unset",
            "Optional TOML file with the same sections (`[kafka]`, `[auth]`, ...); environment"
            " variables override it.",
        )
    ]
    for section, section_field in BridgeSettings.model_fields.items():
        model = section_field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        rows.extend(
            (
                env_name(section, name),
                _default_text(field.get_default(call_default_factory=True)),
                field.description or "",
            )
            for name, field in model.model_fields.items()
        )
    return rows


def env_table() -> str:
    """env_var_docs() as a Markdown table (`apizee-bridge config --env-docs`, the docs)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | `{default}` | {doc} |" for name, default, doc in env_var_docs()]
    return "\n".join(rows)
