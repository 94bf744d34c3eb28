"""The dedupe window (bridge/dedupe.py): time and size bounds, concurrent claims."""

from __future__ import annotations

import asyncio

from bridge.dedupe import RecentIds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ids_expire_after_the_window() -> None:
    clock = FakeClock()
    ids = RecentIds(window_seconds=60, max_entries=100, clock=clock)
    ids.add(1)
    clock.now += 30
    ids.add(2)
    assert 1 in ids
    clock.now += 31
    assert 1 not in ids
    assert 2 in ids
    assert len(ids) == 1


def test_memory_is_bounded_by_evicting_the_oldest() -> None:
    ids = RecentIds(window_seconds=3600, max_entries=3, clock=FakeClock())
    for event_id in range(5):
        ids.add(event_id)
    assert len(ids) == 3
    assert [i in ids for i in range(5)] == [False, False, True, True, True]


def test_re_adding_refreshes_the_position() -> None:
    ids = RecentIds(window_seconds=3600, max_entries=2, clock=FakeClock())
    ids.add(1)
    ids.add(2)
    ids.add(1)
    ids.add(3)
    assert 1 in ids
    assert 2 not in ids


async def test_a_concurrent_delivery_waits_and_becomes_a_duplicate() -> None:
    ids = RecentIds(window_seconds=60, max_entries=10)
    assert await ids.claim(7)
    second = asyncio.create_task(ids.claim(7))
    await asyncio.sleep(0)
    assert not second.done()
    ids.release(7, published=True)
    assert await second is False
    assert not await ids.claim(7)


async def test_a_failed_publish_hands_the_claim_over() -> None:
    ids = RecentIds(window_seconds=60, max_entries=10)
    assert await ids.claim(8)
    second = asyncio.create_task(ids.claim(8))
    await asyncio.sleep(0)
    ids.release(8, published=False)
    assert await second is True
    assert 8 not in ids
    ids.release(8, published=True)
    assert 8 in ids
