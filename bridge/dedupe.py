"""The dedupe window: event ids published recently, bounded in time and in memory.

Apizee may deliver a webhook twice and a sender retries after a 503 whose record landed
anyway; an id published within the window answers "duplicate" instead of a second record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


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

    async def claim(self, event_id: int) -> bool:
        """True if the caller should publish `event_id`; False if it is a duplicate.

        While another delivery of the same id is being published, wait for its outcome:
        a success makes this one a duplicate, a failure hands the publishing over.
        """
        while True:
            if event_id in self:
                return False
            pending = self._pending.get(event_id)
            if pending is None:
                self._pending[event_id] = asyncio.get_running_loop().create_future()
                return True
            await asyncio.shield(pending)

    def release(self, event_id: int, published: bool) -> None:
        """End a claim: remember the id when it was published, wake concurrent deliveries."""
        if published:
            self.add(event_id)
        pending = self._pending.pop(event_id, None)
        if pending is not None and not pending.done():
            pending.set_result(published)
