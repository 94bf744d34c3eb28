"""Ticket state: which event ids were published per ticket, kept in a compacted Kafka topic.

Records are keyed by ticketId and hold one writer's whole knowledge of a ticket; readers
merge records by union (ids, max of times), so losing an older record to compaction can
cost a duplicate, never an event. Each replica owns the tickets of the state-topic
partitions a consumer group assigns it, restores them at start, and polls only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from bridge import metrics
from bridge.catalog import TERMINAL_EVENT_TYPES
from bridge.config import PollerSettings
from bridge.errors import BridgeError
from bridge.logs import Throttled

log = structlog.get_logger(__name__)
_FLUSH_FAILED: Final = Throttled("state_flush_failed")

STATE_VERSION: Final = 1
# The last flush at shutdown: a share of the ingress's grace, not all of it.
_STOP_FLUSH_SECONDS: Final = 5.0
# How long a ticket owned by another replica stays in memory after its last event here.
_FOREIGN_KEEP_MS: Final = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class TicketState:
    """What the bridge knows of one ticket. Ids <= `floor` count as published."""

    ticket_id: int
    ids: set[int] = field(default_factory=set)
    floor: int = 0
    last_event_ms: int = 0
    last_poll_ms: int = 0
    # When the bridge learned of the ticket's terminal event (or that event's own time, if
    # later): the retire grace counts from here, so a terminal webhook that arrives late
    # (Apizee retrying after an outage, a skewed clock) still gets its grace period.
    terminal_ms: int = 0
    retired_ms: int = 0
    # Keys (ids or content hashes) of malformed REST items already sent to the DLQ.
    rejected: set[str] = field(default_factory=set)

    def has(self, event_id: int) -> bool:
        return event_id <= self.floor or event_id in self.ids

    def add(self, event_id: int, max_ids: int) -> None:
        if event_id <= self.floor:
            return
        self.ids.add(event_id)
        if len(self.ids) > max_ids:
            # Ids grow over time: forgetting the oldest behind a floor keeps memory bounded.
            ordered = sorted(self.ids)
            cut = len(ordered) - max_ids
            self.floor = max(self.floor, ordered[cut - 1])
            self.ids = set(ordered[cut:])

    def merge(self, other: TicketState, max_ids: int) -> bool:
        """Union `other` into this state; True if anything changed."""
        before = self._signature()
        self.floor = max(self.floor, other.floor)
        self.ids = {i for i in self.ids if i > self.floor}
        for event_id in other.ids:
            self.add(event_id, max_ids)
        self.last_event_ms = max(self.last_event_ms, other.last_event_ms)
        self.last_poll_ms = max(self.last_poll_ms, other.last_poll_ms)
        self.terminal_ms = max(self.terminal_ms, other.terminal_ms)
        self.retired_ms = max(self.retired_ms, other.retired_ms)
        self.rejected |= other.rejected
        return self._signature() != before

    def _signature(self) -> tuple[int, ...]:
        # Merging only grows a state, so sizes and maxima tell whether anything changed.
        return (
            len(self.ids),
            self.floor,
            self.last_event_ms,
            self.last_poll_ms,
            self.terminal_ms,
            self.retired_ms,
            len(self.rejected),
        )

    @property
    def retired(self) -> bool:
        return self.retired_ms > 0 and self.retired_ms >= self.last_event_ms

    def retire(self, at_ms: int) -> None:
        """Keep only a floor: enough to not re-publish history if the ticket comes back."""
        self.floor = max(self.floor, max(self.ids, default=0))
        self.ids = set()
        self.rejected = set()
        self.retired_ms = at_ms

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": STATE_VERSION,
                "ticketId": self.ticket_id,
                "ids": sorted(self.ids),
                "floor": self.floor,
                "lastEventMs": self.last_event_ms,
                "lastPollMs": self.last_poll_ms,
                "terminalMs": self.terminal_ms,
                "retiredMs": self.retired_ms,
                "rejected": sorted(self.rejected),
            }
        )

    @classmethod
    def decode(cls, ticket_id: int, value: bytes) -> TicketState:
        data: Any = orjson.loads(value)
        # Refused as corrupt (ValueError) rather than half-read: any JSON may be on the topic.
        if not isinstance(data, dict):
            raise ValueError("a ticket state record is a JSON object")
        ids, rejected = data.get("ids", []), data.get("rejected", [])
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise ValueError("ids: a list of integers")
        if not isinstance(rejected, list) or not all(isinstance(k, str) for k in rejected):
            raise ValueError("rejected: a list of strings")
        return cls(
            ticket_id=ticket_id,
            ids=set(ids),
            floor=int(data.get("floor", 0)),
            last_event_ms=int(data.get("lastEventMs", 0)),
            last_poll_ms=int(data.get("lastPollMs", 0)),
            terminal_ms=int(data.get("terminalMs", 0)),
            retired_ms=int(data.get("retiredMs", 0)),
            rejected=set(rejected),
        )


def partition_for(ticket_id: int, partitions: int) -> int:
    """The state-topic partition of a ticket: Kafka's default partitioner on its key."""
    return int(murmur2(str(ticket_id).encode()) & 0x7FFFFFFF) % partitions


class StateStore:
    """The tickets this process knows, which of them it owns, and what must be written."""

    def __init__(self, max_ids: int, clock: Callable[[], int] = now_ms) -> None:
        self._max_ids = max_ids
        self._clock = clock
        self.tickets: dict[int, TicketState] = {}
        self._dirty: set[int] = set()
        self._partitions = 0
        self._owned: set[int] = set()
        self._restoring: set[int] = set()
        # Called after the owned partitions changed (the poller reschedules).
        self.on_owned_change: Callable[[], None] | None = None
        # Called when another writer's record names an owned ticket (the poller polls it).
        self.on_owned_record: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self.tickets)

    def get(self, ticket_id: int) -> TicketState:
        state = self.tickets.get(ticket_id)
        if state is None:
            state = self.tickets[ticket_id] = TicketState(ticket_id)
        return state

    def seen(self, ticket_id: int, event_id: int) -> bool:
        state = self.tickets.get(ticket_id)
        return state is not None and state.has(event_id)

    def record(self, ticket_id: int, event_id: int, event_type: str, occurred_ms: int) -> None:
        """An event of this ticket was published (by the ingress or the poller)."""
        state = self.get(ticket_id)
        state.add(event_id, self._max_ids)
        state.last_event_ms = max(state.last_event_ms, self._clock())
        if event_type in TERMINAL_EVENT_TYPES and not state.terminal_ms:
            state.terminal_ms = max(occurred_ms, self._clock(), 1)
        self._dirty.add(ticket_id)

    def touch(self, ticket_id: int) -> TicketState:
        """Make a ticket active now (a backfill names it) without any event of its own."""
        state = self.get(ticket_id)
        state.last_event_ms = max(state.last_event_ms, self._clock())
        self._dirty.add(ticket_id)
        return state

    def mark_dirty(self, ticket_id: int) -> None:
        self._dirty.add(ticket_id)

    def forget(self, ticket_id: int) -> None:
        self.tickets.pop(ticket_id, None)
        self._dirty.discard(ticket_id)

    def sweep_foreign(self, older_than_ms: int) -> int:
        """Drop written tickets of partitions this replica neither owns nor restores.

        The ingress records every ticket it publishes for; the owner merges what was
        written, so a foreign ticket is only kept while it is recent (for dedupe).
        """
        if not self._partitions:
            return 0
        local = self._owned | self._restoring
        stale = [
            t
            for t, s in self.tickets.items()
            if t not in self._dirty
            and s.last_event_ms < older_than_ms
            and partition_for(t, self._partitions) not in local
        ]
        for ticket_id in stale:
            del self.tickets[ticket_id]
        return len(stale)

    @property
    def unwritten(self) -> int:
        """Tickets whose changes are not written to the state topic yet."""
        return sum(1 for t in self._dirty if t in self.tickets)

    def take_dirty(self) -> list[TicketState]:
        dirty = [self.tickets[t] for t in self._dirty if t in self.tickets]
        self._dirty.clear()
        return dirty

    def merge_record(self, ticket_id: int, value: bytes | None) -> None:
        """Fold a record read from the state topic into memory (a tombstone forgets)."""
        if value is None:
            self.tickets.pop(ticket_id, None)
            return
        try:
            incoming = TicketState.decode(ticket_id, value)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            metrics.STATE_ERRORS.labels(kind="corrupt_record").inc()
            log.warning("state_record_corrupt", ticket_id=ticket_id)
            return
        current = self.tickets.get(ticket_id)
        owned = self.owns(ticket_id)
        if current is None:
            self.tickets[ticket_id] = incoming
        elif current.merge(incoming, self._max_ids) and owned:
            # Another writer knew more: persist the union under our record so that
            # compaction keeps a complete one.
            self._dirty.add(ticket_id)
        if owned and self.on_owned_record is not None:
            self.on_owned_record(ticket_id)

    # -- ownership ---------------------------------------------------------------------

    def set_partitions(self, count: int) -> None:
        self._partitions = count

    def owns(self, ticket_id: int) -> bool:
        if not self._partitions:
            return False
        return partition_for(ticket_id, self._partitions) in self._owned

    def restoring(self, partitions: Iterable[int]) -> None:
        self._restoring |= set(partitions)

    def assign(self, partitions: Iterable[int]) -> None:
        parts = set(partitions)
        self._restoring -= parts
        self._owned |= parts
        self._notify()

    def revoke(self, partitions: Iterable[int]) -> list[TicketState]:
        """Drop the tickets of `partitions`; return those with unwritten changes, which the
        caller still has to write (ids the ingress recorded while on_revoked flushed)."""
        lost = set(partitions)
        self._owned -= lost
        self._restoring -= lost
        unwritten: list[TicketState] = []
        if self._partitions:
            for ticket_id in [
                t for t in self.tickets if partition_for(t, self._partitions) in lost
            ]:
                state = self.tickets.pop(ticket_id)
                if ticket_id in self._dirty:
                    self._dirty.discard(ticket_id)
                    unwritten.append(state)
        self._notify()
        return unwritten

    @property
    def owned_partitions(self) -> frozenset[int]:
        return frozenset(self._owned)

    def owned_tickets(self) -> list[TicketState]:
        return [s for t, s in self.tickets.items() if self.owns(t)]

    def _notify(self) -> None:
        if self.on_owned_change is not None:
            self.on_owned_change()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sync: StateSync) -> None:
        self._sync = sync

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._sync.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._sync.on_assigned({tp.partition for tp in assigned})


# Records per getmany() while restoring or following the state topic.
_BATCH: Final = 5000


async def _restored_to(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    merged_to: int,
    drained: bool,
    batches: Mapping[TopicPartition, Any],
) -> bool:
    """Whether a partition's restore reached `end` (its end offset when it began).

    Not from position() alone: that is the *fetch* position, which runs ahead of what
    getmany() returned while fetched records wait in aiokafka's buffer. Done once a merged
    record reached `end`, or, for a partition whose last offsets were compacted away, once
    the fetch position passed `end` and a round that emptied the buffer (fewer records than
    asked for) returned none of this partition.
    """
    if merged_to >= end:
        return True
    return drained and tp not in batches and await consumer.position(tp) >= end


class StateSync:
    """Keeps the StateStore and the state topic in step: restore, follow, write.

    A consumer group on the state topic decides which partitions (hence tickets) this
    replica owns; on assignment it reads those partitions from the beginning to the end
    offsets of that moment (the restore), then keeps following them to merge what other
    replicas write. A writer task flushes dirty tickets every flush interval.
    """

    def __init__(
        self,
        store: StateStore,
        topic: str,
        poller: PollerSettings,
        send: Callable[[str, bytes, bytes | None], Awaitable[None]],
        connection_kwargs: dict[str, Any],
        *,
        topic_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.topic = topic
        # Joining the group before the topic exists would leave this replica unassigned
        # until the next metadata refresh: wait for the publisher to have created it.
        self._topic_ready = topic_ready
        self._poller = poller
        self._send = send
        self._conn = connection_kwargs
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._restoring: dict[int, int] = {}
        # Per partition: the offset after the last record merged (restore progress).
        self._merged_to: dict[int, int] = {}
        self._pending_assign: set[int] = set()
        self._restore_started = 0.0
        self.restored = asyncio.Event()
        # Why the group cannot be read (a missing ACL, say), while it lasts: readiness says it.
        self.problem: str | None = None

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(), name="state-follow"),
            asyncio.create_task(self._write_loop(), name="state-write"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await asyncio.wait_for(self.flush(), _STOP_FLUSH_SECONDS)
        except (BridgeError, KafkaError, TimeoutError) as exc:
            # Kafka is down (or too slow) at shutdown: the last state delta stays unwritten.
            # The state only ever records events Kafka had acknowledged (record() runs after
            # the ack), so those events are safe in their topics; what is lost is this
            # replica's memory of them, which costs duplicates or a later poll, never an event.
            log.warning(
                "state_not_written",
                tickets=self.store.unwritten,
                topic=self.topic,
                reason=f"Kafka unavailable at shutdown: {exc}" if str(exc) else type(exc).__name__,
                consequence=(
                    "nothing acknowledged is lost: these tickets' events were acknowledged by"
                    " Kafka before their 200 and are in their topics; only the bridge's record"
                    " of them is missing, so after a restart the poller may publish some of"
                    " them again (same event-id), and a ticket the state topic never held is"
                    " polled only once a webhook names it again"
                ),
            )
        finally:
            if self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                await self._stop_consumer(consumer)

    async def _stop_consumer(self, consumer: AIOKafkaConsumer) -> None:
        """Leave the group (so another replica takes over now) and close the consumer."""
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            if task.cancelling() > cancelling:
                raise  # our own cancellation, not aiokafka's
            # aiokafka 0.14's Fetcher.close() awaits the fetch tasks it cancels, and one that
            # was sleeping in its retry backoff (a failed fetch: Kafka down) re-raises the
            # CancelledError (aio-libs/aiokafka#983): close() stops there, before the other
            # tasks and the client. Finish what it skipped.
            for pending in list(consumer._fetcher._pending_tasks):
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
            await consumer._client.close()

    async def flush(self) -> int:
        """Write every dirty ticket; returns how many records were written."""
        dirty = self.store.take_dirty()
        written = 0
        try:
            for state in dirty:
                await self._send(self.topic, str(state.ticket_id).encode(), state.encode())
                written += 1
        except BaseException:
            # Failed or cancelled (stop() cancels the write loop mid-flush): what was not
            # written stays dirty, for the next flush (the final one, at stop).
            for state in dirty[written:]:
                self.store.mark_dirty(state.ticket_id)
            raise
        finally:
            if written:
                metrics.STATE_WRITES.inc(written)
        return written

    async def tombstone(self, ticket_id: int) -> None:
        await self._send(self.topic, str(ticket_id).encode(), None)

    async def _write_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poller.state_flush_seconds)
            try:
                await self.flush()
                self.store.sweep_foreign(now_ms() - _FOREIGN_KEEP_MS)
            except Exception as exc:  # keep the loop alive: Kafka may be down for a while
                metrics.STATE_ERRORS.labels(kind="write").inc()
                # Each flush fails alike while Kafka is down: one line per 10 s.
                _FLUSH_FAILED(
                    error=type(exc).__name__,
                    unwritten_tickets=self.store.unwritten,
                    consequence="kept in memory and written once Kafka answers",
                )
            finally:
                # The store grows with every new ticket, not only at restore.
                metrics.STATE_TICKETS.set(len(self.store))

    async def on_revoked(self, partitions: set[int]) -> None:
        if partitions:
            # Hand over what we know before the next owner restores it.
            with contextlib.suppress(Exception):
                await self.flush()
            log.info("state_partitions_revoked", partitions=sorted(partitions))
        # Recorded while that flush ran: written now, or the next owner never learns them.
        for state in self.store.revoke(partitions):
            with contextlib.suppress(Exception):
                await self._send(self.topic, str(state.ticket_id).encode(), state.encode())

    async def on_assigned(self, partitions: set[int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        parts = consumer.partitions_for_topic(self.topic) or set()
        self.store.set_partitions(len(parts))
        if not partitions:
            self.store.assign(())
            self._check_restored()
            return
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        for p in partitions:
            self._merged_to.pop(p, None)
        self._restore_started = time.monotonic()
        self._restoring = {tp.partition: ends[tp] for tp in tps if ends[tp] > 0}
        self._pending_assign = set(partitions)
        self.store.restoring(partitions)
        log.info("state_partitions_assigned", partitions=sorted(partitions))
        self._check_restored()

    def _check_restored(self) -> None:
        if self._restoring:
            return
        pending = self._pending_assign
        if pending:
            self.store.assign(pending)
            self._pending_assign = set()
            metrics.STATE_RESTORE_SECONDS.set(time.monotonic() - self._restore_started)
        metrics.STATE_TICKETS.set(len(self.store))
        metrics.STATE_READY.set(1)
        if not self.restored.is_set():
            log.info("state_restored", tickets=len(self.store))
        self.restored.set()

    async def restore_all(self, partitions: int) -> None:
        """Read every partition to its end without joining the group (one-shot backfill).

        The store then owns every ticket; nothing is taken from the running replicas, which
        merge what this process writes when they read it.
        """
        # "earliest" although every partition is sought to its beginning: aiokafka resets a
        # newly assigned partition with the default strategy ("latest") in the background,
        # and that reset can land after seek_to_beginning() (seen on Apache Kafka 4.4: the
        # restore then read nothing, and a backfill published everything again).
        consumer = AIOKafkaConsumer(
            **self._conn, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        started = time.monotonic()
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(partitions)]
            self.store.set_partitions(len(tps))
            if tps:
                consumer.assign(tps)
                ends = await consumer.end_offsets(tps)
                await consumer.seek_to_beginning(*tps)
                pending = {tp for tp in tps if ends[tp] > 0}
                merged_to: dict[TopicPartition, int] = {}
                while pending:
                    batches = await consumer.getmany(timeout_ms=200, max_records=_BATCH)
                    for tp, records in batches.items():
                        self._merge(records)
                        merged_to[tp] = records[-1].offset + 1
                    drained = sum(map(len, batches.values())) < _BATCH
                    for tp in list(pending):
                        if await _restored_to(
                            consumer, tp, ends[tp], merged_to.get(tp, 0), drained, batches
                        ):
                            pending.discard(tp)
            self.store.assign(range(len(tps)))
        finally:
            await consumer.stop()
        metrics.STATE_RESTORE_SECONDS.set(time.monotonic() - started)
        metrics.STATE_TICKETS.set(len(self.store))
        self.restored.set()

    def _merge(self, records: Iterable[Any]) -> None:
        for record in records:
            if record.key is None:
                continue
            try:
                ticket_id = int(record.key)
            except ValueError:
                metrics.STATE_ERRORS.labels(kind="corrupt_record").inc()
                continue
            self.store.merge_record(ticket_id, record.value)

    async def _follow(self) -> None:
        poller = self._poller
        if self._topic_ready is not None:
            await self._topic_ready()
        backoff = 0.5
        while self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self._conn,
                group_id=poller.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=poller.group_session_timeout_ms,
                heartbeat_interval_ms=poller.group_heartbeat_interval_ms,
            )
            try:
                await consumer.start()
            except (KafkaError, OSError) as exc:
                await consumer.stop()
                log.warning("state_consumer_failed", error=type(exc).__name__, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._consumer = consumer
        consumer = self._consumer
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        backoff = 0.5
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            except KafkaError as exc:
                # E.g. GroupAuthorizationFailed, TopicAuthorizationFailed: the consumer joins
                # again on the next call; until then readiness names the group and the error.
                problem = (
                    f"poller group {poller.group_id!r} on {self.topic}: {type(exc).__name__}"
                    " (the principal needs Read on the group and on the topic)"
                )
                if problem != self.problem:
                    log.warning("state_group_failed", reason=problem, retry_in=backoff)
                self.problem = problem
                metrics.STATE_ERRORS.labels(kind="group").inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.problem = None
            backoff = 0.5
            for tp, records in batches.items():
                self._merge(records)
                self._merged_to[tp.partition] = records[-1].offset + 1
            if self._restoring:
                drained = sum(map(len, batches.values())) < _BATCH
                for partition, end in list(self._restoring.items()):
                    tp = TopicPartition(self.topic, partition)
                    merged = self._merged_to.get(partition, 0)
                    if await _restored_to(consumer, tp, end, merged, drained, batches):
                        del self._restoring[partition]
                self._check_restored()
