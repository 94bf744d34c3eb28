"""What one intake partition's transaction holds at its commit (bridge/exactly_once.py): the
intake offsets only when it processed intake records, the state of the tickets it changed,
and the answers to the webhooks that joined it directly. The Kafka side (fencing, aborts,
read_committed) is tested on Apache Kafka in tests/integration/test_exactly_once.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.exactly_once import INTAKE_TOPIC_HEADER, CommitWatch, PartitionOwner
from bridge.state import TicketState

INTAKE = "t.intake"
STATE = "t.intake-state"


class RecordingProducer:
    """A transactional producer's calls, in order; every send acknowledged at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def begin_transaction(self) -> None:
        self.calls.append(("begin", None))

    async def send(self, topic: str, value: bytes | None, **kwargs: Any) -> asyncio.Future[Any]:
        self.calls.append(("send", (topic, kwargs.get("key"))))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        self.calls.append(("offsets", {tp.partition: o for tp, o in offsets.items()}))

    async def commit_transaction(self) -> None:
        self.calls.append(("commit", None))

    def since_last_commit(self) -> list[tuple[str, Any]]:
        commits = [i for i, (kind, _) in enumerate(self.calls) if kind == "commit"]
        start = commits[-2] + 1 if len(commits) > 1 else 0
        return self.calls[start:]


@dataclass
class IntakeRecord:
    offset: int
    key: bytes
    value: bytes = b"avro"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def intake_record(offset: int, ticket_id: int, event_id: int) -> IntakeRecord:
    headers = [("event-id", str(event_id).encode()), (INTAKE_TOPIC_HEADER, b"t.session")]
    return IntakeRecord(offset, str(ticket_id).encode(), headers=headers)


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> PartitionOwner:
    monkeypatch.setenv("BRIDGE_AUTH_TOKEN", "x" * 16)
    settings = load_settings()
    topics = SimpleNamespace(intake=INTAKE, intake_state=STATE, prefix="t")
    engine: Any = SimpleNamespace(
        settings=settings,
        publisher=SimpleNamespace(topics=topics),
        watch=CommitWatch(settings, INTAKE),
        txn_opened=asyncio.Event(),
    )
    partition_owner = PartitionOwner(engine, 2)
    partition_owner.producer = RecordingProducer()  # type: ignore[assignment]
    partition_owner.ready = True
    return partition_owner


def recorded(owner: PartitionOwner) -> RecordingProducer:
    producer = owner.producer
    assert isinstance(producer, RecordingProducer)
    return producer


async def direct(owner: PartitionOwner, ticket_id: int, event_id: int) -> asyncio.Future[None]:
    record: Any = SimpleNamespace(
        topic="t.session", key=str(ticket_id).encode(), value=b"avro", headers=[], source="WEBHOOK"
    )
    answered: asyncio.Future[None] = await owner.add_direct(ticket_id, event_id, record)
    return answered


async def test_offsets_go_into_a_transaction_only_when_it_processed_intake_records(
    owner: PartitionOwner,
) -> None:
    await owner.process([intake_record(7, 11, 1001), intake_record(8, 12, 1002)])
    await owner.commit()
    first = recorded(owner).since_last_commit()
    assert ("offsets", {2: 9}) in first
    assert owner.engine.watch._committed[2] == 9

    # Only a webhook that joined directly: the committed offset did not move, none resent.
    answered = await direct(owner, 11, 1003)
    await owner.commit()
    second = recorded(owner).since_last_commit()
    assert [kind for kind, _ in second if kind == "offsets"] == []
    assert ("send", ("t.session", b"11")) in second
    assert ("send", (STATE, b"11")) in second  # the ticket's state, with its new id
    assert answered.done()
    assert answered.exception() is None

    await owner.process([intake_record(9, 13, 1004)])
    await owner.commit()
    assert ("offsets", {2: 10}) in recorded(owner).since_last_commit()


async def test_a_copy_is_dropped_and_its_ticket_state_not_rewritten(owner: PartitionOwner) -> None:
    owner.tickets[11] = TicketState(11, ids={1001})
    await owner.process([intake_record(3, 11, 1001)])
    await owner.commit()
    calls = recorded(owner).since_last_commit()
    assert [c for c in calls if c[0] == "send"] == []
    assert ("offsets", {2: 4}) in calls
