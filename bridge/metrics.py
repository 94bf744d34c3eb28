"""Every Prometheus metric of the bridge, defined once (docs/operations.md: "Metrics").

Labels are bounded enums (status, reason, category, event type, source, kind); never an id.
With several worker processes, prometheus-client's multiprocess mode aggregates them.
"""

from __future__ import annotations

import os
from typing import Final, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from bridge import __version__

PREFIX: Final = "apizee_bridge"

_M = TypeVar("_M", bound=MetricWrapperBase)


class Children(Generic[_M]):
    """A labelled metric's children, each looked up once: `labels()` costs microseconds
    (validation, str() of every value, a lock), a dict lookup by the values' tuple does not.

    Call with the label values in the order of the metric's label names. Label values are
    bounded enums, so the cache is too.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


# Latency buckets from 1 ms (an in-sync ack on a quiet cluster) to the publish timeout.
_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Webhook outcomes: the `reason` label of webhook_requests_total (the README's HTTP table).
REASONS: Final = (
    "accepted",
    "duplicate",
    "unknown_event_type",
    "invalid_json",
    "invalid_envelope",
    "missing_credentials",
    "bad_signature",
    "bad_timestamp",
    "bad_token",
    "bad_basic",
    "body_too_large",
    "record_too_large",
    "request_timeout",
    "unsupported_media_type",
    "over_capacity",
    "kafka_unavailable",
    "publish_timeout",
    "schemas_not_registered",
    "internal_error",
)

WEBHOOK_REQUESTS = Counter(
    f"{PREFIX}_webhook_requests_total",
    "Webhook requests answered, by HTTP status and reason.",
    ["status", "reason"],
)
WEBHOOK_DURATION = Histogram(
    f"{PREFIX}_webhook_request_duration_seconds",
    "Time from reading a webhook request to answering it, by HTTP status.",
    ["status"],
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_BODY_BYTES = Histogram(
    f"{PREFIX}_webhook_body_bytes",
    "Size of webhook bodies read.",
    buckets=(256, 512, 1024, 2048, 4096, 16384, 65536, 262144, 1048576),
)
WEBHOOKS_IN_FLIGHT = Gauge(
    f"{PREFIX}_webhooks_in_flight",
    "Webhook requests being handled now.",
    multiprocess_mode="livesum",
)
WEBHOOK_BODY_BYTES_IN_FLIGHT = Gauge(
    f"{PREFIX}_webhook_body_bytes_in_flight",
    "Webhook body bytes taken from the per-worker budget (BRIDGE_INGRESS_MAX_BODY_BYTES_IN_FLIGHT)"
    " by requests being read or handled now.",
    multiprocess_mode="livesum",
)
CONNECTIONS = Gauge(
    f"{PREFIX}_connections",
    "Connections open on the webhook port (per worker, capped by BRIDGE_INGRESS_MAX_CONNECTIONS).",
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED = Counter(
    f"{PREFIX}_connections_refused_total",
    "Connections to the webhook port answered 503 at once because the worker held"
    " BRIDGE_INGRESS_MAX_CONNECTIONS already.",
)

EVENTS_PUBLISHED = Counter(
    f"{PREFIX}_events_published_total",
    "Events acknowledged by Kafka on a category or the unknown topic.",
    ["category", "event_type", "source"],
)
PUBLISH_DURATION = Histogram(
    f"{PREFIX}_publish_duration_seconds",
    "Time from handing a record to the producer to the broker's acknowledgement (acks=all).",
    ["topic_kind"],
    buckets=_LATENCY_BUCKETS,
)
PUBLISH_ERRORS = Counter(
    f"{PREFIX}_publish_errors_total",
    "Records Kafka did not acknowledge, by kind (timeout, unavailable, rejected, encode,"
    " too_large: larger than the topic accepts, refused before sending or by the broker).",
    ["kind"],
)
TOPIC_MAX_MESSAGE_BYTES = Gauge(
    f"{PREFIX}_topic_max_message_bytes",
    "max.message.bytes of each topic as read back from the cluster, by topic suffix"
    " (category, unknown, dlq, bridge-state); no sample while the cluster does not say"
    " (no DescribeConfigs: the producer's limit applies).",
    ["topic_suffix"],
    multiprocess_mode="livemin",
)
PUBLISHES_IN_FLIGHT = Gauge(
    f"{PREFIX}_publishes_in_flight",
    "Records handed to the producer and not yet acknowledged (the producer buffer's use).",
    multiprocess_mode="livesum",
)
DLQ_RECORDS = Counter(
    f"{PREFIX}_dlq_records_total",
    "Raw bodies written to the dead-letter topic, by kind (invalid_json, invalid_envelope,"
    " record_too_large, encode_error).",
    ["kind"],
)
UNKNOWN_EVENTS = Counter(
    f"{PREFIX}_unknown_events_total",
    "Events whose eventType the catalog does not know, written to the unknown topic.",
)
DUPLICATES = Counter(
    f"{PREFIX}_duplicates_total",
    "Events not published again because their id was seen within the dedupe window.",
    ["source"],
)
DEDUPE_ENTRIES = Gauge(
    f"{PREFIX}_dedupe_entries",
    "Event ids held by the dedupe window.",
    multiprocess_mode="livesum",
)
KAFKA_READY = Gauge(
    f"{PREFIX}_kafka_ready",
    "1 when the producer is connected and its cluster metadata is fresh, else 0.",
    multiprocess_mode="livemin",
)
KAFKA_CONNECT_FAILURES = Counter(
    f"{PREFIX}_kafka_connect_failures_total",
    "Failed attempts to connect the producer (refused login, untrusted certificate, down).",
)
KAFKA_METADATA_AGE = Gauge(
    f"{PREFIX}_kafka_metadata_age_seconds",
    "Seconds since cluster metadata was last fetched successfully.",
    multiprocess_mode="livemax",
)
# exactly_once (bridge/exactly_once.py): the intake partitions' owners and their transactions.
INTAKE_PARTITIONS_OWNED = Gauge(
    f"{PREFIX}_intake_partitions_owned",
    "exactly_once: intake partitions this replica owns (writes transactions for).",
    multiprocess_mode="livesum",
)
TRANSACTIONS = Counter(
    f"{PREFIX}_transactions_total",
    "exactly_once: intake transactions by outcome: committed, failed (aborted or unknown;"
    " the partition is fenced, restored and its records processed again), fenced (another"
    " replica owns the partition now).",
    ["outcome"],
)
TRANSACTION_DURATION = Histogram(
    f"{PREFIX}_transaction_duration_seconds",
    "exactly_once: from a transaction's first record to its commit.",
    buckets=_LATENCY_BUCKETS,
)
TRANSACTION_RECORDS = Counter(
    f"{PREFIX}_transaction_records_total",
    "exactly_once: intake records the owners processed: written to their topic, or dropped"
    " as a copy of an id the ticket's state holds.",
    ["outcome"],
)
# A gauge rather than an Info: Info has no multiprocess mode.
BUILD_INFO = Gauge(
    f"{PREFIX}_build_info",
    "Always 1; the version label names the running bridge.",
    ["version"],
    multiprocess_mode="max",
)
BUILD_INFO.labels(version=__version__).set(1)


def registry() -> CollectorRegistry:
    """What /metrics serves: this process's registry, or all workers' when forked."""
    from prometheus_client import REGISTRY

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return merged


def exposition() -> bytes:
    return generate_latest(registry())


# Apizee REST client (bridge/apizee.py): the `status` label of apizee_requests_total.
APIZEE_STATUSES: Final = (
    "200",
    "401",
    "403",
    "404",
    "429",
    "5xx",
    "timeout",
    "connection_error",
    "other",
)

APIZEE_REQUESTS = Counter(
    f"{PREFIX}_apizee_requests_total",
    "Requests sent to Apizee's REST API (each retry counts), by status: 200, 401, 403, 404,"
    " 429, 5xx, timeout, connection_error, other.",
    ["status"],
)
APIZEE_REQUEST_DURATION = Histogram(
    f"{PREFIX}_apizee_request_duration_seconds",
    "Time of one request to Apizee's REST API, first byte sent to body read, by status.",
    ["status"],
    buckets=_LATENCY_BUCKETS,
)
APIZEE_RATE_LIMIT_WAITS = Counter(
    f"{PREFIX}_apizee_rate_limit_waits_total",
    "Requests to Apizee that waited for the client-side token bucket or a 429 pause.",
)
APIZEE_RATE_LIMIT_WAIT_SECONDS = Counter(
    f"{PREFIX}_apizee_rate_limit_wait_seconds_total",
    "Time requests to Apizee spent waiting for the token bucket or a 429 pause.",
)
APIZEE_CIRCUIT_STATE = Gauge(
    f"{PREFIX}_apizee_circuit_state",
    "Circuit breaker in front of Apizee: 0 closed, 1 half-open (one trial request), 2 open.",
    multiprocess_mode="livemax",
)
APIZEE_CIRCUIT_OPENS = Counter(
    f"{PREFIX}_apizee_circuit_opens_total",
    "Times the circuit breaker in front of Apizee opened (calls then fail fast).",
)
APIZEE_INVALID_ITEMS = Counter(
    f"{PREFIX}_apizee_invalid_items_total",
    "REST list items (or whole bodies) from Apizee that failed validation and go to the"
    " DLQ, by kind (invalid_json, invalid_envelope).",
    ["kind"],
)

# Poller (bridge/poller.py) and ticket state (bridge/state.py).
POLLS = Counter(
    f"{PREFIX}_polls_total",
    "Ticket polls, by outcome: ok, publish_failed, or the Apizee error kind (auth_failed,"
    " not_found, circuit_open, server_error, timeout, connection_error, rate_limited, ...).",
    ["outcome"],
)
GAPS_FOUND = Counter(
    f"{PREFIX}_gaps_found_total",
    "Events Apizee lists that no webhook brought (older than the settle delay), by category.",
    ["category"],
)
GAPS_FILLED = Counter(
    f"{PREFIX}_gaps_filled_total",
    "Gaps published by the poller (source=POLLER), by category.",
    ["category"],
)
ACTIVE_TICKETS = Gauge(
    f"{PREFIX}_active_tickets",
    "Tickets this replica polls (owned, not retired).",
    multiprocess_mode="livesum",
)
POLL_LAG_SECONDS = Gauge(
    f"{PREFIX}_poll_lag_seconds",
    "Age of the oldest poll that is due and not started (0 when the poller keeps up).",
    multiprocess_mode="livemax",
)
TICKETS_RETIRED = Counter(
    f"{PREFIX}_tickets_retired_total",
    "Tickets no longer polled, by reason: terminal (grace after a terminal event), idle.",
    ["reason"],
)
STATE_TICKETS = Gauge(
    f"{PREFIX}_state_tickets",
    "Tickets held in the state store (owned and recently seen).",
    multiprocess_mode="livesum",
)
STATE_WRITES = Counter(
    f"{PREFIX}_state_writes_total",
    "Ticket state records written to the compacted state topic.",
)
STATE_ERRORS = Counter(
    f"{PREFIX}_state_errors_total",
    "State topic problems, by kind: write (flush failed, retried), corrupt_record (skipped),"
    " group (the poller's consumer group refused, e.g. no Read ACL; retried).",
    ["kind"],
)
STATE_RESTORE_SECONDS = Gauge(
    f"{PREFIX}_state_restore_seconds",
    "Duration of the last state restore (reading assigned partitions to their end).",
    multiprocess_mode="livemax",
)
STATE_READY = Gauge(
    f"{PREFIX}_state_restored",
    "1 once the state of this replica's partitions is restored (readiness needs it).",
    multiprocess_mode="livemin",
)

# Schema Registry (bridge/registry.py): the `outcome` label of schema_registry_requests_total.
SCHEMA_REGISTRY_OUTCOMES: Final = (
    "ok",
    "conflict",
    "invalid",
    "unauthorized",
    "not_found",
    "client_error",
    "server_error",
    "timeout",
    "connection_error",
)

SCHEMA_REGISTRY_REQUESTS = Counter(
    f"{PREFIX}_schema_registry_requests_total",
    "Requests sent to the Schema Registry (each retry counts), by outcome: ok, conflict (409),"
    " invalid (422), unauthorized (401/403), not_found, client_error, server_error,"
    " timeout, connection_error.",
    ["outcome"],
)
SCHEMA_REGISTRY_FAILURES = Counter(
    f"{PREFIX}_schema_registry_failures_total",
    "Registrations of the schema set that failed, by kind: unavailable (not ready, retried"
    " with backoff), rejected (a schema refused: the bridge stops).",
    ["kind"],
)
SCHEMAS_REGISTERED = Gauge(
    f"{PREFIX}_schemas_registered",
    "Schemas whose Schema Registry id the bridge holds (all 33 before registry mode is"
    " ready; 0 without a registry).",
    multiprocess_mode="livemin",
)
