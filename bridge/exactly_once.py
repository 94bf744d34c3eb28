"""exactly_once: every event id once for read_committed consumers, on Kafka's own means.

The ingress and the poller write each event to the intake topic, keyed by ticket; the
replicas share its partitions through a consumer group. The owner of a partition checks
each event id against its tickets' dedupe state (restored read_committed from the
intake-state topic, same partition) and writes, in one transaction per commit interval, the
category records, the state delta and the intake offsets. A producer per intake partition,
its transactional id named after the partition, fences the previous owner when it starts.
A webhook is answered once the group's committed offset passed its intake record: the
transaction that wrote it (or dropped it as a copy) committed. docs/exactly-once.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
import uuid
from collections.abc import Iterable
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    ProducerFenced,
    RequestTimedOutError,
    TransactionalIdAuthorizationFailed,
)

from bridge import metrics
from bridge.config import BridgeSettings
from bridge.errors import (
    KafkaUnavailableError,
    PublishTimeoutError,
    TransactionalIdDeniedError,
    TransactionsUnavailableError,
)
from bridge.metadata import ask_every_broker, find_coordinator
from bridge.models import CanonicalEvent
from bridge.publisher import (
    EventRecord,
    Publisher,
    connection_kwargs,
    group_connection_kwargs,
    producer_kwargs,
)
from bridge.state import TicketState, now_ms, partition_for

log = structlog.get_logger(__name__)

# Where an intake record's event goes (its category or the unknown topic); not copied there.
INTAKE_TOPIC_HEADER: Final = "intake-topic"
# How often a replica asks the group's committed offsets while webhooks wait for them on
# partitions another replica owns (its own partitions tell it directly).
_COMMITTED_POLL_SECONDS: Final = 0.02
_BATCH: Final = 5000
# After a fenced commit: how long to wait for the group to take the partition away (a
# zombie learns it at its next heartbeat) before fencing back (a transaction timed out).
_FENCED_GRACE_SECONDS: Final = 3.0
_RETRY_MAX_SECONDS: Final = 5.0
_SWEEP_SECONDS: Final = 60.0
_TICK_SECONDS: Final = 0.1
_CLOSE_SECONDS: Final = 2.0
# The transactional producers' pause before retrying a request. Kafka answers the first
# requests of a transaction with retriable errors while the last one's markers are still
# being written (CONCURRENT_TRANSACTIONS; COORDINATOR_NOT_AVAILABLE to a TxnOffsetCommit of
# aiokafka's version): at the usual 100 ms, every such answer held a commit, and every
# webhook waiting on it, that long. Java's producer retries those after 20 ms as well.
_TXN_RETRY_BACKOFF_MS: Final = 20
# Answers to InitProducerId that say the cluster can run transactions after a while.
_TRANSIENT: Final = (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError, TimeoutError)
_FENCED: Final = (ProducerFenced,)


def intake_group(settings: BridgeSettings) -> str:
    """The intake consumer group, named after the topics it reads (like the transactional
    ids), so that two deployments on one cluster never share it."""
    return f"{settings.kafka.topic_prefix}.intake"


def transactional_id(prefix: str, partition: int) -> str:
    """One per intake partition: whoever owns the partition writes under it, so a new
    owner's producer fences the last one (Kafka bumps the id's epoch)."""
    return f"{prefix}.intake-{partition}"


# -- waiting for commits ------------------------------------------------------------------


class CommitWatch:
    """Waits until the intake group's committed offset of a partition passes an offset.

    Partitions this replica owns are told at each commit; for the others, the group's
    offsets are asked of its coordinator (OffsetFetch returns committed offsets only, never
    those of a transaction still open) while anyone waits.
    """

    def __init__(self, settings: BridgeSettings, topic: str) -> None:
        self._settings = settings
        self._topic = topic
        self._group = intake_group(settings)
        self._waiters: dict[int, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._seq = itertools.count()
        self._committed: dict[int, int] = {}
        self.local: set[int] = set()
        self._wake = asyncio.Event()
        self._admin: AIOKafkaAdminClient | None = None
        self._coordinator: int | None = None
        self._admin_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="intake-commit-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_admin()

    async def wait(self, partition: int, offset: int) -> None:
        """Until the committed offset of `partition` is beyond `offset`."""
        if self._committed.get(partition, -1) > offset:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters.setdefault(partition, []), (offset, next(self._seq), future))
        self._wake.set()
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    def committed(self, partition: int, offset: int) -> None:
        """The group committed `offset` (the next to read) for `partition`."""
        if offset <= self._committed.get(partition, -1):
            return
        self._committed[partition] = offset
        waiting = self._waiters.get(partition)
        while waiting and waiting[0][0] < offset:
            future = heapq.heappop(waiting)[2]
            if not future.done():
                future.set_result(None)

    async def _poll(self) -> None:
        backoff = 0.1
        while True:
            remote = [p for p, w in self._waiters.items() if w and p not in self.local]
            if not remote:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                for tp, committed in (await self._fetch(remote)).items():
                    if committed.offset >= 0:
                        self.committed(tp.partition, committed.offset)
                backoff = 0.1
            except (KafkaError, OSError, TimeoutError) as exc:
                # The coordinator moved or is down: find it again, a little later.
                log.debug("intake_offsets_unavailable", error=type(exc).__name__)
                self._coordinator = None
                await self._close_admin()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            await asyncio.sleep(_COMMITTED_POLL_SECONDS)

    async def _fetch(self, partitions: list[int]) -> dict[TopicPartition, Any]:
        async with self._admin_lock:  # the poll task and owners opening share one client
            if self._admin is None:
                admin = AIOKafkaAdminClient(**connection_kwargs(self._settings.kafka))
                ask_every_broker(admin._client)
                await admin.start()
                self._admin = admin
            admin = self._admin
        async with asyncio.timeout(self._settings.kafka.request_timeout_ms / 1000 * 2):
            if self._coordinator is None:
                self._coordinator = await find_coordinator(admin._client, self._group, 0)
            offsets: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(
                self._group,
                self._coordinator,
                [TopicPartition(self._topic, p) for p in partitions],
            )
        return offsets

    async def committed_offset(self, partition: int) -> int | None:
        """The group's committed offset of `partition` (None: none yet), asked of the group
        coordinator with the short request timeout (a frozen coordinator is given up on
        and found again, where the group's consumer would wait 30 s). The coordinator is
        looked up anew: an owner opens after a failure, often because a broker froze, and
        the one cached may be that broker."""
        self._coordinator = None
        try:
            offsets = await self._fetch([partition])
        except (KafkaError, OSError, TimeoutError):
            self._coordinator = None
            await self._close_admin()
            raise
        committed = offsets.get(TopicPartition(self._topic, partition))
        return None if committed is None or committed.offset < 0 else int(committed.offset)

    async def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None


# -- one intake partition's owner ---------------------------------------------------------


class PartitionOwner:
    """Writes the transactions of one intake partition while this replica owns it."""

    def __init__(self, engine: ExactlyOnce, partition: int) -> None:
        self.engine = engine
        self.partition = partition
        topics = engine.publisher.topics
        self.tp = TopicPartition(topics.intake, partition)
        self.state_tp = TopicPartition(topics.intake_state, partition)
        self.producer: AIOKafkaProducer | None = None
        self.tickets: dict[int, TicketState] = {}
        self.ready = False
        self.lock = asyncio.Lock()
        # begun: begin_transaction() called; in_txn: the transaction holds records.
        self.begun = False
        self.in_txn = False
        self.txn_started = 0.0
        self.next_offset: int | None = None
        self.dirty: set[int] = set()
        self.written = 0
        self.closed = False
        self.recovering: asyncio.Task[None] | None = None
        # The engine's fetch round when open() sought the committed offset: records of that
        # round or before were fetched from the old position and are not for this opening.
        self.opened_round = 0
        self.next_sweep = time.monotonic() + _SWEEP_SECONDS
        # Events added directly (add_direct) to the open transaction, answered at its commit.
        self.waiters: list[asyncio.Future[None]] = []
        # The commit the commit loop started, while it runs.
        self.committing: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Fence the last owner, restore the dedupe state, resume at the committed offset."""
        engine = self.engine
        settings = engine.settings.kafka
        started = time.monotonic()
        producer = AIOKafkaProducer(
            **{
                **producer_kwargs(settings, engine.max_request_size),
                "retry_backoff_ms": min(settings.retry_backoff_ms, _TXN_RETRY_BACKOFF_MS),
            },
            transactional_id=transactional_id(engine.publisher.topics.prefix, self.partition),
            transaction_timeout_ms=engine.settings.delivery.transaction_timeout_ms,
        )
        ask_every_broker(producer.client)
        try:
            # InitProducerId: the id's epoch goes up, so the last owner (a zombie, maybe) can
            # write no more, and Kafka ends its open transaction before answering.
            await producer.start()
            await producer.begin_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        fenced_in = time.monotonic() - started
        self.producer = producer
        self.begun = True
        self.in_txn = False
        self.txn_started = 0.0
        self.next_offset = None
        self.dirty = set()
        self.tickets = await engine.restore(self.state_tp)
        consumer = engine.consumer
        assert consumer is not None
        committed = await engine.watch.committed_offset(self.partition)
        if committed is None:
            await consumer.seek_to_beginning(self.tp)
        else:
            consumer.seek(self.tp, committed)
            engine.watch.committed(self.partition, committed)
        self.opened_round = engine.fetch_round
        self.ready = True
        log.info(
            "intake_partition_owned",
            partition=self.partition,
            tickets=len(self.tickets),
            offset=committed,
            owned=engine.owned(),
            fence_seconds=round(fenced_in, 3),
            seconds=round(time.monotonic() - started, 3),
        )

    async def close(self, *, wait: bool = True) -> None:
        """`wait=False` after a failed transaction: the producer is stopped in the
        background (it may hang on a frozen broker), the partition opened again meanwhile;
        the new producer's InitProducerId fences it and ends its open transaction."""
        self.ready = False
        self.fail_waiters(KafkaUnavailableError("intake partition handed over"))
        producer, self.producer = self.producer, None
        if producer is not None:
            stopping = asyncio.ensure_future(_stop(producer))
            if wait:
                await stopping
            else:
                self.engine.stopping.add(stopping)
                stopping.add_done_callback(self.engine.stopping.discard)

    async def _begin(self) -> AIOKafkaProducer:
        producer = self.producer
        assert producer is not None
        if not self.begun:
            await producer.begin_transaction()
            self.begun = True
        if not self.in_txn:
            self.in_txn = True
            self.txn_started = time.monotonic()
            self.engine.txn_opened.set()
        return producer

    async def _write(
        self,
        producer: AIOKafkaProducer,
        ticket_id: int,
        event_id: int,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        source: str,
    ) -> None:
        """One event into the open transaction, unless the ticket's state has its id."""
        state = self.tickets.get(ticket_id)
        if state is None:
            state = self.tickets[ticket_id] = TicketState(ticket_id)
        # The ids themselves, not the floor below them: an id older than the ticket's last
        # max_ids_per_ticket ids that never came is written, not taken for a copy.
        if event_id in state.ids:
            metrics.TRANSACTION_RECORDS.labels(outcome="duplicate").inc()
            metrics.DUPLICATES.labels(source=source).inc()
            return
        sent = await producer.send(topic, value, key=key, headers=headers)
        sent.add_done_callback(_retrieved)
        state.add(event_id, self.engine.settings.poller.max_ids_per_ticket)
        state.last_event_ms = now_ms()
        self.dirty.add(ticket_id)
        self.written += 1

    async def process(self, records: Iterable[Any]) -> None:
        """Add intake records to the open transaction: the new ids' records, their state."""
        producer = await self._begin()
        last = None
        for record in records:
            last = record
            ticket_id, event_id, topic = _intake_fields(record)
            if ticket_id is None:
                metrics.TRANSACTION_RECORDS.labels(outcome="corrupt").inc()
                continue
            headers = [(k, v) for k, v in record.headers if k != INTAKE_TOPIC_HEADER]
            await self._write(
                producer,
                ticket_id,
                event_id,
                topic,
                record.key,
                record.value,
                headers,
                _source(record),
            )
        if last is not None:
            self.next_offset = last.offset + 1

    async def add_direct(self, ticket_id: int, event_id: int, record: EventRecord) -> Any:
        """An event received by this replica for a partition it owns: into the open
        transaction without the intake round trip (the same checks, the same transaction).
        Returns a future that its commit resolves (or its failure fails)."""
        producer = await self._begin()
        await self._write(
            producer,
            ticket_id,
            event_id,
            record.topic,
            record.key,
            record.value,
            record.headers,
            record.source,
        )
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(answered)
        return answered

    def fail_waiters(self, exc: BaseException) -> None:
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # a waiter that gave up does not log it as unretrieved

    async def commit(self) -> None:
        """Write the state delta and the offsets, commit; tell the waiters."""
        producer = self.producer
        assert producer is not None
        engine = self.engine
        topic = self.state_tp.topic
        for ticket_id in self.dirty:
            state = self.tickets[ticket_id]
            await producer.send(
                topic, state.encode(), key=str(ticket_id).encode(), partition=self.partition
            )
        now = time.monotonic()
        if now >= self.next_sweep:
            # Past the horizon: forgotten here and, once compacted, in the topic. A scan of
            # every ticket, so once a minute, not at every commit.
            self.next_sweep = now + _SWEEP_SECONDS
            horizon = now_ms() - int(engine.settings.delivery.horizon_hours * 3_600_000)
            expired = [t for t, s in self.tickets.items() if s.last_event_ms < horizon]
            for ticket_id in expired:
                key = str(ticket_id).encode()
                await producer.send(topic, None, key=key, partition=self.partition)
                del self.tickets[ticket_id]
        if self.next_offset is not None:
            await producer.send_offsets_to_transaction(
                {self.tp: self.next_offset}, intake_group(engine.settings)
            )
        await producer.commit_transaction()
        self.begun = False
        metrics.TRANSACTIONS.labels(outcome="committed").inc()
        metrics.TRANSACTION_DURATION.observe(time.monotonic() - self.txn_started)
        metrics.TRANSACTION_RECORDS.labels(outcome="written").inc(self.written)
        self.in_txn = False
        self.dirty = set()
        self.written = 0
        if self.next_offset is not None:
            engine.watch.committed(self.partition, self.next_offset)
            # Offsets go into a transaction only when it processed intake records: resent
            # unchanged, they cost an AddOffsetsToTxn and a TxnOffsetCommit every commit.
            self.next_offset = None
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


async def _stop(producer: AIOKafkaProducer) -> None:
    try:
        # Not long: what it still holds belongs to a transaction that Kafka aborts (the next
        # owner's fence, or the transaction timeout) if it did not commit.
        async with asyncio.timeout(_CLOSE_SECONDS):
            await producer.stop()
    except (TimeoutError, KafkaError) as exc:
        log.warning("intake_producer_stop_abandoned", error=type(exc).__name__)


def _retrieved(future: asyncio.Future[Any]) -> None:
    # A failed send fails its transaction's commit, which is what is handled.
    if not future.cancelled():
        future.exception()


def _intake_fields(record: Any) -> tuple[int | None, int, str]:
    """(ticket id, event id, target topic) of an intake record; ticket None if unreadable."""
    try:
        headers = dict(record.headers)
        return (
            int(record.key),
            int(headers["event-id"]),
            headers[INTAKE_TOPIC_HEADER].decode(),
        )
    except (KeyError, TypeError, ValueError, UnicodeDecodeError):
        return None, 0, ""


def _source(record: Any) -> str:
    for key, value in record.headers:
        if key == "source":
            return str(value.decode(errors="replace"))
    return "WEBHOOK"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: ExactlyOnce) -> None:
        self._engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._engine.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._engine.on_assigned({tp.partition for tp in assigned})


# -- the engine ----------------------------------------------------------------------------


class ExactlyOnce:
    """The intake group's member in this replica: owners of its partitions, the commit loop,
    and the sink that the ingress and the poller publish through."""

    def __init__(self, settings: BridgeSettings, publisher: Publisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self.max_request_size = settings.kafka.message_bytes(settings.ingress.max_body_bytes)
        self.watch = CommitWatch(settings, publisher.topics.intake)
        self.owners: dict[int, PartitionOwner] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.sink = IntakeSink(publisher, self.watch, self)
        # Set with TransactionsUnavailableError when the cluster cannot run transactions.
        self.fatal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._joined = False
        self.problem: str | None = None
        # getmany() calls that returned: tells batches fetched before a seek (PartitionOwner
        # .opened_round) from those fetched after.
        self.fetch_round = 0
        # Set when an owner's transaction gets its first record (wakes the committer).
        self.txn_opened = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self.intake_partitions = 0
        # The stall detector (stalled()): when its task last ran, and last found a gap.
        self._last_tick = time.monotonic()
        self._last_stall = -math.inf
        self._ticker: asyncio.Task[None] | None = None
        # Producers being stopped in the background (PartitionOwner.close(wait=False)).
        self.stopping: set[asyncio.Future[None]] = set()

    def owned(self) -> list[int]:
        """The intake partitions whose owner is open (writing transactions) now."""
        return sorted(p for p, owner in self.owners.items() if owner.ready)

    @property
    def not_ready_reason(self) -> str | None:
        if self.problem is not None:
            return self.problem
        return None if self._joined else "intake group not joined yet"

    async def start(self) -> None:
        await self.watch.start()
        self._ticker = asyncio.create_task(self._tick(), name="intake-stall-detector")
        self._task = asyncio.create_task(self._run(), name="intake-engine")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.fatal.done():
            return
        exc = task.exception()
        if isinstance(exc, TransactionsUnavailableError):
            log.error("exactly_once_unavailable", reason=str(exc))
            self.fatal.set_exception(exc)
        elif exc is not None:
            log.error("intake_engine_failed", error=type(exc).__name__, exc_info=exc)
            self.fatal.set_exception(exc)

    async def stop(self) -> None:
        for task in (self._task, self._committer, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # Commit what is open (answers waiting on it), then leave the group at once.
        for owner in list(self.owners.values()):
            await self._release(owner, commit=True)
        self.owners.clear()
        await asyncio.gather(*self.stopping, return_exceptions=True)
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            self.consumer = None
        await self.watch.stop()
        if not self.fatal.done():
            self.fatal.cancel()

    # -- start ----------------------------------------------------------------------------

    async def _probe(self) -> None:
        """Refuse a cluster that cannot run transactions, once Kafka answers at all."""
        backoff = 0.5
        while True:
            try:
                await probe_transactions(self.settings)
                return
            except (*_TRANSIENT, ProducerFenced) as exc:
                log.warning("transactions_probe_retry", error=type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RETRY_MAX_SECONDS)

    async def _check_partitions(self) -> None:
        topics = self.publisher.topics
        intake = await self.publisher.partition_count(topics.intake)
        state = await self.publisher.partition_count(topics.intake_state)
        self.intake_partitions = intake
        if intake != state:
            raise TransactionsUnavailableError(
                f"{topics.intake} has {intake} partitions and {topics.intake_state} {state}:"
                " exactly_once keeps a ticket's state in the partition of the same number,"
                " so both need the same count"
            )

    async def _run(self) -> None:
        await self.publisher.wait_ready()
        await self._probe()
        await self._check_partitions()
        settings = self.settings
        backoff = 0.5
        while self.consumer is None:
            consumer = AIOKafkaConsumer(
                **group_connection_kwargs(settings.kafka),
                group_id=intake_group(settings),
                isolation_level="read_committed",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=settings.poller.group_session_timeout_ms,
                heartbeat_interval_ms=settings.poller.group_heartbeat_interval_ms,
            )
            ask_every_broker(consumer._client)
            try:
                await consumer.start()
            except (KafkaError, OSError) as exc:
                await consumer.stop()
                log.warning("intake_consumer_failed", error=type(exc).__name__, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_SECONDS)
                continue
            self.consumer = consumer
        consumer = self.consumer
        consumer.subscribe([self.publisher.topics.intake], listener=_Rebalance(self))
        self._committer = asyncio.create_task(self._commit_when_due(), name="intake-commits")
        await self._loop(consumer)

    # -- the loop ---------------------------------------------------------------------------

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        interval = self.settings.delivery.commit_interval_ms / 1000
        backoff = 0.5
        while True:
            try:
                batches = await consumer.getmany(
                    timeout_ms=int(interval * 1000), max_records=_BATCH
                )
            except KafkaError as exc:
                self.problem = (
                    f"intake group {intake_group(self.settings)!r}: {type(exc).__name__}"
                    " (the principal needs Read on the group and the intake topic)"
                )
                log.warning("intake_group_failed", reason=self.problem, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_SECONDS)
                continue
            self.fetch_round += 1
            fetched = self.fetch_round
            self.problem = None
            self._joined = True
            backoff = 0.5
            for tp, records in batches.items():
                owner = self.owners.get(tp.partition)
                if owner is None or not owner.ready:
                    # Not ours, or being opened: it seeks to the committed offset.
                    continue
                async with owner.lock:
                    if not owner.ready or fetched <= owner.opened_round:
                        # Fetched before open() sought the committed offset: fetched again.
                        continue
                    try:
                        await owner.process(records)
                    except Exception as exc:
                        self._failed(owner, exc)

    async def _commit_when_due(self) -> None:
        """Commit each open transaction one commit interval after its first record."""
        interval = self.settings.delivery.commit_interval_ms / 1000
        while True:
            started = [
                o.txn_started
                for o in self.owners.values()
                if o.ready and o.in_txn and (o.committing is None or o.committing.done())
            ]
            if not started:
                self.txn_opened.clear()
                await self.txn_opened.wait()
                continue
            delay = min(started) + interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            now = time.monotonic()
            for owner in self.owners.values():
                if owner.ready and owner.in_txn and now - owner.txn_started >= interval:
                    # Each on its own: a slow commit must not hold the others' (and their
                    # waiting webhooks) behind it.
                    owner.committing = asyncio.create_task(self._commit(owner))

    async def submit(self, ticket_id: int, event_id: int, record: EventRecord) -> Any:
        """The shortcut of IntakeSink.publish: when this replica owns the intake partition of
        the ticket, the event joins its open transaction directly; a future resolved at the
        commit. None when another replica owns it (or it is being opened): the intake."""
        if not self.intake_partitions:
            return None
        owner = self.owners.get(partition_for(ticket_id, self.intake_partitions))
        if owner is None or not owner.ready:
            return None
        async with owner.lock:
            if not owner.ready:
                return None
            try:
                return await owner.add_direct(ticket_id, event_id, record)
            except Exception as exc:
                self._failed(owner, exc)
                raise KafkaUnavailableError(f"transaction failed: {type(exc).__name__}") from exc

    async def _commit(self, owner: PartitionOwner) -> None:
        async with owner.lock:
            if not owner.ready or not owner.in_txn:
                return
            try:
                async with asyncio.timeout(self.settings.delivery.transaction_timeout_ms / 1000):
                    await owner.commit()
            except Exception as exc:
                self._failed(owner, exc)

    def _failed(self, owner: PartitionOwner, exc: BaseException) -> None:
        """A transaction failed (aborted, fenced, or its outcome unknown): start over from
        what Kafka holds, in the background."""
        owner.ready = False
        owner.fail_waiters(KafkaUnavailableError(f"transaction failed: {type(exc).__name__}"))
        fenced = isinstance(exc, _FENCED)
        metrics.TRANSACTIONS.labels(outcome="fenced" if fenced else "failed").inc()
        log.warning(
            "intake_transaction_failed",
            partition=owner.partition,
            error=type(exc).__name__,
            fenced=fenced,
        )
        if owner.recovering is None or owner.recovering.done():
            owner.recovering = asyncio.create_task(self._recover(owner, fenced))

    async def _recover(self, owner: PartitionOwner, fenced: bool) -> None:
        await owner.close(wait=False)
        # This replica may be the zombie: fenced by the partition's new owner, or just woken
        # from a freeze (its commit timed out on the wall clock). The group takes the
        # partition from a zombie at its next heartbeat; opening first would fence the
        # rightful owner. So then wait two heartbeats (longer when fenced) and open only if
        # the partition is still ours. A replica that ran all along (its commit failed on a
        # broker: frozen, moved) opens again at once: a group member that heartbeats is no
        # zombie, and every second here is a second of 503s for the partition.
        heartbeat = self.settings.poller.group_heartbeat_interval_ms / 1000
        if fenced:
            await asyncio.sleep(max(_FENCED_GRACE_SECONDS, 2 * heartbeat))
        elif self.stalled(within=self.settings.poller.group_session_timeout_ms / 1000):
            await asyncio.sleep(2 * heartbeat)
        await self._open(owner)

    def stalled(self, within: float) -> bool:
        """Whether this process stopped running (SIGSTOP, a pause of the VM) for longer than
        a heartbeat within the last `within` seconds: its group membership may have ended."""
        now = time.monotonic()
        gap = self.settings.poller.group_heartbeat_interval_ms / 1000
        return now - self._last_tick > gap or now - self._last_stall < within

    async def _tick(self) -> None:
        gap = self.settings.poller.group_heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(_TICK_SECONDS)
            now = time.monotonic()
            if now - self._last_tick > gap:
                self._last_stall = now
            self._last_tick = now

    async def _open(self, owner: PartitionOwner) -> None:
        """Open an owner, again and again while Kafka refuses, as long as it is ours."""
        backoff = 0.5
        while not owner.closed and self.owners.get(owner.partition) is owner:
            consumer = self.consumer
            if consumer is None or owner.tp not in consumer.assignment():
                return
            try:
                async with owner.lock:
                    if owner.closed:
                        return
                    await owner.open()
                return
            except Exception as exc:
                log.warning(
                    "intake_partition_reopen_failed",
                    partition=owner.partition,
                    error=type(exc).__name__,
                    retry_in=backoff,
                )
                await owner.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_SECONDS)

    # -- the group ------------------------------------------------------------------------

    async def on_assigned(self, partitions: set[int]) -> None:
        # Opened in the background, all at once: a restore may take a while, and this
        # callback holds the group's heartbeats (a slow one would cost the assignment).
        # Their records wait: an owner seeks to its committed offset once it is open.
        for partition in sorted(partitions):
            if partition in self.owners:
                continue
            owner = PartitionOwner(self, partition)
            self.owners[partition] = owner
            self.watch.local.add(partition)
            owner.recovering = asyncio.create_task(
                self._open(owner), name=f"intake-open-{partition}"
            )
        metrics.INTAKE_PARTITIONS_OWNED.set(len(self.owners))

    async def on_revoked(self, partitions: set[int]) -> None:
        for partition in sorted(partitions):
            owner = self.owners.pop(partition, None)
            self.watch.local.discard(partition)
            if owner is not None:
                await self._release(owner, commit=True)
        metrics.INTAKE_PARTITIONS_OWNED.set(len(self.owners))
        if partitions:
            log.info("intake_partitions_revoked", partitions=sorted(partitions), owned=self.owned())

    async def _release(self, owner: PartitionOwner, *, commit: bool) -> None:
        """Hand a partition over: its open transaction committed (its waiters answered)
        when possible, then its producer closed."""
        owner.closed = True
        if owner.recovering is not None:
            owner.recovering.cancel()
        async with owner.lock:
            if commit and owner.ready and owner.in_txn:
                try:
                    async with asyncio.timeout(self.settings.kafka.publish_timeout_seconds):
                        await owner.commit()
                except Exception as exc:
                    # Kafka aborts it; the next owner processes its records again.
                    log.warning(
                        "intake_commit_at_handover_failed",
                        partition=owner.partition,
                        error=type(exc).__name__,
                    )
            await owner.close()

    # -- state --------------------------------------------------------------------------

    async def restore(self, tp: TopicPartition) -> dict[int, TicketState]:
        """The tickets of one intake-state partition as committed (read_committed, to the
        end offset of now: after the fence, no transaction of the last owner is open)."""
        consumer = AIOKafkaConsumer(
            **connection_kwargs(self.settings.kafka),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # "earliest" as well as seek_to_beginning: aiokafka's background reset to the
            # default ("latest") can land after the seek (see bridge/state.py).
            auto_offset_reset="earliest",
        )
        ask_every_broker(consumer._client)
        tickets: dict[int, TicketState] = {}
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            await consumer.seek_to_beginning(tp)
            merged_to = 0
            while end > 0:
                batches = await consumer.getmany(tp, timeout_ms=200, max_records=_BATCH)
                records = batches.get(tp, [])
                for record in records:
                    merged_to = record.offset + 1
                    _merge_state(tickets, record)
                drained = len(records) < _BATCH
                # Done when a record reached the end, or (the end's last offsets being
                # transaction markers or compacted away) the fetch position passed it.
                if merged_to >= end or (
                    drained and not records and await consumer.position(tp) >= end
                ):
                    break
        finally:
            await consumer.stop()
        return tickets


async def probe_transactions(settings: BridgeSettings) -> None:
    """One InitProducerId and begin_transaction under a transactional id of the intake's
    prefix, as the owners will use. Raises TransactionsUnavailableError when the cluster or
    the principal cannot run them (tansu; no rights on the prefix), the transient errors of
    _TRANSIENT (and ProducerFenced) when Kafka did not answer in time."""
    prefix = settings.kafka.topic_prefix
    producer = AIOKafkaProducer(
        **connection_kwargs(settings.kafka),
        # Its own id: replicas starting together must not fence each other's probe.
        transactional_id=f"{prefix}.intake-probe-{uuid.uuid4().hex[:12]}",
        transaction_timeout_ms=settings.delivery.transaction_timeout_ms,
    )
    try:
        async with asyncio.timeout(settings.kafka.publish_timeout_seconds * 3):
            await producer.start()
            await producer.begin_transaction()
    except TransactionalIdAuthorizationFailed:
        raise TransactionalIdDeniedError(
            "BRIDGE_DELIVERY_GUARANTEE=exactly_once: the principal may not use"
            f" transactional ids {prefix}.intake-* (grant Write and Describe on that"
            " transactional-id prefix)"
        ) from None
    except (*_TRANSIENT, ProducerFenced):
        raise
    except KafkaError as exc:
        raise TransactionsUnavailableError(
            "BRIDGE_DELIVERY_GUARANTEE=exactly_once needs a Kafka cluster with transactions;"
            f" {settings.kafka.bootstrap_servers} answered {type(exc).__name__} to"
            " InitProducerId (tansu, the dev broker, has no transactions: use Apache Kafka,"
            " or at_least_once)"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


def _merge_state(tickets: dict[int, TicketState], record: Any) -> None:
    if record.key is None:
        return
    try:
        ticket_id = int(record.key)
    except ValueError:
        return
    if record.value is None:
        tickets.pop(ticket_id, None)
        return
    try:
        tickets[ticket_id] = TicketState.decode(ticket_id, record.value)
    except (TypeError, ValueError):
        log.warning("intake_state_record_corrupt", ticket_id=ticket_id)


# -- what the ingress and the poller publish through -----------------------------------------


class IntakeSink:
    """publish(event): to the intake topic, then until its transaction committed; straight
    into the transaction when this replica owns the event's partition (ExactlyOnce.submit)."""

    def __init__(
        self, publisher: Publisher, watch: CommitWatch, engine: ExactlyOnce | None = None
    ) -> None:
        self._publisher = publisher
        self._watch = watch
        self._engine = engine
        self.publish_timeout = publisher.publish_timeout

    async def publish(self, event: CanonicalEvent) -> None:
        publisher = self._publisher
        record = publisher.event_record(event)
        # Decided here: a record that can never fit its topic must not reach the intake,
        # where its owner could never write it.
        publisher.check_fits(record)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        engine = self._engine
        if engine is not None:
            answered = await engine.submit(event.ticket_id, event.event_id, record)
            if answered is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        await answered
                except TimeoutError:
                    metrics.PUBLISH_ERRORS.labels(kind="timeout").inc()
                    raise PublishTimeoutError(
                        f"not committed within {self.publish_timeout}s"
                    ) from None
                publisher.count_published(record)
                return
        headers = [*record.headers, (INTAKE_TOPIC_HEADER, record.topic.encode())]
        try:
            written = await publisher.send_record(
                publisher.topics.intake, record.key, record.value, headers, "intake"
            )
        except PublishTimeoutError:
            # No "landing" here: an intake record that lands later is not yet an answer,
            # and a copy sent by a retry is dropped by the partition's owner.
            raise PublishTimeoutError(
                f"no acknowledgement within {self.publish_timeout}s"
            ) from None
        try:
            async with asyncio.timeout_at(deadline):
                await self._watch.wait(written.partition, written.offset)
        except TimeoutError:
            metrics.PUBLISH_ERRORS.labels(kind="timeout").inc()
            raise PublishTimeoutError(
                f"not committed within {self.publish_timeout}s (the intake record is kept:"
                " it is written once, whenever its partition's owner gets to it)"
            ) from None
        publisher.count_published(record)
