"""The dedupe window: event ids published recently, bounded in time and in memory.

Apizee may deliver a webhook twice and a sender retries after a 503 whose record landed
anyway; an id published within the window answers "duplicate" instead of a second record.
An id stays claimed while its record is anywhere between the producer and the broker, also
after its request was answered 503 `publish_timeout`: a retry meanwhile waits for that
record's outcome instead of sending a second copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bridge.errors import PublishTimeoutError


class RecentIds:
    """Ids published in the last `window` seconds, at most `max_entries` of them.

    Insertion-ordered dict: the oldest entries are at the front, so expiry and eviction
    pop from there in O(1) each. Ids being published right now are tracked too, so that
    two concurrent deliveries of one event do not both publish it.
    """

    def __init__(
        self,
        window_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window_seconds
        self._max = max_entries
        self._clock = clock
        self._seen: dict[int, float] = {}
        self._pending: dict[int, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: object) -> bool:
        if event_id not in self._seen:
            return False
        self._expire()
        return event_id in self._seen

    @property
    def in_flight(self) -> int:
        """Ids claimed now: being published, or abandoned by a timeout and not landed yet."""
        return len(self._pending)

    def add(self, event_id: int) -> None:
        self._seen.pop(event_id, None)
        self._seen[event_id] = self._clock()
        self._expire()
        while len(self._seen) > self._max:
            del self._seen[next(iter(self._seen))]

    def _expire(self) -> None:
        horizon = self._clock() - self._window
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= horizon:
                break
            del seen[oldest]

    async def claim(self, event_id: int, within: float | None = None) -> bool:
        """True if the caller should publish `event_id`; False if it is a duplicate.

        While another delivery of the same id is being published (or its record, abandoned
        by a publish timeout, is still on its way), wait for its outcome: a success makes
        this one a duplicate, a failure hands the publishing over. Waits at most `within`
        seconds, then raises PublishTimeoutError: the earlier record may still land, and a
        second copy now would be a duplicate for the consumers.
        """
        deadline = None if within is None else asyncio.get_running_loop().time() + within
        while True:
            if event_id in self:
                return False
            pending = self._pending.get(event_id)
            if pending is None:
                self._pending[event_id] = asyncio.get_running_loop().create_future()
                return True
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(pending)
            except TimeoutError:
                raise PublishTimeoutError(
                    "an earlier delivery of this event is still on its way to Kafka"
                ) from None

    def release(self, event_id: int, published: bool) -> None:
        """End a claim: remember the id when it was published, wake concurrent deliveries."""
        if published:
            self.add(event_id)
        pending = self._pending.pop(event_id, None)
        if pending is not None and not pending.done():
            pending.set_result(published)

    def release_when_landed(
        self,
        event_id: int,
        landing: asyncio.Future[Any],
        on_landed: Callable[[], None] | None = None,
    ) -> None:
        """End a claim whose publish timed out once its record's outcome is known.

        `landing` is the producer's future of the abandoned record: written (its result), or
        not (its exception). Until then the id stays claimed; once written it is remembered
        like any published id and `on_landed` runs (the ticket state learns it).
        """

        def done(future: asyncio.Future[Any]) -> None:
            landed = not future.cancelled() and future.exception() is None
            if landed and on_landed is not None:
                on_landed()
            self.release(event_id, landed)

        landing.add_done_callback(done)
