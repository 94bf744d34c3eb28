"""The dedupe window (bridge/dedupe.py): time and size bounds, concurrent claims."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

from bridge.dedupe import RecentIds
from bridge.errors import PublishTimeoutError


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


# -- a publish that timed out: its record may still land ---------------------------------


async def test_a_retry_waits_for_a_timed_out_record_and_is_a_duplicate_once_it_lands() -> None:
    ids = RecentIds(window_seconds=60, max_entries=10)
    assert await ids.claim(9)
    landing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    landed: list[int] = []
    # The first delivery was answered 503 publish_timeout; its record is still in the producer.
    ids.release_when_landed(9, landing, lambda: landed.append(9))
    retry = asyncio.create_task(ids.claim(9, within=5))
    await asyncio.sleep(0.01)
    assert not retry.done(), "a retry must not publish a second copy while the first may land"
    landing.set_result(None)
    assert await retry is False
    assert 9 in ids
    assert landed == [9]
    assert ids.in_flight == 0


async def test_a_retry_gives_up_after_its_own_timeout_without_claiming() -> None:
    ids = RecentIds(window_seconds=60, max_entries=10)
    assert await ids.claim(10)
    landing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ids.release_when_landed(10, landing)
    with pytest.raises(PublishTimeoutError):
        await ids.claim(10, within=0.05)
    assert ids.in_flight == 1, "still claimed by the record on its way"
    landing.cancel()
    await asyncio.sleep(0)
    assert ids.in_flight == 0


async def test_a_timed_out_record_that_fails_hands_the_claim_over() -> None:
    ids = RecentIds(window_seconds=60, max_entries=10)
    assert await ids.claim(11)
    landing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    landed: list[int] = []
    ids.release_when_landed(11, landing, lambda: landed.append(11))
    retry = asyncio.create_task(ids.claim(11, within=5))
    await asyncio.sleep(0.01)
    landing.set_exception(KafkaConnectionError())
    assert await retry is True, "not written: the retry publishes it"
    assert 11 not in ids
    assert landed == []


async def test_a_record_that_landed_before_the_release_is_remembered_at_once() -> None:
    ids = RecentIds(window_seconds=60, max_entries=10)
    assert await ids.claim(12)
    landing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    landing.set_result(None)
    ids.release_when_landed(12, landing)
    await asyncio.sleep(0)
    assert not await ids.claim(12, within=1)
