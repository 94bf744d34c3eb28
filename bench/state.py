"""Ticket-state memory: bytes per active ticket held by the StateStore, and the size of its
state-topic record, for tickets of typical and long event histories.

The baseline in the same run is the bare ids (one Python int per event id, in a list), so
the ratio says what the state's bookkeeping costs on top of the ids themselves.
"""

from __future__ import annotations

import gc
import tracemalloc

from bridge.state import StateStore

TICKETS = 10_000
# Event ids of one ticket are spread over Apizee's global counter (other tickets interleave).
ID_STRIDE = 37


def measure(events_per_ticket: int) -> tuple[float, float, float]:
    """(MiB of the store, MiB of bare id lists, mean bytes of one encoded record)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = StateStore(max_ids=5000, clock=lambda: 1_700_000_000_000)
    next_id = 56_000
    for ticket in range(TICKETS):
        for _ in range(events_per_ticket):
            next_id += ID_STRIDE
            store.record(361 + ticket, next_id, "session.started", 1_700_000_000_000)
    store_bytes = tracemalloc.get_traced_memory()[0] - before
    record_bytes = sum(len(s.encode()) for s in store.tickets.values()) / TICKETS
    del store
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    bare = [
        [56_000 + (t * events_per_ticket + i) * ID_STRIDE for i in range(events_per_ticket)]
        for t in range(TICKETS)
    ]
    bare_bytes = tracemalloc.get_traced_memory()[0] - before
    del bare
    tracemalloc.stop()
    return store_bytes / 2**20, bare_bytes / 2**20, record_bytes


def main() -> None:
    print(f"ticket state, {TICKETS} active tickets (tracemalloc)")
    print(
        f"{'events/ticket':>14} {'store MiB':>10} {'bare ids MiB':>13} {'ratio':>6} "
        f"{'B/ticket':>9} {'record B':>9}"
    )
    for events in (10, 30, 100):
        store_mib, bare_mib, record = measure(events)
        print(
            f"{events:>14} {store_mib:>10.1f} {bare_mib:>13.1f} {store_mib / bare_mib:>6.2f} "
            f"{store_mib * 2**20 / TICKETS:>9.0f} {record:>9.0f}"
        )


if __name__ == "__main__":
    main()
