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
    from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
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

    * `group_id`: the consumer group. Its committed offsets say where to resume; an event
      counts as consumed once the loop asks for the next one (at-least-once: leaving the
      loop, or a crash, hands the last event out again to the group's next reader). None (the
      default): a group of this call alone that commits nothing, so every call reads from
      `auto_offset_reset`.
    * `auto_offset_reset="earliest"` (the default): a group without committed offsets starts
      at the oldest record kept; "latest": at the records written from now on.
    * `isolation_level="read_committed"` (the default): a record is seen once the transaction
      that wrote it commits, never if it aborts. A bridge in its default mode
      (`BRIDGE_DELIVERY_GUARANTEE=at_least_once`) writes without transactions, so this costs
      nothing; with `exactly_once` it is what makes each event id appear once.
    * `config`: more librdkafka settings (`security.protocol`, `sasl.*`, `ssl.ca.location`,
      `client.id`, ...); the keys set by the arguments above are refused there.
    * `idle_timeout_seconds`: stop once no record came for that long, counted from when the
      group assigned this reader its partitions (the join can take seconds), so a script ends.
      None: read until the caller stops.
    * `join_timeout_seconds`: raise TimeoutError when no assignment came within that time
      (Kafka unreachable, wrong address); None: wait as long as it takes.
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
        settings["group.id"] = f"apizee-session-events-{uuid.uuid4().hex[:12]}"
        settings["enable.auto.commit"] = False
    else:
        settings["group.id"] = group_id
    settings.update(config or {})
    committing = bool(settings.get("enable.auto.commit", True))

    consumer = Consumer(settings)
    try:
        yield from _read(
            consumer,
            topics=event_topics(prefix),
            decoder=decoder,
            client_errors=client_errors,
            idle_timeout=idle_timeout_seconds,
            join_timeout=join_timeout_seconds,
            skip_undecodable=skip_undecodable,
            committing=committing,
            where=f"{bootstrap_servers} (group {settings['group.id']})",
        )
    finally:
        try:
            consumer.close()  # commits the stored offsets (with a group that commits)
        except (KafkaException, RuntimeError) as exc:
            _log.warning("closing the Kafka consumer failed: %s", exc)


def _read(
    consumer: Consumer,
    *,
    topics: list[str],
    decoder: Decoder,
    client_errors: list[KafkaError],
    idle_timeout: float | None,
    join_timeout: float | None,
    skip_undecodable: bool,
    committing: bool,
    where: str,
) -> Iterator[Event]:
    started = time.monotonic()
    # When the group last (re)assigned partitions: None until the first assignment.
    assigned_at: list[float | None] = [None]

    def on_assign(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        assigned_at[0] = time.monotonic()

    consumer.subscribe(topics, on_assign=on_assign)
    last_record = 0.0
    last_error: KafkaError | None = None
    while True:
        batch = consumer.consume(num_messages=_BATCH, timeout=_POLL_SECONDS)
        for error in client_errors:
            _raise_if_unrecoverable(error, where)
            _log.debug("Kafka client: %s", error.str())
            last_error = error
        client_errors.clear()
        now = time.monotonic()
        if assigned_at[0] is None:
            if join_timeout is not None and now - started >= join_timeout:
                seen = f"; last client error: {last_error.str()}" if last_error else ""
                raise TimeoutError(
                    f"no partitions assigned within {join_timeout:g} s from {where}{seen}"
                )
        elif (
            idle_timeout is not None
            and not batch
            and now - max(last_record, assigned_at[0]) >= idle_timeout
        ):
            return
        for message in batch:
            failed = message.error()
            if failed is not None:
                _raise_if_unrecoverable(failed, where)
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
                    consumer.store_offsets(message=message)


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
