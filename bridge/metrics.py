"""Every Prometheus metric of the bridge, defined once (README: "Metrics").

Labels are bounded enums (status, reason, category, event type, source, kind); never an id.
With several worker processes, prometheus-client's multiprocess mode aggregates them.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import generate_latest

from bridge import __version__

PREFIX: Final = "apizee_bridge"

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

# Webhook outcomes: the `reason` label of webhook_requests_total (README's HTTP table).
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
    "unsupported_media_type",
    "kafka_unavailable",
    "publish_timeout",
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
    "Records Kafka did not acknowledge, by kind (timeout, unavailable, rejected, encode).",
    ["kind"],
)
PUBLISHES_IN_FLIGHT = Gauge(
    f"{PREFIX}_publishes_in_flight",
    "Records handed to the producer and not yet acknowledged (the producer buffer's use).",
    multiprocess_mode="livesum",
)
DLQ_RECORDS = Counter(
    f"{PREFIX}_dlq_records_total",
    "Raw bodies written to the dead-letter topic, by kind (invalid_json, invalid_envelope).",
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
KAFKA_METADATA_AGE = Gauge(
    f"{PREFIX}_kafka_metadata_age_seconds",
    "Seconds since cluster metadata was last fetched successfully.",
    multiprocess_mode="livemax",
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
