"""The gap-filling poller: polls each owned active ticket's REST event list and publishes
what no webhook brought (source=POLLER), so that the stream is complete.

A ticket is active from its first event until a grace period after its terminal event
(or an idle TTL); it is polled on an interval with jitter, and once more shortly after the
terminal event. Gap = a listed event older than the settle delay whose id the state lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final, Protocol

import structlog

from bridge import dlq, metrics
from bridge.apizee import TicketEvents
from bridge.catalog import EVENTS, TERMINAL_EVENT_TYPES, UNKNOWN_CATEGORY, category_of
from bridge.config import PollerSettings
from bridge.dedupe import RecentIds
from bridge.errors import (
    ApizeeError,
    InvalidEventError,
    PublishError,
    PublishTimeoutError,
    RecordTooLargeError,
)
from bridge.logs import Throttled
from bridge.models import CanonicalEvent, RestEvent, Source, from_rest
from bridge.publisher import Publisher
from bridge.state import StateStore, StateSync, now_ms

log = structlog.get_logger(__name__)
_PUBLISH_FAILED: Final = Throttled("poll_publish_failed")


def _rejection_key(raw: bytes) -> str:
    """Identity of a rejected item, so that each reaches the DLQ once per ticket."""
    return hashlib.sha256(raw).hexdigest()[:16]


class EventSink(Protocol):
    """Where gaps are published: the Publisher, or exactly_once's intake."""

    async def publish(self, event: CanonicalEvent) -> None: ...


class EventLister(Protocol):
    """Where the poller reads a ticket's events: Apizee's REST API, via its client."""

    async def fetch_events(self, ticket_id: int) -> TicketEvents: ...


@dataclass(slots=True)
class PollResult:
    """What one poll of one ticket did (also the backfill's per-ticket summary)."""

    ticket_id: int
    fetched: int = 0
    published: int = 0
    present: int = 0
    unsettled: int = 0
    rejected: int = 0
    error: str | None = None


def _complete(result: PollResult) -> bool:
    """Whether a poll saw the whole list and published every gap (404: nothing to see)."""
    return result.error in (None, "not_found") and result.unsettled == 0


class Poller:
    """Schedules the owned active tickets and fills their gaps."""

    def __init__(
        self,
        settings: PollerSettings,
        lister: EventLister,
        publisher: Publisher,
        store: StateStore,
        dedupe: RecentIds,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sink: EventSink | None = None,
    ) -> None:
        self._settings = settings
        self._lister = lister
        self._publisher = publisher
        # exactly_once: gaps go through the intake like webhooks (see bridge.exactly_once).
        self._sink: EventSink = sink or publisher
        self._store = store
        self._dedupe = dedupe
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._heap: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._running: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._sync: StateSync | None = None

    # -- scheduling --------------------------------------------------------------------

    def _jittered(self, seconds: float) -> float:
        spread = self._settings.jitter_ratio
        return seconds * (1 + self._rng.uniform(-spread, spread))

    def schedule(self, ticket_id: int, delay: float) -> None:
        """Poll `ticket_id` after `delay` seconds (or sooner, if already due sooner)."""
        due = self._clock() + max(delay, 0.0)
        current = self._due.get(ticket_id)
        if current is not None and current <= due:
            return
        self._due[ticket_id] = due
        heapq.heappush(self._heap, (due, ticket_id))
        self._wake.set()

    def unschedule(self, ticket_id: int) -> None:
        self._due.pop(ticket_id, None)  # its heap entries are skipped when popped

    def observe(self, ticket_id: int, event_type: str) -> None:
        """The ingress published an event of this ticket: make sure it is being polled."""
        if not self._store.owns(ticket_id):
            return
        if event_type in TERMINAL_EVENT_TYPES:
            self.schedule(ticket_id, self._settings.terminal_poll_delay_seconds)
        elif ticket_id not in self._due:
            self.schedule(ticket_id, self._jittered(self._settings.interval_seconds))

    def track(self, ticket_id: int) -> None:
        """A state record named an owned ticket: poll it unless retired or already due."""
        if ticket_id in self._due or ticket_id in self._running:
            return
        state = self._store.tickets.get(ticket_id)
        if state is not None and not state.retired and self._store.owns(ticket_id):
            self.schedule(ticket_id, self._jittered(self._settings.interval_seconds))

    def reschedule_owned(self) -> None:
        """After a (re)assignment: poll every owned live ticket, spread over one interval."""
        owned = {s.ticket_id for s in self._store.owned_tickets() if not s.retired}
        for ticket_id in list(self._due):
            if ticket_id not in owned:
                self.unschedule(ticket_id)
        for ticket_id in owned:
            if ticket_id not in self._due:
                self.schedule(ticket_id, self._rng.uniform(0, self._settings.interval_seconds))
        metrics.ACTIVE_TICKETS.set(len(self._due))

    @property
    def active(self) -> int:
        return len(self._due)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, sync: StateSync | None = None) -> None:
        self._sync = sync
        self._task = asyncio.create_task(self._run(), name="poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_retired(self) -> None:
        """Forget tickets retired longer than the retired TTL (tombstones in the topic)."""
        horizon = now_ms() - self._settings.retired_ttl_seconds * 1000
        for state in self._store.owned_tickets():
            if state.retired and state.retired_ms < horizon:
                self._store.forget(state.ticket_id)
                if self._sync is not None:
                    await self._sync.tombstone(state.ticket_id)

    async def _run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            await self._loop(tasks)
        finally:
            # Stopped: polls in flight end now, before the app closes the client and the
            # publisher under them.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, tasks: set[asyncio.Task[None]]) -> None:
        semaphore = asyncio.Semaphore(self._settings.concurrency)
        next_sweep = self._clock() + 60.0
        while True:
            now = self._clock()
            if now >= next_sweep:
                next_sweep = now + 60.0
                try:
                    await self._sweep_retired()
                except PublishError as exc:
                    log.warning("retired_sweep_failed", error=exc.kind)
            while self._heap and (self._heap[0][0] <= now):
                due, ticket_id = heapq.heappop(self._heap)
                if self._due.get(ticket_id) != due:
                    continue  # superseded entry
                if ticket_id in self._running:
                    # Due again while its poll runs: try again shortly. The stale due time
                    # goes first, or schedule() would keep it and the ticket, without a heap
                    # entry, would never be polled again.
                    del self._due[ticket_id]
                    self.schedule(ticket_id, 1.0)
                    continue
                del self._due[ticket_id]
                await semaphore.acquire()
                self._running.add(ticket_id)
                task = asyncio.create_task(self._poll_scheduled(ticket_id, semaphore))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            lag = max(0.0, now - self._heap[0][0]) if self._heap else 0.0
            metrics.POLL_LAG_SECONDS.set(lag)
            # A ticket due again while its poll runs is in both: count it once.
            running_only = sum(1 for t in self._running if t not in self._due)
            metrics.ACTIVE_TICKETS.set(len(self._due) + running_only)
            timeout = max(0.0, self._heap[0][0] - self._clock()) if self._heap else 1.0
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns when the event
            # is set as stop() cancels, swallowing the cancellation (stop() then hangs).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(timeout, 1.0)):
                    await self._wake.wait()

    async def _poll_scheduled(self, ticket_id: int, semaphore: asyncio.Semaphore) -> None:
        try:
            if self._store.owns(ticket_id):
                result = await self.poll_ticket(ticket_id)
                self._after_poll(ticket_id, complete=_complete(result))
        except Exception:  # a bad ticket never stalls the others
            log.exception("poll_crashed", ticket_id=ticket_id)
            self.schedule(ticket_id, self._settings.interval_seconds)
        finally:
            self._running.discard(ticket_id)
            semaphore.release()

    def _after_poll(self, ticket_id: int, *, complete: bool = True) -> None:
        """Next poll, or retirement after the terminal grace period / idle TTL.

        Only a complete poll may retire a ticket: retiring folds every id up to the highest
        seen into the floor, so after a failed poll the gaps below it would never be filled.
        """
        state = self._store.get(ticket_id)
        settings = self._settings
        now = now_ms()
        if not complete:
            self.schedule(ticket_id, self._jittered(settings.interval_seconds))
            return
        if state.terminal_ms:
            retire_at = state.terminal_ms + settings.retire_grace_seconds * 1000
            if now >= retire_at:
                self._retire(ticket_id, "terminal")
                return
            # Poll again at the retirement time, and on the interval meanwhile.
            delay = min(self._jittered(settings.interval_seconds), (retire_at - now) / 1000)
            self.schedule(ticket_id, delay)
            return
        if now - state.last_event_ms > settings.idle_ttl_seconds * 1000:
            self._retire(ticket_id, "idle")
            return
        self.schedule(ticket_id, self._jittered(settings.interval_seconds))

    def _retire(self, ticket_id: int, why: str) -> None:
        state = self._store.get(ticket_id)
        state.retire(now_ms())
        self._store.mark_dirty(ticket_id)
        self.unschedule(ticket_id)
        metrics.TICKETS_RETIRED.labels(reason=why).inc()
        log.info("ticket_retired", ticket_id=ticket_id, reason=why)

    # -- one poll ----------------------------------------------------------------------

    async def poll_ticket(
        self, ticket_id: int, *, settle_seconds: float | None = None
    ) -> PollResult:
        """Fetch one ticket's events and publish the gaps; never raises for Apizee errors."""
        result = PollResult(ticket_id)
        settle_ms = (
            self._settings.settle_seconds if settle_seconds is None else settle_seconds
        ) * 1000
        try:
            fetched = await self._lister.fetch_events(ticket_id)
        except ApizeeError as exc:
            result.error = exc.kind
            metrics.POLLS.labels(outcome=exc.kind).inc()
            log.warning("poll_failed", ticket_id=ticket_id, error=exc.kind)
            return result
        state = self._store.get(ticket_id)
        now = now_ms()
        result.fetched = len(fetched.items)
        try:
            for item in fetched.items:
                if state.has(item.id):
                    result.present += 1
                    continue
                if now - item.timestamp * 1000 < settle_ms:
                    result.unsettled += 1  # its webhook may still be on its way
                    continue
                await self._fill(fetched, item, now, result)
            for invalid in fetched.invalid:
                await self._reject(
                    fetched, invalid.raw, invalid.error.kind, invalid.error.reason, result
                )
        except PublishError as exc:
            result.error = exc.kind
            metrics.POLLS.labels(outcome="publish_failed").inc()
            # Every ticket's poll fails alike while Kafka is down: one line per 10 s.
            _PUBLISH_FAILED(
                ticket_id=ticket_id,
                error=exc.kind,
                consequence="the gaps are published at a later poll, once Kafka answers",
            )
            return result
        finally:
            state.last_poll_ms = now
            self._store.mark_dirty(ticket_id)
        metrics.POLLS.labels(outcome="ok").inc()
        return result

    async def _reject(
        self, fetched: TicketEvents, raw: bytes, kind: str, reason: str, result: PollResult
    ) -> None:
        """Send a malformed (or too large) item to the DLQ, once: the ticket's state
        remembers it."""
        ticket_id = fetched.ticket_id
        state = self._store.get(ticket_id)
        key = _rejection_key(raw)
        if key in state.rejected:
            return
        try:
            await self._publisher.publish_dlq(
                raw,
                kind=kind,
                reason=reason,
                headers=dlq.poller_headers(
                    request_id=fetched.request_id,
                    received_at_ms=fetched.received_at_ms,
                    ticket_id=ticket_id,
                ),
            )
        except RecordTooLargeError as exc:
            # Not even the DLQ takes it: dropped, said once (remembered as rejected).
            log.warning("poll_item_dropped", ticket_id=ticket_id, kind=kind, reason=exc.reason)
        state.rejected.add(key)
        result.rejected += 1

    async def _fill(
        self, fetched: TicketEvents, item: RestEvent, now: int, result: PollResult
    ) -> None:
        ticket_id = fetched.ticket_id
        category = category_of(item.eventType) if item.eventType in EVENTS else UNKNOWN_CATEGORY
        metrics.GAPS_FOUND.labels(category=category).inc()
        try:
            event = from_rest(item, ticket_id, now, Source.POLLER)
        except InvalidEventError as exc:
            await self._reject(
                fetched, item.model_dump_json().encode(), exc.kind, exc.reason, result
            )
            return
        within = self._publisher.publish_timeout
        if not await self._dedupe.claim(event.event_id, within):
            # Published by this process meanwhile (the dedupe window holds only published
            # ids): make sure the state knows it too, or every later poll finds it again.
            self._store.record(ticket_id, event.event_id, event.event_type, event.occurred_at_ms)
            result.present += 1
            return
        published = False
        landing = None
        publishing = asyncio.ensure_future(self._sink.publish(event))
        try:
            await asyncio.shield(publishing)
            published = True
        except PublishTimeoutError as exc:
            # Maybe stored: the id stays claimed until the record's outcome is known.
            landing = exc.landing
            raise
        except RecordTooLargeError as exc:
            # Never fits its topic: kept raw on the DLQ instead of being tried every poll.
            log.warning("poll_record_too_large", ticket_id=ticket_id, reason=exc.reason)
            raw = item.model_dump_json().encode()
            await self._reject(fetched, raw, "record_too_large", exc.reason, result)
            return
        except asyncio.CancelledError:
            # stop() while the record is on its way: wait for its ack (the publisher is
            # still up) and record it, so that the state written at shutdown knows every
            # record sent; a restarted bridge would publish it again otherwise.
            await asyncio.wait([publishing])
            published = not publishing.cancelled() and publishing.exception() is None
            raise
        finally:
            if landing is not None:
                self._dedupe.release_when_landed(
                    event.event_id,
                    landing,
                    partial(
                        self._store.record,
                        ticket_id,
                        event.event_id,
                        event.event_type,
                        event.occurred_at_ms,
                    ),
                )
            else:
                self._dedupe.release(event.event_id, published)
            if published:
                self._store.record(
                    ticket_id, event.event_id, event.event_type, event.occurred_at_ms
                )
        metrics.GAPS_FILLED.labels(category=category).inc()
        result.published += 1
