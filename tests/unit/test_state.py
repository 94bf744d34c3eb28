"""Ticket state (bridge/state.py): union merge, bounded memory, ownership by partition."""

from __future__ import annotations

import tracemalloc

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from bridge.state import StateStore, TicketState, partition_for

MAX_IDS = 100


def test_encode_decode_round_trip() -> None:
    state = TicketState(7, ids={3, 9}, floor=2, last_event_ms=5, last_poll_ms=6, terminal_ms=4)
    state.rejected.add("abc")
    assert TicketState.decode(7, state.encode()) == state


def test_ids_beyond_the_cap_fold_into_the_floor() -> None:
    state = TicketState(1)
    for event_id in range(1, 251):
        state.add(event_id, MAX_IDS)
    assert len(state.ids) == MAX_IDS
    assert state.floor == 150
    assert all(state.has(i) for i in range(1, 251))
    assert not state.has(251)


@given(
    st.lists(st.integers(1, 10_000), max_size=60),
    st.lists(st.integers(1, 10_000), max_size=60),
)
def test_merge_is_a_union_and_idempotent(left: list[int], right: list[int]) -> None:
    a, b = TicketState(1), TicketState(1)
    for i in left:
        a.add(i, 1000)
    for i in right:
        b.add(i, 1000)
    a.merge(b, 1000)
    assert all(a.has(i) for i in left + right)
    assert not a.merge(b, 1000)


def test_retired_ticket_keeps_a_floor_and_comes_back_with_a_new_event() -> None:
    state = TicketState(1, ids={5, 8}, last_event_ms=100)
    state.retire(200)
    assert state.retired
    assert state.ids == set()
    assert state.has(8)
    state.add(12, MAX_IDS)
    state.last_event_ms = 300
    assert not state.retired
    assert not state.has(9)


def test_partition_matches_the_producers_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for ticket_id in (0, 1, 361, 1345324, 2**40):
        key = str(ticket_id).encode()
        expected = partitioner(key, list(range(6)), list(range(6)))
        assert partition_for(ticket_id, 6) == expected


def test_store_owns_only_assigned_partitions_and_drops_revoked_tickets() -> None:
    store = StateStore(MAX_IDS, clock=lambda: 1000)
    store.set_partitions(4)
    tickets = range(1, 200)
    store.assign([0, 1])
    for ticket_id in tickets:
        store.record(ticket_id, ticket_id * 10, "ticket.new", 0)
    owned = {t for t in tickets if partition_for(t, 4) in (0, 1)}
    assert {t for t in tickets if store.owns(t)} == owned
    store.revoke([1])
    assert set(store.tickets) == {t for t in tickets if partition_for(t, 4) != 1}


def test_merge_record_marks_owned_tickets_dirty_when_another_writer_knew_more() -> None:
    store = StateStore(MAX_IDS)
    store.set_partitions(1)
    store.assign([0])
    store.record(5, 50, "ticket.new", 0)
    assert [s.ticket_id for s in store.take_dirty()] == [5]
    store.merge_record(5, TicketState(5, ids={50}).encode())
    assert store.take_dirty() == []
    store.merge_record(5, TicketState(5, ids={51}).encode())
    assert [s.ids for s in store.take_dirty()] == [{50, 51}]
    store.merge_record(5, None)
    assert 5 not in store.tickets


def test_terminal_event_is_recorded() -> None:
    store = StateStore(MAX_IDS)
    store.record(5, 50, "ticket.closed", 1234)
    assert store.get(5).terminal_ms == 1234


def test_memory_per_ten_thousand_active_tickets() -> None:
    """Measured, not asserted tightly: printed for the issue; bounded to catch blow-ups."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = StateStore(5000)
    for ticket_id in range(10_000):
        for n in range(30):  # a typical session: ~30 events
            store.record(ticket_id, ticket_id * 100 + n, "media.pictureTaken", 0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"state memory: {used / 1e6:.1f} MB per 10 000 tickets of 30 events")
    assert used < 60e6
