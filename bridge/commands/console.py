"""The console consumer: each record of the bridge's topics, decoded, as it lands.

What `apizee-bridge dev` (`make run`) prints with, and what `apizee-bridge tail` runs with its
filters: one line per record (or one JSON object), events decoded with the codec, dead letters
with the headers of their contract (bridge/dlq.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from apizee_session_events import DecodeError, Decoder

from bridge.codec import Codec, event_from_fields
from bridge.config import KafkaSettings, SchemaSettings
from bridge.dlq import DeadLetter, ticket_in_body
from bridge.errors import BridgeError, CodecError
from bridge.models import CanonicalEvent, Source
from bridge.publisher import DLQ_SUFFIX, TopicNames, connection_kwargs

log = structlog.get_logger(__name__)

_POLL_MS: Final = 200
_DISCOVER_SECONDS: Final = 0.25  # until every wanted topic is assigned
_REDISCOVER_SECONDS: Final = 10.0  # afterwards, to notice added partitions
_RECONNECT_SECONDS: Final = 1.0
_RECONNECT_MAX_SECONDS: Final = 10.0
_SUMMARY_CHARS: Final = 160
_DLQ_BODY_BYTES: Final = 80
# Refusals that retrying cannot cure: the principal lacks a right.
_DENIED: Final = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


# Bytes of an event topic's record to the canonical event (raises BridgeError or ValueError).
EventDecoder = Callable[[bytes], CanonicalEvent]


def _say(text: str) -> None:
    print(text, flush=True)


def event_decoder(schema: SchemaSettings) -> EventDecoder:
    """Records in either framing: single-object against the bundled and released schemas,
    Confluent-framed against the registry (BRIDGE_SCHEMA_REGISTRY_URL), each id asked once."""
    password = schema.registry_password
    decoder = Decoder(
        schema.registry_url,
        username=schema.registry_username,
        password=password.get_secret_value() if password is not None else None,
        ca_file=schema.registry_ca_file,
        timeout_seconds=schema.registry_timeout_seconds,
    )

    def decode(value: bytes) -> CanonicalEvent:
        try:
            fields = decoder.decode(value)
        except DecodeError as exc:
            raise CodecError(str(exc)) from None
        return event_from_fields(fields)

    return decode


class ReadDeniedError(BridgeError):
    """The principal may not read a topic it was asked to print."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """One record and what it is: an event, a dead letter, or neither (undecodable)."""

    record: Any
    headers: dict[str, str]
    event: CanonicalEvent | None = None
    letter: DeadLetter | None = None
    error: str | None = None

    @property
    def ticket_id(self) -> int | None:
        if self.event is not None:
            return self.event.ticket_id
        if self.letter is not None:
            return self.letter.ticket_id
        return None

    @property
    def event_type(self) -> str | None:
        return self.event.event_type if self.event is not None else None

    @property
    def source(self) -> str | None:
        if self.event is not None:
            # The header consumers route on; the body says the same.
            return self.headers.get("source", self.event.source.value)
        if self.letter is not None:
            return self.letter.source.value
        return self.headers.get("source")


class ConsoleConsumer:
    """Hands each record written to the bridge's topics to `emit`, as it lands.

    No consumer group: partitions are assigned by hand, so nothing is committed and no other
    reader is disturbed. Partitions that exist at start are read from their end (only what
    lands now), or from their beginning with `from_beginning`; partitions that appear later
    (the bridge creates its topics at start-up) are read from their beginning, so their first
    records are not missed. By default `emit` prints `describe(record)` through `out`;
    events are decoded by `decode` (default: `codec`'s single-object decoding).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        codec: Codec | None = None,
        decode: EventDecoder | None = None,
        out: Callable[[str], None] = _say,
        topics: Sequence[str] | None = None,
        from_beginning: bool = False,
        emit: Callable[[Any], None] | None = None,
        fail_on_denied: bool = False,
        client_id_suffix: str = "dev-console",
    ) -> None:
        self._settings = settings
        self._decode = decode or (codec or Codec()).decode
        self._out = out
        self._topics = TopicNames(settings.topic_prefix)
        self._wanted = list(topics) if topics is not None else self._topics.events()
        self._from_beginning = from_beginning
        self._emit = emit or (lambda record: self._out(self.describe(record)))
        self._fail_on_denied = fail_on_denied
        self._client_id = f"{settings.client_id}-{client_id_suffix}"
        self._assigned: set[TopicPartition] = set()
        # Next offset to print per assigned partition, kept across reconnects and re-assigns.
        self._positions: dict[TopicPartition, int] = {}
        self._first_discovery = True
        self.all_assigned = asyncio.Event()
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; reconnects (with backoff) while Kafka is unreachable.

        With `fail_on_denied`, a refused read raises ReadDeniedError instead of retrying.
        """
        backoff = _RECONNECT_SECONDS
        while not stop.is_set():
            kwargs = connection_kwargs(self._settings)
            kwargs["client_id"] = self._client_id
            consumer = AIOKafkaConsumer(
                **kwargs, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
            )
            admin = AIOKafkaAdminClient(**kwargs)
            try:
                await consumer.start()
                await admin.start()
                backoff = _RECONNECT_SECONDS
                await self._consume(consumer, admin, stop)
            except _DENIED as exc:
                if self._fail_on_denied:
                    raise ReadDeniedError(str(exc)) from None
                self._disconnected(exc, backoff)
                await self._pause(stop, backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_SECONDS)
            except (KafkaError, OSError) as exc:
                self._disconnected(exc, backoff)
                await self._pause(stop, backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_SECONDS)
            finally:
                await admin.close()
                await consumer.stop()

    @staticmethod
    def _disconnected(exc: BaseException, backoff: float) -> None:
        log.warning("console_consumer_disconnected", error=type(exc).__name__, retry_in=backoff)

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _consume(
        self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, stop: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        if self._assigned:  # a reconnect: carry on from the last printed offsets
            await self._assign(consumer, set())
        next_discovery = loop.time()
        while not stop.is_set():
            if loop.time() >= next_discovery:
                await self._discover(consumer, admin)
                self.connected.set()
                done = self.all_assigned.is_set()
                next_discovery = loop.time() + (_REDISCOVER_SECONDS if done else _DISCOVER_SECONDS)
            if not self._assigned:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _POLL_MS / 1000)
                continue
            batches = await consumer.getmany(timeout_ms=_POLL_MS)
            for tp, records in sorted(batches.items()):
                for record in records:
                    if stop.is_set():
                        return
                    self._emit(record)
                    self._positions[tp] = record.offset + 1

    async def _discover(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> None:
        """Assign the partitions of the wanted topics that are not assigned yet."""
        # Metadata of all topics, then filtered: naming absent topics in a Metadata request
        # could auto-create them on clusters that allow it, with the wrong partition count.
        described = await admin.describe_topics()
        present = {
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            if topic["topic"] in self._wanted and topic["error_code"] == 0
            for partition in topic["partitions"]
        }
        new = present - self._assigned
        if new:
            await self._assign(consumer, new)
        if {tp.topic for tp in self._assigned} >= set(self._wanted):
            self.all_assigned.set()
        self._first_discovery = False

    async def _assign(self, consumer: AIOKafkaConsumer, new: set[TopicPartition]) -> None:
        # assign() replaces the assignment and forgets every position: restore them.
        self._assigned |= new
        consumer.assign(sorted(self._assigned))
        for tp, offset in self._positions.items():
            consumer.seek(tp, offset)
        unknown = sorted(self._assigned - self._positions.keys())
        if unknown:
            if self._first_discovery and not self._from_beginning:
                await consumer.seek_to_end(*unknown)
            else:
                await consumer.seek_to_beginning(*unknown)
            for tp in unknown:
                self._positions[tp] = await consumer.position(tp)

    # -- what a record is ----------------------------------------------------------------

    def decode(self, record: Any) -> Decoded:
        headers = {name: raw.decode(errors="replace") for name, raw in record.headers or ()}
        value: bytes = record.value or b""
        if record.topic == self._topics.dlq:
            letter = DeadLetter.from_headers(record.headers or (), timestamp_ms=record.timestamp)
            if letter.ticket_id is None and letter.source is Source.WEBHOOK:
                # Parked before the contract named the ticket: the body may.
                letter = _with_ticket(letter, ticket_in_body(value))
            return Decoded(record, headers, letter=letter)
        try:
            event = self._decode(value)
        except (BridgeError, ValueError, KeyError) as exc:
            return Decoded(record, headers, error=str(exc))
        return Decoded(record, headers, event=event)

    def describe(self, record: Any) -> str:
        """One line for one record: where it landed, what it is, a short summary."""
        return self.line(self.decode(record))

    def line(self, decoded: Decoded) -> str:
        record = decoded.record
        key = record.key.decode(errors="replace") if record.key is not None else "-"
        where = f"{record.topic} p{record.partition}@{record.offset} key={key}"
        value: bytes = record.value or b""
        letter = decoded.letter
        if letter is not None:
            body = value[:_DLQ_BODY_BYTES]
            more = f"... ({len(value)} bytes)" if len(value) > _DLQ_BODY_BYTES else ""
            ticket = f" ticket={letter.ticket_id}" if letter.ticket_id is not None else ""
            return (
                f"{where} {DLQ_SUFFIX.upper()} kind={letter.kind}"
                f" source={letter.source.value}{ticket}"
                f" reason={_clip(letter.reason or '?')!r} body={body!r}{more}"
            )
        event = decoded.event
        if event is None:
            return f"{where} UNDECODABLE ({decoded.error}) {value[:_DLQ_BODY_BYTES]!r}"
        facts = {
            "code": event.event_code,
            "ticket": event.ticket_id,
            "conversation": event.conversation_id,
            **{name: v for name, v in event.attributes.items() if v is not None},
        }
        if event.extra:
            facts["extra"] = event.extra
        summary = " ".join(f"{name}={_compact(v)}" for name, v in facts.items() if v is not None)
        source = decoded.source
        filled = " (gap filled)" if source == Source.POLLER.value else ""
        replayed = decoded.headers.get("replayed-from")
        again = f" (replayed from {replayed})" if replayed else ""
        return (
            f"{where} {event.event_type} id={event.event_id} source={source}{filled}{again}"
            f" at={_iso(event.occurred_at_ms)} {_clip(summary)}"
        )

    def json(self, decoded: Decoded) -> str:
        """One JSON object for one record (a line of `tail --json`)."""
        record = decoded.record
        out: dict[str, Any] = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": _iso(record.timestamp, precise=True),
            "key": record.key.decode(errors="replace") if record.key is not None else None,
            "headers": decoded.headers,
        }
        event, letter = decoded.event, decoded.letter
        if event is not None:
            out["event"] = {
                "eventId": event.event_id,
                "eventType": event.event_type,
                "eventCode": event.event_code,
                "ticketId": event.ticket_id,
                "conversationId": event.conversation_id,
                "occurredAt": _iso(event.occurred_at_ms, precise=True),
                "source": event.source.value,
                "receivedAt": _iso(event.received_at_ms, precise=True),
                "attributes": event.attributes,
                "extra": event.extra,
            }
        elif letter is not None:
            value: bytes = record.value or b""
            out["deadLetter"] = {
                "kind": letter.kind,
                "reason": letter.reason,
                "source": letter.source.value,
                "receivedAt": _iso(letter.received_at_ms, precise=True),
                "requestId": letter.request_id,
                "ticketId": letter.ticket_id,
            }
            try:
                out["body"] = value.decode("utf-8")
            except UnicodeDecodeError:
                out["bodyBase64"] = base64.b64encode(value).decode()
        else:
            out["error"] = decoded.error
        return _dumps(out)


def _with_ticket(letter: DeadLetter, ticket_id: int | None) -> DeadLetter:
    if ticket_id is None:
        return letter
    return DeadLetter(
        letter.kind,
        letter.reason,
        letter.source,
        letter.received_at_ms,
        letter.request_id,
        ticket_id,
    )


def _iso(epoch_ms: int, *, precise: bool = False) -> str:
    """UTC ISO 8601, to the second (lines) or to the millisecond (JSON)."""
    try:
        when = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return str(epoch_ms)
    if precise:
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # integers beyond 64 bits (kept as they came in `extra`)
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _compact(value: Any) -> str:
    if isinstance(value, str | int | float):
        return repr(value) if isinstance(value, str) else str(value)
    return _dumps(value)


def _clip(text: str) -> str:
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 3] + "..."
