"""`apizee-bridge replay`: what was parked on `{prefix}.dlq` or `{prefix}.unknown` goes through
today's validation and catalog again; what now passes is published to its topic, once.

Three reads, so that memory stays bounded by the selection's event ids, not by the topics:
1. the selected parked records are re-validated, to learn which event ids would be published
   where;
2. the target topics are read once, keeping the `event-id` headers of those ids (what is
   already there, however it got there: webhook, poller, an earlier replay);
3. the parked records are read again and published in batches, each batch checked against
   what landed meanwhile, its ids recorded in the ticket state (when the bridge keeps one),
   then its progress committed to the replay's own consumer group.

A crash loses nothing and publishes nothing twice: a rerun starts at the last committed offset
and finds what the crashed run published in step 2. Works beside a running bridge: no topic is
locked, no group of the bridge is joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
import pydantic_core
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from bridge.app import schema_registration
from bridge.catalog import EVENTS
from bridge.codec import Codec, json_text
from bridge.commands.cluster import (
    AclOperation,
    ClusterClient,
    ClusterError,
    principal,
    quiet_client_logs,
)
from bridge.commands.console import EventDecoder, event_decoder
from bridge.config import BridgeSettings, env_name
from bridge.dlq import DeadLetter, ticket_in_body
from bridge.errors import (
    BridgeError,
    CodecError,
    InvalidEventError,
    PublishError,
    RecordTooLargeError,
    SchemaRejectedError,
)
from bridge.models import (
    CanonicalEvent,
    Source,
    from_rest,
    from_webhook,
    parse_rest_item,
    parse_webhook,
    split_extra,
)
from bridge.publisher import Publisher, TopicNames, connection_kwargs, idempotence_refused
from bridge.registry import SchemaRegistration
from bridge.state import StateStore, StateSync

log = structlog.get_logger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

# The header a replayed record carries: `{topic}:{partition}:{offset}` of the parked record.
REPLAYED_FROM: Final = "replayed-from"
# Topic names hold [a-zA-Z0-9._-] only, so ':' separates unambiguously.
_SEPARATOR: Final = ":"
_BATCH: Final = 500
_FETCH_MS: Final = 500
_METADATA_VERSION: Final = 1
_REASON_CHARS: Final = 120
# A read without progress for this long means the broker stopped answering.
_STALL_SECONDS: Final = 20.0
_INDEX: Final = re.compile(r"\.\d+(?=\.|:|$)")

SourceName = Literal["dlq", "unknown"]


class ReplayError(BridgeError):
    """The replay cannot run or had to stop; the message says why and what to do."""


class ReplayUsageError(ReplayError):
    """The arguments do not fit (exit 2): e.g. the group holds another selection's progress."""


# -- what is selected ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which parked records a replay handles. Its digest names the progress committed to the
    group, so that a rerun with other filters cannot skip records the first one left out."""

    source: SourceName
    since_ms: int | None = None
    until_ms: int | None = None
    kinds: frozenset[str] = frozenset()
    tickets: frozenset[int] = frozenset()

    def describe(self) -> str:
        parts = [f"--from {self.source}"]
        if self.since_ms is not None:
            parts.append(f"--since {_iso(self.since_ms)}")
        if self.until_ms is not None:
            parts.append(f"--until {_iso(self.until_ms)}")
        parts += [f"--kind {k}" for k in sorted(self.kinds)]
        parts += [f"--ticket {t}" for t in sorted(self.tickets)]
        return " ".join(parts)

    @property
    def digest(self) -> str:
        canonical = orjson.dumps(
            [self.source, self.since_ms, self.until_ms, sorted(self.kinds), sorted(self.tickets)]
        )
        return hashlib.sha256(canonical).hexdigest()[:16]

    def takes(self, timestamp_ms: int, kind: str | None, ticket: int | None) -> bool:
        if self.since_ms is not None and timestamp_ms < self.since_ms:
            return False
        if self.until_ms is not None and timestamp_ms > self.until_ms:
            return False
        if self.kinds and kind not in self.kinds:
            return False
        return not self.tickets or ticket in self.tickets


@dataclass(frozen=True, slots=True)
class Options:
    selection: Selection
    group: str
    dry_run: bool = False
    limit: int | None = None
    restart: bool = False
    ready_timeout: float = 30.0


def default_group(settings: BridgeSettings, source: SourceName) -> str:
    return f"{settings.poller.group_id}.replay-{source}"


def parse_time(text: str) -> int:
    """ISO 8601 (`2026-11-25T16:00:00Z`, an offset, or a date) to epoch ms; naive is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-25T16:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# -- one parked record, judged again ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parked:
    """A parked record as the selection sees it: its kind and its ticket (when known)."""

    kind: str | None
    ticket: int | None


@dataclass(slots=True)
class Verdict:
    """What today's validation and catalog make of one parked record."""

    events: list[CanonicalEvent] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _reason(exc: InvalidEventError) -> str:
    if exc.kind == "invalid_json":
        return "invalid_json"
    # The first problem names the reason; positions in lists vary from record to record:
    # one reason for all of them.
    first = str(exc.problems[0]) if exc.problems else exc.reason
    return _clip(f"{exc.kind}: {_INDEX.sub('.*', first)}")


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


class Judge:
    """Re-runs the ingress's and the poller's validation on parked records."""

    def __init__(
        self, source: SourceName, codec: Codec, decode: EventDecoder | None = None
    ) -> None:
        self.source = source
        # `codec` checks that what passes can be encoded; `decode` reads parked unknown
        # events (either framing: a bridge in registry mode parks them Confluent-framed).
        self.codec = codec
        self.decode = decode or codec.decode

    def parked(self, record: Any) -> Parked:
        """Kind and ticket of a parked record, for the selection (no validation)."""
        if self.source == "dlq":
            letter = DeadLetter.from_headers(record.headers or (), timestamp_ms=record.timestamp)
            ticket = letter.ticket_id
            if ticket is None and letter.source is Source.WEBHOOK:
                ticket = ticket_in_body(record.value or b"")
            return Parked(letter.kind, ticket)
        headers = dict(record.headers or ())
        kind = headers.get("event-type", b"").decode("utf-8", "replace") or None
        ticket = None
        if record.key is not None and record.key.isdigit():
            ticket = int(record.key)
        return Parked(kind, ticket)

    def judge(self, record: Any) -> Verdict:
        verdict = self._dead_letter(record) if self.source == "dlq" else self._unknown(record)
        # An event the schemas cannot hold (a defect, parked as encode_error) still fails:
        # found here, it is counted, instead of stopping the run at publish time.
        encodable = []
        for event in verdict.events:
            try:
                self.codec.encode(event)
            except CodecError as exc:
                verdict.failures.append(_clip(f"encode_error: {exc}"))
            else:
                encodable.append(event)
        verdict.events = encodable
        return verdict

    def _dead_letter(self, record: Any) -> Verdict:
        verdict = Verdict()
        letter = DeadLetter.from_headers(record.headers or (), timestamp_ms=record.timestamp)
        body: bytes = record.value or b""
        if letter.source is Source.WEBHOOK:
            try:
                verdict.events.append(from_webhook(parse_webhook(body), letter.received_at_ms))
            except InvalidEventError as exc:
                verdict.failures.append(_reason(exc))
            return verdict
        if letter.ticket_id is None:
            verdict.failures.append("no ticket-id header: the polled ticket is unknown")
            return verdict
        # A REST list item, or a whole REST body (a list of them, or what was not one).
        try:
            parsed: Any = pydantic_core.from_json(body, allow_inf_nan=False)
        except ValueError:
            verdict.failures.append("invalid_json")
            return verdict
        for item in parsed if isinstance(parsed, list) else [parsed]:
            try:
                rest = parse_rest_item(item)
                verdict.events.append(
                    from_rest(rest, letter.ticket_id, letter.received_at_ms, Source.POLLER)
                )
            except InvalidEventError as exc:
                verdict.failures.append(_reason(exc))
        return verdict

    def _unknown(self, record: Any) -> Verdict:
        verdict = Verdict()
        try:
            parked = self.decode(record.value or b"")
        except (BridgeError, ValueError, KeyError) as exc:
            verdict.failures.append(_clip(f"undecodable: {exc}"))
            return verdict
        if parked.event_type not in EVENTS:
            verdict.failures.append(f"unknown eventType {parked.event_type}")
            return verdict
        # The payload as it came (the generic record keeps every attribute in `extra`),
        # through the path that brought it.
        attributes, around = split_extra(parked.extra)
        seconds = parked.occurred_at_ms / 1000
        when: int | float = int(seconds) if seconds.is_integer() else seconds
        try:
            if parked.source is Source.WEBHOOK:
                props: dict[str, Any] = {
                    "eventType": parked.event_type,
                    "conversationId": parked.conversation_id,
                    "ticketId": parked.ticket_id,
                    **attributes,
                }
                if parked.event_code is not None:
                    props["eventCode"] = parked.event_code
                body = {
                    **around,
                    "event": "create",
                    "time": when,
                    "object": "conversationevent",
                    "objectId": parked.event_id,
                    "props": props,
                }
                envelope = parse_webhook(json_text(body).encode())
                verdict.events.append(from_webhook(envelope, parked.received_at_ms))
            else:
                item = {
                    **around,
                    "id": parked.event_id,
                    "eventType": parked.event_type,
                    "timestamp": when,
                    "conversationId": parked.conversation_id,
                    "data": attributes,
                }
                rest = parse_rest_item(item)
                verdict.events.append(
                    from_rest(rest, parked.ticket_id, parked.received_at_ms, Source.POLLER)
                )
        except InvalidEventError as exc:
            verdict.failures.append(_reason(exc))
        return verdict


# -- the summary -----------------------------------------------------------------------------


@dataclass
class Summary:
    """What one run did, per parked record (an item of a REST body counts on its own when a
    parked body held several)."""

    topic: str
    group: str
    selection: Selection
    dry_run: bool
    read: int = 0
    not_selected: int = 0
    selected: int = 0
    published: int = 0
    present: int = 0
    failing: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    limited: bool = False
    stopped: str | None = None

    @property
    def handled(self) -> int:
        return self.published + self.present

    def table(self) -> list[str]:
        verb = "would publish" if self.dry_run else "published"
        rows: list[tuple[str, int, str]] = [
            ("read", self.read, ""),
            ("not selected (filters)", self.not_selected, ""),
            ("selected", self.selected, "(limit reached)" if self.limited else ""),
            (
                f"  {verb}",
                self.published,
                ", ".join(f"{t} {n}" for t, n in sorted(self.by_topic.items())),
            ),
            ("  skipped, already present", self.present, ""),
            ("  still failing", self.failing, "(they stay where they are)" if self.failing else ""),
        ]
        rows += [(f"    {reason}", n, "") for reason, n in self.reasons.most_common()]
        width = max(len(label) for label, _, _ in rows) + 2
        lines = [
            f"replay {self.selection.describe()}{' --dry-run' if self.dry_run else ''}: from"
            f" {self.topic}, group {self.group}",
            f"  {'':<{width}}{'records':>8}",
        ]
        lines += [
            f"  {label:<{width}}{count:>8}{'   ' + note if note else ''}"
            for label, count, note in rows
        ]
        return lines

    def verdict(self) -> str:
        if self.stopped:
            return f"replay: stopped: {self.stopped}"
        if self.failing:
            return (
                f"replay: {self.failing} of {self.selected} selected records still fail;"
                f" they stay on {self.topic}"
            )
        if not self.selected:
            return (
                "replay: nothing selected (nothing parked since the committed progress, or"
                " nothing matches); --restart goes over the parked records again"
            )
        if self.dry_run:
            return f"replay: dry run: all {self.selected} selected records would be handled"
        return f"replay: all {self.selected} selected records handled"

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failing or self.stopped else EXIT_OK


# -- the run ---------------------------------------------------------------------------------


def _source_topic(topics: TopicNames, source: SourceName) -> str:
    return topics.dlq if source == "dlq" else topics.unknown


def _commit_metadata(selection: Selection) -> str:
    return orjson.dumps(
        {"v": _METADATA_VERSION, "selection": selection.digest, "args": selection.describe()[:500]}
    ).decode()


def _committed_selection(metadata: str | None) -> str | None:
    """The selection digest a committed offset was written with (None: not by a replay)."""
    try:
        data = orjson.loads(metadata or "")
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("selection"), str):
        return str(data["selection"])
    return None


def _committed_args(metadata: str | None) -> str:
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(metadata or "")
        if isinstance(data, dict) and isinstance(data.get("args"), str):
            return str(data["args"])
    return "not written by a replay"


class Replay:
    """One run of `apizee-bridge replay`."""

    def __init__(
        self,
        settings: BridgeSettings,
        options: Options,
        *,
        codec: Codec | None = None,
        decode: EventDecoder | None = None,
        err: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.codec = codec or Codec()
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.source_topic = _source_topic(self.topics, options.selection.source)
        self.judge = Judge(
            options.selection.source,
            self.codec,
            decode if decode is not None else event_decoder(settings.schema),
        )
        self._err = err or (lambda line: print(line, file=sys.stderr, flush=True))
        self.summary = Summary(self.source_topic, options.group, options.selection, options.dry_run)
        self._conn = connection_kwargs(settings.kafka)

    async def run(self) -> Summary:
        with quiet_client_logs():
            plan = await self._plan()
        if plan is None:
            return self.summary
        starts, stops, targets, candidates, state_exists = plan
        if not any(stops[tp] > starts[tp] for tp in starts):
            return self.summary
        index = Presence(self._conn, candidates)
        await index.start(targets)
        try:
            if self.options.dry_run:
                await self._walk(starts, stops, index, publisher=None, sync=None)
                return self.summary
            await self._publish_all(starts, stops, index, state_exists)
        finally:
            await index.stop()
        return self.summary

    # -- planning: rights, progress, what is selected and where it goes --------------------

    async def _plan(
        self,
    ) -> (
        tuple[
            dict[TopicPartition, int],
            dict[TopicPartition, int],
            dict[str, int],
            dict[str, set[int]],
            bool,
        ]
        | None
    ):
        kafka = self.settings.kafka
        who = principal(kafka)
        try:
            async with asyncio.timeout(self.options.ready_timeout):
                async with ClusterClient(kafka) as cluster:
                    info = await cluster.describe([self.source_topic, self.topics.state])
                    source = info.topics[self.source_topic]
                    if source.denied or source.may(AclOperation.READ) is False:
                        raise ReplayError(
                            f"{who} may not read {self.source_topic}. Fix: kafka-acls.sh --add"
                            f" --allow-principal {who} --operation Read --topic"
                            f" {self.source_topic}"
                        )
                    if not source.exists:
                        self._err(f"replay: {self.source_topic} does not exist: nothing parked")
                        return None
                    group_ops = await cluster.group_operations(self.options.group)
                    if group_ops is not None and AclOperation.READ not in group_ops:
                        raise ReplayError(
                            f"{who} may not use the consumer group {self.options.group}, where"
                            f" the replay commits its progress. Fix: kafka-acls.sh --add"
                            f" --allow-principal {who} --operation Read --group"
                            f" {self.options.group} (or name another with --group)"
                        )
                    state = info.topics[self.topics.state]
                    state_exists = state.exists and not self.options.dry_run
                    partitions = source.partitions
        except ClusterError as exc:
            raise ReplayError(f"cannot reach Kafka: {exc.what}. Fix: {exc.fix}") from None
        except TimeoutError:
            raise ReplayError(
                f"Kafka did not answer within {self.options.ready_timeout:g}s; check"
                f" {env_name('kafka', 'bootstrap_servers')}"
            ) from None
        tps = [TopicPartition(self.source_topic, p) for p in range(partitions)]
        consumer = self._consumer()
        await consumer.start()
        try:
            starts, ends = await self._positions(consumer, tps)
            stops, targets, candidates = await self._select(consumer, starts, ends)
        finally:
            await _stop(consumer)
        target_partitions: dict[str, int] = {}
        if targets:
            target_partitions = await self._check_targets(
                targets, state_exists, write=not self.options.dry_run
            )
        return starts, stops, target_partitions, candidates, state_exists

    def _consumer(self) -> AIOKafkaConsumer:
        """A reader outside any group (its partitions assigned and reassigned by hand)."""
        kwargs = dict(self._conn)
        kwargs["client_id"] = f"{self.settings.kafka.client_id}-replay"
        return AIOKafkaConsumer(
            **kwargs,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Only records of committed transactions (the bridge writes none; others might).
            isolation_level="read_committed",
        )

    async def _positions(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Where this run starts (committed progress, --since, or the beginning) and the end
        offsets it stops at (what was parked when it started)."""
        selection = self.options.selection
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        starts = dict(beginnings)
        committed: dict[TopicPartition, OffsetAndMetadata] = {}
        if not self.options.restart:
            committed = await self._committed(tps)
            foreign = {
                _committed_args(m.metadata)
                for m in committed.values()
                if _committed_selection(m.metadata) != selection.digest
            }
            if foreign and await self._metadata_dropped(committed):
                offsets = ", ".join(
                    f"{tp.partition}:{m.offset}"
                    for tp, m in sorted(committed.items(), key=lambda c: c[0].partition)
                )
                raise ReplayUsageError(
                    f"the broker does not keep the metadata of committed offsets (tansu does"
                    f" not; Apache Kafka does): the group {self.options.group} holds progress"
                    f" on {self.source_topic} (partition:offset {offsets}) but not the"
                    " selection it belongs to, so this replay cannot tell whether it is"
                    f" `{selection.describe()}`'s. If it is (a rerun of the same command):"
                    " run it with --restart; every selected record is judged again and what"
                    " is already on its topic is skipped, nothing is published twice. If"
                    " not, name another group with --group. On this broker every rerun"
                    " needs --restart"
                )
            if foreign:
                raise ReplayUsageError(
                    f"the group {self.options.group} holds the progress of another selection"
                    f" ({'; '.join(sorted(foreign))}), not of `{selection.describe()}`. Run"
                    " that one again, or start this one over with --restart (what is already"
                    " on its topic is skipped), or name another group with --group"
                )
        for tp, done in committed.items():
            starts[tp] = max(beginnings[tp], done.offset)
        fresh = [tp for tp in tps if tp not in committed]
        if fresh and selection.since_ms is not None:
            found = await consumer.offsets_for_times(dict.fromkeys(fresh, selection.since_ms))
            for tp in fresh:
                at = found.get(tp)
                starts[tp] = ends[tp] if at is None else max(beginnings[tp], at.offset)
        return starts, ends

    async def _metadata_dropped(
        self, committed: Mapping[TopicPartition, OffsetAndMetadata]
    ) -> bool:
        """Whether the broker drops the metadata of committed offsets (tansu does): when none
        of the group's progress has any, one of its offsets is committed again with a marker,
        read back, then put back as it was. False when that cannot be told (metadata present,
        or the group has members, which refuse a commit from outside)."""
        if any(m.metadata for m in committed.values()):
            return False
        tp, was = min(committed.items(), key=lambda c: c[0].partition)
        marker = f"replay-metadata-probe-{secrets.token_hex(4)}"
        probe = AIOKafkaConsumer(
            **self._conn, group_id=self.options.group, enable_auto_commit=False
        )
        probe.assign([tp])
        probe.pause(tp)  # commits only, never fetches
        try:
            await probe.start()
            await probe.commit({tp: OffsetAndMetadata(was.offset, marker)})
            back = (await self._committed([tp])).get(tp)
            await probe.commit({tp: OffsetAndMetadata(was.offset, was.metadata or "")})
        except KafkaError:
            return False
        finally:
            await _stop(probe)
        return back is not None and back.offset == was.offset and back.metadata != marker

    async def _committed(
        self, tps: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        admin = AIOKafkaAdminClient(**self._conn)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(self.options.group, partitions=tps)
        finally:
            await admin.close()
        return {tp: m for tp, m in found.items() if tp in set(tps) and m.offset >= 0}

    async def _select(
        self,
        consumer: AIOKafkaConsumer,
        starts: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
    ) -> tuple[dict[TopicPartition, int], set[str], dict[str, set[int]]]:
        """Step 1: judge the selected records, to learn the event ids and their topics. Also
        fixes where each partition stops this run (--limit)."""
        stops = dict(ends)
        targets: set[str] = set()
        candidates: dict[str, set[int]] = {}
        taken = 0
        limit = self.options.limit
        for tp in sorted(starts, key=lambda t: t.partition):
            if limit is not None and taken >= limit:
                stops[tp] = starts[tp]
                continue
            async for record in _read(consumer, tp, starts[tp], ends[tp]):
                if not self._selected(record):
                    continue
                for event in self.judge.judge(record).events:
                    topic = self.topics.category(event.category)
                    targets.add(topic)
                    candidates.setdefault(topic, set()).add(event.event_id)
                taken += 1
                if limit is not None and taken >= limit:
                    stops[tp] = record.offset + 1
                    self.summary.limited = True
                    break
        return stops, targets, candidates

    def _selected(self, record: Any) -> bool:
        parked = self.judge.parked(record)
        return self.options.selection.takes(record.timestamp, parked.kind, parked.ticket)

    async def _check_targets(
        self, targets: set[str], state_exists: bool, *, write: bool
    ) -> dict[str, int]:
        """This principal may read (to know what is there) and write (unless a dry run) the
        target topics, and read and write the state topic when there is one."""
        kafka = self.settings.kafka
        who = principal(kafka)
        wanted = sorted(targets | ({self.topics.state} if state_exists else set()))
        with quiet_client_logs():
            async with ClusterClient(kafka) as cluster:
                info = await cluster.describe(wanted)
        missing = [
            t for t in sorted(targets) if not info.topics[t].exists and not info.topics[t].denied
        ]
        if missing and write and not kafka.create_topics:
            raise ReplayError(
                f"{', '.join(missing)} missing and {env_name('kafka', 'create_topics')} is false."
                " Fix: create them (the bridge's catalog knows their category now), then rerun"
            )
        lacking: list[str] = []
        for topic in wanted:
            topic_info = info.topics[topic]
            if not topic_info.exists and topic in missing:
                continue  # created at start by the publisher; its rights checked on publish
            needed = (AclOperation.READ, AclOperation.WRITE) if write else (AclOperation.READ,)
            lacking.extend(
                f"{operation.name} on {topic}"
                for operation in needed
                if topic_info.denied or topic_info.may(operation) is False
            )
        if lacking:
            operations = "--operation Read --operation Write" if write else "--operation Read"
            raise ReplayError(
                f"{who} lacks {', '.join(lacking)} (replay reads the target topics to skip"
                " what is already there, and writes what now passes). Fix: kafka-acls.sh"
                f" --add --allow-principal {who} {operations} --topic <each of them>"
            )
        return {t: info.topics[t].partitions for t in sorted(targets)}

    # -- the walk: step 3 ----------------------------------------------------------------------

    async def _publish_all(
        self,
        starts: dict[TopicPartition, int],
        stops: dict[TopicPartition, int],
        index: Presence,
        state_exists: bool,
    ) -> None:
        kafka = self.settings.kafka
        # Said at once: the publisher would retry its connection until the ready timeout.
        if (refused := await idempotence_refused(kafka)) is not None:
            raise ReplayError(refused)
        registry_mode = self.settings.schema.registry_url is not None
        publisher = Publisher(
            kafka,
            self.codec,
            max_body_bytes=self.settings.ingress.max_body_bytes,
            schemas_pending=registry_mode,
        )
        await publisher.start()
        stack = contextlib.AsyncExitStack()
        try:
            registration: SchemaRegistration | None = None
            try:
                async with asyncio.timeout(self.options.ready_timeout):
                    await publisher.wait_ready()
                    if registry_mode:
                        # As the bridge does: events framed with the registry's ids (a type
                        # the catalog learned since is registered here first).
                        registration = await stack.enter_async_context(
                            schema_registration(self.settings.schema, self.codec, publisher)
                        )
                        await registration.finished
            except TimeoutError:
                reason = publisher.not_ready_reason
                if reason is None and registration is not None:
                    reason = registration.not_ready_reason
                raise ReplayError(
                    f"not ready to publish within {self.options.ready_timeout:g}s: {reason}"
                ) from None
            except SchemaRejectedError as exc:
                raise ReplayError(str(exc)) from None
            sync: StateSync | None = None
            if state_exists:
                store = StateStore(self.settings.poller.max_ids_per_ticket)
                sync = StateSync(
                    store,
                    self.topics.state,
                    self.settings.poller,
                    publisher.publish_state,
                    self._conn,
                )
                # The whole state first: each record written holds a ticket's whole
                # knowledge (compaction keeps only the last one).
                await sync.restore_all(await publisher.partition_count(self.topics.state))
            await self._walk(starts, stops, index, publisher=publisher, sync=sync)
        finally:
            await stack.aclose()
            await publisher.stop()

    async def _walk(
        self,
        starts: dict[TopicPartition, int],
        stops: dict[TopicPartition, int],
        index: Presence,
        *,
        publisher: Publisher | None,
        sync: StateSync | None,
    ) -> None:
        consumer = self._consumer()
        progress = None if publisher is None else Progress(self._conn, self.options, starts)
        await consumer.start()
        try:
            if progress is not None:
                await progress.start()
            for tp in sorted(starts, key=lambda t: t.partition):
                if stops[tp] <= starts[tp]:
                    continue
                batch: list[Any] = []
                async for record in _read(consumer, tp, starts[tp], stops[tp]):
                    batch.append(record)
                    if len(batch) >= _BATCH:
                        await self._batch(progress, tp, batch, index, publisher, sync)
                        batch = []
                await self._batch(progress, tp, batch, index, publisher, sync, end=stops[tp])
        finally:
            await _stop(consumer)
            if progress is not None:
                await progress.stop()

    async def _batch(
        self,
        progress: Progress | None,
        tp: TopicPartition,
        records: list[Any],
        index: Presence,
        publisher: Publisher | None,
        sync: StateSync | None,
        *,
        end: int | None = None,
    ) -> None:
        summary = self.summary
        await index.refresh()
        # Per selected record: its verdict and its events, each with whether it is new.
        plans: list[tuple[Verdict, list[tuple[CanonicalEvent, str, bool]]]] = []
        to_publish: dict[tuple[str, int], tuple[CanonicalEvent, bytes]] = {}
        for record in records:
            summary.read += 1
            if not self._selected(record):
                summary.not_selected += 1
                continue
            summary.selected += 1
            verdict = self.judge.judge(record)
            origin = f"{record.topic}{_SEPARATOR}{record.partition}{_SEPARATOR}{record.offset}"
            events = []
            for event in verdict.events:
                topic = self.topics.category(event.category)
                key = (topic, event.event_id)
                new = not index.has(topic, event.event_id) and key not in to_publish
                if new:
                    to_publish[key] = (event, origin.encode())
                events.append((event, topic, new))
            plans.append((verdict, events))
        too_large = await self._publish(publisher, tp, records, to_publish)
        recorded: list[CanonicalEvent] = []
        for verdict, events in plans:
            failures = list(verdict.failures)
            failures += [
                too_large[(topic, event.event_id)]
                for event, topic, _ in events
                if (topic, event.event_id) in too_large
            ]
            landed = [(e, t, new) for e, t, new in events if (t, e.event_id) not in too_large]
            recorded += [event for event, _, _ in landed]
            if failures:
                summary.failing += 1
                summary.reasons.update(failures)
            elif any(new for _, _, new in landed):
                summary.published += 1
            else:
                summary.present += 1
            for event, topic, new in landed:
                if new:
                    index.add(topic, event.event_id)
                    summary.by_topic[topic] += 1
        if publisher is None or progress is None:
            return  # dry run: nothing written, nothing committed
        if sync is not None and recorded:
            for event in recorded:
                state = sync.store.get(event.ticket_id)
                # Known to the bridge's duplicate check and poller, without making the
                # ticket active again.
                state.add(event.event_id, self.settings.poller.max_ids_per_ticket)
                sync.store.mark_dirty(event.ticket_id)
            await sync.flush()
        if end is not None:
            await progress.commit(tp, end)
        elif records:
            await progress.commit(tp, records[-1].offset + 1)

    async def _publish(
        self,
        publisher: Publisher | None,
        tp: TopicPartition,
        records: list[Any],
        to_publish: Mapping[tuple[str, int], tuple[CanonicalEvent, bytes]],
    ) -> dict[tuple[str, int], str]:
        """Publish a batch's new events together; the reasons of those too large for their
        topic (they still fail). Any other failure stops the run before the batch commits."""
        if publisher is None or not to_publish:
            return {}
        keys = list(to_publish)
        results = await asyncio.gather(
            *(
                publisher.publish(event, extra_headers=[(REPLAYED_FROM, origin)])
                for event, origin in to_publish.values()
            ),
            return_exceptions=True,
        )
        too_large: dict[tuple[str, int], str] = {}
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, RecordTooLargeError):
                too_large[key] = f"record_too_large: {result.topic}"
            elif isinstance(result, PublishError | CodecError):
                raise ReplayError(
                    f"publishing failed ({type(result).__name__}: {result}); nothing of this"
                    f" batch is committed: a rerun continues at offset {records[0].offset} of"
                    f" {tp.topic}:{tp.partition} and skips what landed"
                ) from None
            elif isinstance(result, BaseException):
                raise result
        return too_large


class Progress:
    """Commits how far the replay got, per partition of the parked topic, to its own group.

    A consumer of that group assigned every partition before it starts, used for commits only
    (aiokafka's group coordinator wants a stable manual assignment); the metadata of each
    commit names the selection it belongs to.
    """

    def __init__(
        self, conn: Mapping[str, Any], options: Options, partitions: Iterable[TopicPartition]
    ) -> None:
        self._metadata = _commit_metadata(options.selection)
        self._consumer = AIOKafkaConsumer(**conn, group_id=options.group, enable_auto_commit=False)
        self._partitions = sorted(partitions)
        self._consumer.assign(self._partitions)
        # Never read through: paused, so that it fetches nothing.
        self._consumer.pause(*self._partitions)

    async def start(self) -> None:
        await self._consumer.start()

    async def commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            async with asyncio.timeout(_STALL_SECONDS):
                await self._consumer.commit({tp: OffsetAndMetadata(offset, self._metadata)})
        except TimeoutError:
            raise ReplayError(
                f"committing the progress ({tp.topic}:{tp.partition} up to {offset}) did not"
                f" succeed within {_STALL_SECONDS:g}s; a rerun goes over that batch again and"
                " skips what landed"
            ) from None

    async def stop(self) -> None:
        await _stop(self._consumer)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. aiokafka lets the cancellation of its own pending fetch escape from
    stop() when the broker is gone; only a cancellation of ours goes on."""
    task = asyncio.current_task()
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise


async def _read(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int
) -> AsyncIterator[Any]:
    """The records of one partition from `start` to `stop` (exclusive)."""
    if start >= stop:
        return
    consumer.assign([tp])
    consumer.seek(tp, start)
    stall = _Stall(f"reading {tp.topic}:{tp.partition}")
    while True:
        batches = await consumer.getmany(tp, timeout_ms=_FETCH_MS, max_records=_BATCH)
        for record in batches.get(tp, ()):
            if record.offset >= stop:
                return
            yield record
        position = await consumer.position(tp)
        if position >= stop:
            return
        stall.check(position)


class _Stall:
    """A read that makes no progress for a while: the broker stopped answering (aiokafka's
    consumer retries quietly forever)."""

    def __init__(self, what: str, seconds: float = _STALL_SECONDS) -> None:
        self._what = what
        self._seconds = seconds
        self._position: object = None
        self._since = time.monotonic()

    def check(self, position: object) -> None:
        now = time.monotonic()
        if position != self._position:
            self._position, self._since = position, now
        elif now - self._since > self._seconds:
            raise ReplayError(
                f"{self._what}: no progress for {self._seconds:g}s (is Kafka up?); a rerun"
                " continues from the last committed batch"
            )


class Presence:
    """Which candidate event ids the target topics already hold (their `event-id` header).

    Reads every partition of each target topic once, keeping only candidates (a topic's
    partitions may have grown since an event was keyed into one); `refresh` reads what landed
    since, before each batch is published.
    """

    def __init__(self, conn: Mapping[str, Any], candidates: Mapping[str, set[int]]) -> None:
        self._conn = dict(conn)
        self._candidates = {t: set(ids) for t, ids in candidates.items()}
        self._found: dict[str, set[int]] = {t: set() for t in candidates}
        self._consumer: AIOKafkaConsumer | None = None
        self._next: dict[TopicPartition, int] = {}
        self.scanned = 0

    async def start(self, partitions: Mapping[str, int]) -> None:
        """Read the target topics (name -> partition count; 0 for one that does not exist)."""
        tps = [
            TopicPartition(t, p) for t, count in sorted(partitions.items()) for p in range(count)
        ]
        if not tps:
            return
        consumer = AIOKafkaConsumer(
            **self._conn, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        self._consumer = consumer
        beginnings = await consumer.beginning_offsets(tps)
        self._next = dict(beginnings)
        started = time.monotonic()
        await self.refresh()
        log.info(
            "replay_targets_read",
            topics=sorted(partitions),
            records=self.scanned,
            seconds=round(time.monotonic() - started, 3),
        )

    async def refresh(self) -> None:
        consumer = self._consumer
        if consumer is None or not self._next:
            return
        ends = await consumer.end_offsets(list(self._next))
        behind = {tp: end for tp, end in ends.items() if self._next[tp] < end}
        if not behind:
            return
        consumer.assign(sorted(behind))
        for tp in behind:
            consumer.seek(tp, self._next[tp])
        stall = _Stall("reading the target topics")
        while behind:
            batches = await consumer.getmany(*behind, timeout_ms=_FETCH_MS, max_records=5000)
            for tp, records in batches.items():
                wanted = self._candidates.get(tp.topic, set())
                found = self._found.setdefault(tp.topic, set())
                for record in records:
                    self.scanned += 1
                    event_id = _event_id(record.headers)
                    if event_id in wanted:
                        found.add(event_id)
            for tp in list(behind):
                position = await consumer.position(tp)
                self._next[tp] = position
                if position >= behind[tp]:
                    del behind[tp]
            stall.check(tuple(sorted(self._next.values())))

    def has(self, topic: str, event_id: int) -> bool:
        return event_id in self._found.get(topic, ())

    def add(self, topic: str, event_id: int) -> None:
        self._found.setdefault(topic, set()).add(event_id)

    async def stop(self) -> None:
        if self._consumer is not None:
            await _stop(self._consumer)
            self._consumer = None


def _event_id(headers: Iterable[tuple[str, bytes]] | None) -> int | None:
    for name, value in headers or ():
        if name == "event-id" and value.isdigit():
            return int(value)
    return None


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def run_replay(
    settings: BridgeSettings,
    options: Options,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> int:
    """Run a replay and print its summary table; the exit code (0, 1 or 2)."""
    replay = Replay(settings, options, err=err)
    try:
        summary = await replay.run()
    except ReplayUsageError as exc:
        err(f"apizee-bridge replay: {exc}")
        return EXIT_USAGE
    except ReplayError as exc:
        replay.summary.stopped = str(exc)
        summary = replay.summary
    except (KafkaError, OSError) as exc:
        replay.summary.stopped = (
            f"Kafka failed ({type(exc).__name__}: {exc}); a rerun continues from the last"
            " committed batch and skips what landed"
        )
        summary = replay.summary
    for line in summary.table():
        out(line)
    out(summary.verdict())
    return summary.exit_code
