"""Reading the bridge's topics with confluent-kafka: an iterator of decoded events.

    from apizee_session_events.kafka import read_events

    for event in read_events("localhost:9092", group_id="my-service"):
        print(event.topic, event.fields["eventType"], event.fields["ticketId"])

Needs the extra `[kafka]`: `pip install 'apizee-session-events[kafka]'`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

try:
    from confluent_kafka import (
        OFFSET_BEGINNING,
        OFFSET_END,
        Consumer,
        KafkaError,
        KafkaException,
        Message,
        TopicPartition,
    )
except ImportError as exc:  # the extra is optional: say how to get it
    raise ImportError(
        "apizee_session_events.kafka needs confluent-kafka:"
        " pip install 'apizee-session-events[kafka]'"
    ) from exc

from apizee_session_events.bundled import event_topics
from apizee_session_events.decoder import Decoder
from apizee_session_events.errors import DecodeError

__all__ = ["DEFAULT_PREFIX", "Event", "KafkaReadError", "read_events"]

DEFAULT_PREFIX: Final = "apizee.session-events"
"""The bridge's default BRIDGE_KAFKA_TOPIC_PREFIX."""

_log = logging.getLogger(__name__)

_BATCH: Final = 500
# Without a group: how often to look for topics not there yet, and for new partitions.
_DISCOVER_SECONDS: Final = 1.0
_REDISCOVER_SECONDS: Final = 30.0
# The longest a consume() call blocks: Ctrl-C and the idle timer are looked at in between.
_POLL_SECONDS: Final = 0.5

# Errors a retry cannot mend: wrong credentials or missing ACLs. librdkafka reports them as
# non-fatal and would retry forever, so a script would hang instead of saying why.
_UNRECOVERABLE: Final = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)

# Set through keyword arguments; refused in `config` so a default is never silently lost.
_OWN_KEYS: Final = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "isolation.level",
        "auto.offset.reset",
        "enable.auto.offset.store",
        "error_cb",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded record of the bridge's event topics, and where it was read."""

    topic: str
    partition: int
    offset: int
    key: str | None
    """The record key: the event's ticketId in decimal."""
    headers: dict[str, str]
    """`event-type`, `event-id`, `source`, `schema-fingerprint` (and any the bridge adds),
    as text; a repeated name keeps its last value."""
    fields: dict[str, Any]
    """What `Decoder.decode` returns: `eventId`, `eventType`, `ticketId`, `occurredAt` (an
    aware UTC datetime), the attributes of that eventType, `extra` (JSON text), ..."""


class KafkaReadError(Exception):
    """The Kafka client failed for good (a fatal error, refused credentials or ACLs).

    `kafka_error` is confluent-kafka's KafkaError.
    """

    def __init__(self, message: str, kafka_error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.kafka_error = kafka_error


def read_events(
    bootstrap_servers: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    group_id: str | None = None,
    config: Mapping[str, Any] | None = None,
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed",
    auto_offset_reset: Literal["earliest", "latest"] = "earliest",
    idle_timeout_seconds: float | None = None,
    join_timeout_seconds: float | None = None,
    skip_undecodable: bool = False,
    decoder: Decoder | None = None,
) -> Iterator[Event]:
    """The decoded events of the bridge's topics under `prefix` (its BRIDGE_KAFKA_TOPIC_PREFIX):
    every category topic and `{prefix}.unknown` (see `event_topics`), in each partition's order.

    * `group_id`: the consumer group, whose members share the partitions and whose committed
      offsets say where to resume. An event counts as consumed once the loop asks for the
      next one (at-least-once: after leaving the loop, or a crash, the group's next reader
      gets the last event handed out again). None (the default): no group; this reader
      takes every partition itself (no join to wait for), commits nothing, and so every
      call starts from `auto_offset_reset`.
    * `auto_offset_reset="earliest"` (the default): start at the oldest record Kafka keeps
      when the group has no committed offset (always, without a group); "latest": at the
      records written from now on.
    * `isolation_level="read_committed"` (the default): a record is seen once the transaction
      that wrote it commits, never if it aborts. A bridge in its default mode
      (`BRIDGE_DELIVERY_GUARANTEE=at_least_once`) writes without transactions, so this costs
      nothing; with `exactly_once` it is what makes each event id appear once.
    * `config`: more librdkafka settings (`security.protocol`, `sasl.*`, `ssl.ca.location`,
      `client.id`, ...); the keys set by the arguments above are refused there.
    * `idle_timeout_seconds`: stop once no record came for that long, counted from when this
      reader got its partitions (a group join can take seconds), so a script ends. None: read
      until the caller stops.
    * `join_timeout_seconds`: raise TimeoutError when this reader got no partitions within
      that time (Kafka unreachable, a wrong address); None: wait as long as it takes.
    * A record that does not decode raises DecodeError (or its subclasses UnknownSchemaError,
      RegistryUnavailableError) with its `topic`, `partition` and `offset` set and in its
      message; `skip_undecodable=True` logs a warning and goes on instead.
    * `decoder`: `Decoder(registry_url=...)` for a bridge in registry mode; by default the
      bundled schemas (single-object records).

    Raises KafkaReadError when the client fails for good (a fatal error, refused credentials
    or authorization). The consumer is closed when the iteration ends, however it ends.
    """
    decoder = decoder if decoder is not None else Decoder()
    owned = sorted(_OWN_KEYS & set(config or {}))
    if owned:
        raise ValueError(f"set {', '.join(owned)} with read_events' arguments, not in config")
    client_errors: list[KafkaError] = []
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "isolation.level": isolation_level,
        "auto.offset.reset": auto_offset_reset,
        # Offsets are stored by hand once the caller is done with an event (see above).
        "enable.auto.offset.store": False,
        "error_cb": client_errors.append,
    }
    if group_id is None:
        # librdkafka wants one even when no group is joined; nothing is committed under it.
        settings["group.id"] = f"apizee-session-events-{uuid.uuid4().hex[:12]}"
        settings["enable.auto.commit"] = False
    else:
        settings["group.id"] = group_id
    settings.update(config or {})

    consumer = Consumer(settings)
    reader = _Reader(
        consumer,
        topics=event_topics(prefix),
        grouped=group_id is not None,
        auto_offset_reset=auto_offset_reset,
        client_errors=client_errors,
        where=bootstrap_servers if group_id is None else f"{bootstrap_servers} (group {group_id})",
    )
    try:
        yield from reader.events(
            decoder,
            idle_timeout=idle_timeout_seconds,
            join_timeout=join_timeout_seconds,
            skip_undecodable=skip_undecodable,
            committing=group_id is not None and bool(settings.get("enable.auto.commit", True)),
        )
    finally:
        try:
            consumer.close()  # commits the stored offsets (with a group that commits)
        except (KafkaException, RuntimeError) as exc:
            _log.warning("closing the Kafka consumer failed: %s", exc)


class _Reader:
    """The poll loop, and who hands out partitions: the group, or this reader itself."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        topics: list[str],
        grouped: bool,
        auto_offset_reset: str,
        client_errors: list[KafkaError],
        where: str,
    ) -> None:
        self._consumer = consumer
        self._topics = topics
        self._grouped = grouped
        self._start_offset = OFFSET_BEGINNING if auto_offset_reset == "earliest" else OFFSET_END
        self._client_errors = client_errors
        self._where = where
        # When partitions were last (re)assigned: None until the first assignment.
        self._assigned_at: float | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._next_discovery = 0.0
        self._last_error: KafkaError | None = None

    def events(
        self,
        decoder: Decoder,
        *,
        idle_timeout: float | None,
        join_timeout: float | None,
        skip_undecodable: bool,
        committing: bool,
    ) -> Iterator[Event]:
        started = time.monotonic()
        if self._grouped:
            self._consumer.subscribe(self._topics, on_assign=self._on_assign)
        last_record = 0.0
        while True:
            if not self._grouped and time.monotonic() >= self._next_discovery:
                self._assign_new()
            batch = self._consumer.consume(num_messages=_BATCH, timeout=_POLL_SECONDS)
            self._check_client_errors()
            now = time.monotonic()
            if self._assigned_at is None:
                if join_timeout is not None and now - started >= join_timeout:
                    seen = f"; last error: {self._last_error.str()}" if self._last_error else ""
                    raise TimeoutError(
                        f"no partitions assigned within {join_timeout:g} s from {self._where}{seen}"
                    )
            elif (
                idle_timeout is not None
                and not batch
                and now - max(last_record, self._assigned_at) >= idle_timeout
            ):
                return
            for message in batch:
                failed = message.error()
                if failed is not None:
                    _raise_if_unrecoverable(failed, self._where)
                    # Retried by the client (e.g. a topic the bridge has not created yet).
                    _log.debug("Kafka: %s", failed.str())
                    continue
                event = _event(message, decoder, skip_undecodable)
                if event is not None:
                    yield event
                # After the caller's work on it: idle means no record came, not a slow caller.
                last_record = time.monotonic()
                if committing:
                    # The partition may have moved to another reader meanwhile: then it reads
                    # this record again (at-least-once), nothing to store here.
                    with contextlib.suppress(KafkaException):
                        self._consumer.store_offsets(message=message)

    def _on_assign(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()

    def _assign_new(self) -> None:
        """Without a group: take the partitions of the wanted topics that exist now."""
        try:
            # Every topic's metadata: asking for named ones may create them on some brokers.
            metadata = self._consumer.list_topics(timeout=_POLL_SECONDS * 2)
        except KafkaException as exc:
            self._last_error = exc.args[0] if exc.args else None
            self._next_discovery = time.monotonic() + _POLL_SECONDS
            return
        new = [
            TopicPartition(topic, partition, self._start_offset)
            for topic in self._topics
            if (found := metadata.topics.get(topic)) is not None and found.error is None
            for partition in sorted(found.partitions)
            if (topic, partition) not in self._assigned
        ]
        if new:
            self._consumer.incremental_assign(new)
            self._assigned.update((tp.topic, tp.partition) for tp in new)
        if new or self._assigned_at is None:
            self._assigned_at = time.monotonic()
        missing = {t for t in self._topics if all(a[0] != t for a in self._assigned)}
        # A topic the bridge has not created yet, or more partitions later: look again.
        self._next_discovery = time.monotonic() + (
            _DISCOVER_SECONDS if missing else _REDISCOVER_SECONDS
        )

    def _check_client_errors(self) -> None:
        for error in self._client_errors:
            _raise_if_unrecoverable(error, self._where)
            _log.debug("Kafka client: %s", error.str())
            self._last_error = error
        self._client_errors.clear()


def _raise_if_unrecoverable(error: KafkaError, where: str) -> None:
    if error.fatal() or error.code() in _UNRECOVERABLE:
        raise KafkaReadError(
            f"Kafka client failed ({where}): {error.name()}: {error.str()}", error
        ) from KafkaException(error)


def _event(message: Message, decoder: Decoder, skip_undecodable: bool) -> Event | None:
    topic, partition, offset = message.topic() or "", message.partition(), message.offset()
    # Set on every record without an error.
    assert partition is not None
    assert offset is not None
    value = message.value()
    try:
        if value is None:
            raise DecodeError("no value (a tombstone): the bridge never writes one")
        fields = decoder.decode(value)
    except DecodeError as exc:
        exc.topic, exc.partition, exc.offset = topic, partition, offset
        if not skip_undecodable:
            raise
        _log.warning("skipped a record that does not decode: %s", exc)
        return None
    key = message.key()
    return Event(
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key.decode("utf-8", errors="replace"),
        headers=_headers(message),
        fields=fields,
    )


def _headers(message: Message) -> dict[str, str]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {
        name: raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw or ""
        for name, raw in pairs
    }
