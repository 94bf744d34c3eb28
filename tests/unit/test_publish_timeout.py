"""The publish timeout without a timer per publish: a publish whose acknowledgement does not
come in time (or whose send() is stuck) fails with PublishTimeoutError, counted; the record
is abandoned, not cancelled; the caller's own cancellation stays a cancellation.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from bridge.codec import Codec
from bridge.config import load_settings
from bridge.errors import KafkaUnavailableError, PublishTimeoutError
from bridge.publisher import Publisher

TIMEOUT = 0.3
# A timeout fires at its deadline plus the sweep interval; the slack is for a loaded machine
# (the point is "about the configured timeout, and not a hang", not a speed measurement).
SLACK = 3.0


class FakeProducer:
    """send() hands back a future the test resolves (or never does); `stuck` never returns."""

    def __init__(self, *, stuck: bool = False) -> None:
        self.stuck = stuck
        self.acks: list[asyncio.Future[Any]] = []
        self.sent = asyncio.Event()

    async def send(self, topic: str, value: bytes | None, **kwargs: Any) -> asyncio.Future[Any]:
        if self.stuck:
            await asyncio.Event().wait()
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        self.sent.set()
        return ack

    async def next_ack(self) -> asyncio.Future[Any]:
        await asyncio.wait_for(self.sent.wait(), 5.0)
        self.sent.clear()
        return self.acks[-1]


def _publisher(producer: FakeProducer) -> Publisher:
    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:1", "publish_timeout_seconds": TIMEOUT},
        auth={"token": "publish-timeout-test-token"},
        apizee={"base_url": None},
    )
    publisher = Publisher(settings.kafka, Codec(), max_body_bytes=1024)
    publisher._producer = producer  # type: ignore[assignment]
    publisher._healthy = True
    return publisher


def _errors(kind: str) -> float:
    labels = {"kind": kind}
    return REGISTRY.get_sample_value("apizee_bridge_publish_errors_total", labels) or 0.0


async def _close(publisher: Publisher) -> None:
    """Stop the deadline sweeper (not stop(): it logs, and earlier tests may have pointed
    structlog at a stream that is closed by now)."""
    sweeper = publisher._sweeper
    if sweeper is not None:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)


async def _send(publisher: Publisher) -> None:
    await publisher._send("t", b"k", b"v", [], "category")


async def test_an_ack_that_does_not_come_in_time_is_a_timeout_and_the_record_is_kept() -> None:
    producer = FakeProducer()
    publisher = _publisher(producer)
    before = _errors("timeout")
    started = time.monotonic()

    with pytest.raises(PublishTimeoutError) as raised:
        await _send(publisher)

    took = time.monotonic() - started
    assert TIMEOUT <= took < TIMEOUT + SLACK
    assert _errors("timeout") == before + 1
    # Abandoned, not cancelled: the record may still land; a late outcome is harmless.
    (ack,) = producer.acks
    assert not ack.done()
    # ... and the error hands it over, so that the dedupe window waits for its outcome.
    assert raised.value.landing is ack
    ack.set_exception(KafkaConnectionError())
    await asyncio.sleep(0)
    await _close(publisher)


async def test_a_stuck_send_times_out_too() -> None:
    publisher = _publisher(FakeProducer(stuck=True))
    started = time.monotonic()

    with pytest.raises(PublishTimeoutError) as raised:
        await _send(publisher)
    # The producer never took the record: nothing can land, a retry may publish.
    assert raised.value.landing is None

    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + SLACK
    await _close(publisher)


async def test_acks_in_time_succeed_and_failed_acks_are_unavailable() -> None:
    producer = FakeProducer()
    publisher = _publisher(producer)

    task = asyncio.create_task(_send(publisher))
    (await producer.next_ack()).set_result(None)
    await task

    task = asyncio.create_task(_send(publisher))
    (await producer.next_ack()).set_exception(KafkaConnectionError())
    with pytest.raises(KafkaUnavailableError):
        await task
    # Past the deadlines of both: nothing fires late.
    await asyncio.sleep(TIMEOUT + 0.2)
    await _close(publisher)


async def test_the_callers_cancellation_is_not_a_timeout() -> None:
    producer = FakeProducer()
    publisher = _publisher(producer)
    before = _errors("timeout")

    task = asyncio.create_task(_send(publisher))
    ack = await producer.next_ack()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not ack.cancelled()
    assert _errors("timeout") == before
    await _close(publisher)
