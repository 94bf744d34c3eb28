"""Read back what was written, with confluent-kafka: a client independent of the producer's.

No consumer group: partitions are assigned from the beginning, so a read never waits for a
group join and never moves offsets other readers depend on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

_BATCH = 500
_POLL_SECONDS = 0.1
_DISCOVER_EVERY = 0.5


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # A repeated header name keeps its last value; a null header value reads as b"".
    headers: dict[str, bytes] = field(default_factory=dict)


def consume(
    bootstrap: str,
    topics: Iterable[str],
    *,
    min_count: int | None = None,
    timeout: float = 30.0,
    drain: float = 0.5,
    config: Mapping[str, Any] | None = None,
) -> list[Record]:
    """Every record of `topics`, sorted by (topic, partition, offset).

    With `min_count`: read until that many records arrived (topics may appear meanwhile),
    then keep reading for `drain` seconds so duplicates written just after show up too.
    Without: read up to the end offsets of the topics that exist now (a missing topic has
    no records). Either way, return what was read when `timeout` passes; the caller's
    assertion says what was missing.
    `config` is merged into the librdkafka consumer config (e.g. `security.protocol`,
    `ssl.ca.location`, `sasl.*` for a secured cluster).
    Blocking: from async code, use `consume_async` so the event loop keeps running.
    """
    wanted = sorted(set(topics))
    deadline = time.monotonic() + timeout
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the client, unused: assign() bypasses group membership.
            "group.id": f"readback-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 50,
            "log.connection.close": False,
            **(config or {}),
        }
    )
    records: list[Record] = []
    try:
        assigned = _assign_new(consumer, wanted, set(), min(5.0, timeout))
        ends = None if min_count is not None else _end_offsets(consumer, assigned, deadline)
        next_offset: dict[tuple[str, int], int] = {}
        drain_until: float | None = None
        next_discovery = time.monotonic() + _DISCOVER_EVERY
        while (now := time.monotonic()) < deadline:
            if ends is not None and _reached(next_offset, ends):
                break
            if drain_until is not None and now >= drain_until:
                break
            if min_count is not None and now >= next_discovery:
                # Topics the producer creates (or auto-creates) after we started.
                assigned |= _assign_new(consumer, wanted, assigned, deadline - now)
                next_discovery = now + _DISCOVER_EVERY
            messages = consumer.consume(num_messages=_BATCH, timeout=_POLL_SECONDS)
            if not messages and ends is not None:
                # A transactional partition ends with a commit marker, never delivered: the
                # position (librdkafka moves it past markers) says the end was reached.
                for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                    key = (tp.topic, tp.partition)
                    next_offset[key] = max(next_offset.get(key, -1), tp.offset)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue  # transient (broker restart, leader move): librdkafka retries
                record = _to_record(message)
                records.append(record)
                next_offset[(record.topic, record.partition)] = record.offset + 1
            if min_count is not None and drain_until is None and len(records) >= min_count:
                drain_until = min(deadline, time.monotonic() + drain)
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


async def consume_async(
    bootstrap: str,
    topics: Iterable[str],
    *,
    min_count: int | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - same signature as consume, by design
    drain: float = 0.5,
    config: Mapping[str, Any] | None = None,
) -> list[Record]:
    """`consume` in a worker thread, for tests whose event loop runs the code under test."""
    return await asyncio.to_thread(
        consume,
        bootstrap,
        list(topics),
        min_count=min_count,
        timeout=timeout,
        drain=drain,
        config=config,
    )


def _assign_new(
    consumer: Consumer, topics: list[str], assigned: set[tuple[str, int]], timeout: float
) -> set[tuple[str, int]]:
    """Assign from the beginning the partitions of `topics` not assigned yet; return them.

    A topic that does not exist (yet) contributes nothing.
    """
    metadata = consumer.list_topics(timeout=max(0.1, timeout))
    fresh: set[tuple[str, int]] = set()
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            continue
        fresh |= {(topic, p) for p in meta.partitions if (topic, p) not in assigned}
    if fresh:
        consumer.incremental_assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(fresh)]
        )
    return fresh


def _end_offsets(
    consumer: Consumer, partitions: set[tuple[str, int]], deadline: float
) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for topic, partition in partitions:
        while True:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=remaining, cached=False
                )
                break
            except KafkaException as exc:
                # A topic just created, or a leader moving: NOT_LEADER and the like pass.
                if not transient(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        if high > low:
            ends[(topic, partition)] = high
    return ends


_TRANSIENT_CODES = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


def transient(exc: KafkaException) -> bool:
    """An error that passes once the cluster settles (a new topic, a moved leader)."""
    error = exc.args[0]
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT_CODES)


def _reached(next_offset: dict[tuple[str, int], int], ends: dict[tuple[str, int], int]) -> bool:
    return all(next_offset.get(tp, -1) >= end for tp, end in ends.items())


def _to_record(message: Message) -> Record:
    topic, partition = message.topic(), message.partition()
    # Set on every message that is not an error event.
    assert topic is not None
    assert partition is not None
    return Record(
        topic=topic,
        partition=partition,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=_headers(message),
    )


def _headers(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    # The stub allows a dict and str values (produce-side types); consumed headers are
    # (str, bytes | None) pairs.
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        name: value.encode() if isinstance(value, str) else value or b"" for name, value in pairs
    }
