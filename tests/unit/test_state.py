"""Ticket state (bridge/state.py): union merge, bounded memory, ownership by partition."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from bridge.state import StateStore, TicketState, partition_for

MAX_IDS = 100

# Any state a writer may hold (ids may sit below the floor: decode does not normalize).
states = st.builds(
    TicketState,
    ticket_id=st.integers(1, 2**40),
    ids=st.sets(st.integers(1, 10**12), max_size=20),
    floor=st.integers(0, 10**12),
    last_event_ms=st.integers(0, 2**45),
    last_poll_ms=st.integers(0, 2**45),
    terminal_ms=st.integers(0, 2**45),
    retired_ms=st.integers(0, 2**45),
    rejected=st.sets(st.text("0123456789abcdef", min_size=16, max_size=16), max_size=4),
)


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """What the store logged (and nothing written to a stream another test may have closed)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def _tickets_in(partition: int, partitions: int, count: int) -> list[int]:
    return [t for t in range(1, 10_000) if partition_for(t, partitions) == partition][:count]


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


def test_terminal_event_counts_from_when_the_bridge_learned_of_it() -> None:
    # Apizee recorded the close long ago (a webhook retried after an outage): the retire
    # grace must not be over before the bridge even heard of it.
    store = StateStore(MAX_IDS, clock=lambda: 5_000_000)
    store.record(5, 50, "ticket.closed", 1234)
    assert store.get(5).terminal_ms == 5_000_000


def test_terminal_event_time_later_than_the_bridge_clock_is_kept() -> None:
    # Apizee's clock ahead of ours: the later of the two, so the grace is never shortened.
    store = StateStore(MAX_IDS, clock=lambda: 1_000)
    store.record(5, 50, "ticket.closed", 9_000)
    assert store.get(5).terminal_ms == 9_000


def test_the_first_terminal_event_learned_counts() -> None:
    now = [1_000]
    store = StateStore(MAX_IDS, clock=lambda: now[0])
    store.record(5, 50, "ticket.closed", 0)
    now[0] = 2_000
    store.record(5, 51, "ticket.completed", 0)
    assert store.get(5).terminal_ms == 1_000


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


# -- encode / decode / merge ------------------------------------------------------------------


@given(states)
def test_every_field_survives_encode_and_decode(state: TicketState) -> None:
    assert TicketState.decode(state.ticket_id, state.encode()) == state


def test_a_record_without_some_fields_decodes_with_defaults() -> None:
    # An older writer, or a hand-made record: what is missing counts as never happened.
    state = TicketState.decode(9, b'{"v":1,"ids":[4],"terminalMs":77}')
    assert state == TicketState(9, ids={4}, terminal_ms=77)


@given(states, states)
def test_merging_a_decoded_record_is_merging_the_state(
    left: TicketState, right: TicketState
) -> None:
    direct = TicketState.decode(left.ticket_id, left.encode())
    via_topic = TicketState.decode(left.ticket_id, left.encode())
    direct.merge(right, MAX_IDS)
    via_topic.merge(TicketState.decode(left.ticket_id, right.encode()), MAX_IDS)
    assert via_topic == direct


@given(states, states)
def test_merge_keeps_the_most_of_every_field(left: TicketState, right: TicketState) -> None:
    merged = TicketState.decode(left.ticket_id, left.encode())
    merged.merge(right, 1000)
    assert merged.floor >= max(left.floor, right.floor)
    assert all(merged.has(i) for i in left.ids | right.ids)
    assert all(i > merged.floor for i in merged.ids)
    assert merged.last_event_ms == max(left.last_event_ms, right.last_event_ms)
    assert merged.last_poll_ms == max(left.last_poll_ms, right.last_poll_ms)
    assert merged.terminal_ms == max(left.terminal_ms, right.terminal_ms)
    assert merged.retired_ms == max(left.retired_ms, right.retired_ms)
    assert merged.rejected == left.rejected | right.rejected
    assert not merged.merge(right, 1000)  # nothing new the second time


def test_merge_reports_a_change_of_any_single_field() -> None:
    base = TicketState(1, ids={10}, floor=5, last_event_ms=1, last_poll_ms=1, terminal_ms=1)
    for change in (
        {"ids": {11}},
        {"floor": 6},
        {"last_event_ms": 2},
        {"last_poll_ms": 2},
        {"terminal_ms": 2},
        {"retired_ms": 2},
        {"rejected": {"k"}},
    ):
        current = TicketState.decode(1, base.encode())
        assert current.merge(TicketState(1, **change), MAX_IDS), change


# -- bounded ids: the floor -------------------------------------------------------------------


def test_a_merge_beyond_the_cap_folds_the_oldest_ids_into_the_floor() -> None:
    left, right = TicketState(1), TicketState(1)
    for event_id in range(1, 81):
        left.add(event_id, MAX_IDS)
    for event_id in range(61, 141):
        right.add(event_id, MAX_IDS)
    assert left.floor == right.floor == 0  # each alone is under the cap
    assert left.merge(right, MAX_IDS)
    assert len(left.ids) == MAX_IDS
    assert left.floor == 40
    assert left.ids == set(range(41, 141))
    assert all(left.has(i) for i in range(1, 141))
    assert not left.has(141)


def test_a_higher_floor_of_another_writer_covers_ids_below_it() -> None:
    state = TicketState(1, ids={3, 7, 12})
    assert state.merge(TicketState(1, floor=8), MAX_IDS)
    assert (state.floor, state.ids) == (8, {12})
    state.add(5, MAX_IDS)  # at or below the floor: already counted as published
    assert state.ids == {12}


def test_the_store_caps_each_ticket_at_its_max_ids() -> None:
    store = StateStore(10)
    for event_id in range(1, 26):
        store.record(1, event_id, "media.pictureTaken", 0)
    state = store.get(1)
    assert (len(state.ids), state.floor) == (10, 15)
    assert store.seen(1, 3)
    assert not store.seen(1, 26)
    assert not store.seen(2, 3)


# -- the store: touch, callbacks, sweep ---------------------------------------------------------


def test_touch_makes_a_ticket_active_now_and_dirty() -> None:
    now = [1000]
    store = StateStore(MAX_IDS, clock=lambda: now[0])
    state = store.touch(5)
    assert state is store.get(5)
    assert (state.last_event_ms, state.ids) == (1000, set())
    assert [s.ticket_id for s in store.take_dirty()] == [5]

    state.last_event_ms = 5000  # an event later than the clock: never moved back
    store.touch(5)
    assert state.last_event_ms == 5000

    state.retire(6000)
    assert state.retired
    now[0] = 7000  # a backfill names a retired ticket: it is active again
    store.touch(5)
    assert not state.retired
    assert state.last_event_ms == 7000
    assert [s.ticket_id for s in store.take_dirty()] == [5]


def test_on_owned_record_names_each_owned_ticket_a_record_is_read_for() -> None:
    store = StateStore(MAX_IDS)
    store.set_partitions(4)
    store.assign([0])
    named: list[int] = []
    store.on_owned_record = named.append
    mine, known = _tickets_in(0, 4, 2)
    [theirs] = _tickets_in(1, 4, 1)
    store.record(known, 1, "ticket.new", 0)

    store.merge_record(mine, TicketState(mine, ids={1}).encode())  # new here
    store.merge_record(known, TicketState(known, ids={1}).encode())  # nothing new: still named
    store.merge_record(theirs, TicketState(theirs, ids={1}).encode())
    store.merge_record(mine, b"not json")  # corrupt: ignored
    store.merge_record(known, None)  # a tombstone forgets, names nothing
    assert named == [mine, known]
    assert store.get(mine).ids == {1}
    assert known not in store.tickets


def test_a_corrupt_record_leaves_the_state_as_it_was(logs: list[dict[str, Any]]) -> None:
    store = StateStore(MAX_IDS)
    store.record(5, 50, "ticket.new", 0)
    before = TicketState.decode(5, store.get(5).encode())
    corrupt = (
        b"{",
        b"[1,2]",
        b'"text"',
        b'{"ids":"abc"}',
        b'{"ids":[51,"52"]}',
        b'{"ids":[51],"floor":"x"}',
        b'{"rejected":[1]}',
    )
    for value in corrupt:
        store.merge_record(5, value)  # never raises: the state topic's reader must go on
        assert store.get(5) == before, value
    assert [e["event"] for e in logs] == ["state_record_corrupt"] * len(corrupt)


def test_sweep_foreign_drops_only_old_clean_tickets_of_other_replicas() -> None:
    store = StateStore(MAX_IDS, clock=lambda: 1000)
    store.set_partitions(4)
    store.assign([0])
    store.restoring([1])
    owned = _tickets_in(0, 4, 2)
    restoring = _tickets_in(1, 4, 2)
    foreign_old, foreign_recent, foreign_dirty = _tickets_in(2, 4, 3)
    for ticket_id in [*owned, *restoring, foreign_old, foreign_recent, foreign_dirty]:
        store.record(ticket_id, 1, "ticket.new", 0)  # last event at 1000
    store.take_dirty()
    store.get(foreign_recent).last_event_ms = 5000
    store.record(foreign_dirty, 2, "ticket.new", 0)  # not written yet: must stay

    assert store.sweep_foreign(older_than_ms=2000) == 1
    assert foreign_old not in store.tickets
    assert set(store.tickets) == {*owned, *restoring, foreign_recent, foreign_dirty}


def test_sweep_foreign_does_nothing_before_the_partitions_are_known() -> None:
    store = StateStore(MAX_IDS, clock=lambda: 1000)
    store.record(1, 1, "ticket.new", 0)
    store.take_dirty()
    assert store.sweep_foreign(older_than_ms=10**15) == 0
    assert 1 in store.tickets
