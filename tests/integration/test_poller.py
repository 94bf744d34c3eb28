"""The gap-filling poller against a real broker and the simulated Apizee.

Webhooks are lost, duplicated and reordered; Apizee's REST API answers 429 and 5xx; a bridge
is restarted mid-run; two replicas split the tickets; a backfill fills tickets no webhook
announced. Every test reads the topics back with confluent-kafka and compares them with the
simulator's ground truth: every event id exactly once, keyed by its ticket, POLLER for what
the poller filled. Measurements are printed (`pytest -s`) for the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.apizee import CircuitState
from bridge.config import BridgeSettings
from bridge.devtools.devbroker import free_port
from bridge.devtools.simulator import (
    Outcome,
    RestFaults,
    SendReport,
    SimEvent,
    Simulator,
    WebhookConfig,
    WebhookSender,
)
from bridge.state import TicketState, partition_for
from tests.integration.pollerkit import (
    TOKEN,
    Census,
    Replica,
    capture_tracking,
    delta,
    poller_settings,
    read_events,
    read_to_end,
    replica,
    sample,
    samples,
    wait_all_published,
    wait_until,
)

pytestmark = pytest.mark.integration

M = "apizee_bridge_"
SIM_TOKEN = "simulator-token"


def report(name: str, **values: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


async def send(
    url: str, events: Iterable[SimEvent], *, seed: int = 1, **options: object
) -> SendReport:
    """Webhooks for these events (not send_all: that one waits for every event recorded)."""
    config = WebhookConfig(url=url, token=TOKEN, seed=seed, **options)  # type: ignore[arg-type]
    return await WebhookSender(config).send(list(events))


def assert_exactly_once(census: Census, sim: Simulator, expected: Iterable[int]) -> None:
    """Every expected id once, nothing else, each keyed by its ticketId."""
    wanted = set(expected)
    missing = census.missing(wanted)
    duplicates = census.duplicates()
    unexpected = census.unexpected(wanted)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:10]}"
    assert not duplicates, f"{len(duplicates)} events published twice: {duplicates}"
    assert not unexpected, f"events the simulator never had: {sorted(unexpected)[:10]}"
    wrong_key = [
        (r.key, int(r.headers["event-id"]))
        for r in census.records
        if r.key != str(sim.event(int(r.headers["event-id"])).ticket_id).encode()
    ]
    assert not wrong_key, f"{len(wrong_key)} records not keyed by ticketId: {wrong_key[:5]}"


def assert_sources(census: Census, never_delivered: Iterable[int]) -> None:
    """An event whose webhook never reached the bridge can only have come from the poller."""
    by_source = census.by_source()
    assert set(by_source) <= {"WEBHOOK", "POLLER"}, by_source.keys()
    lost = set(never_delivered)
    assert lost <= by_source.get("POLLER", set()), sorted(lost - by_source.get("POLLER", set()))
    assert not lost & by_source.get("WEBHOOK", set())


async def assert_state_knows(bootstrap: str, prefix: str, census: Census) -> None:
    """The state topic (what a restarted or new owner restores) knows every published id."""
    records = await asyncio.to_thread(read_to_end, bootstrap, [f"{prefix}.bridge-state"])
    known: dict[int, TicketState] = {}
    for r in records:
        assert r.key is not None
        ticket_id = int(r.key)
        if r.value is None:
            known.pop(ticket_id, None)
            continue
        state = TicketState.decode(ticket_id, r.value)
        if ticket_id in known:
            known[ticket_id].merge(state, max_ids=10**6)
        else:
            known[ticket_id] = state
    unknown = []
    for r in census.records:
        event_id = int(r.headers["event-id"])
        state = known.get(int(r.key or b"0"))
        if state is None or not state.has(event_id):
            unknown.append((r.key, event_id))
    assert not unknown, f"{len(unknown)} published ids the state topic lacks: {unknown[:10]}"


async def dlq_records(bootstrap: str, prefix: str) -> int:
    return len(await asyncio.to_thread(read_to_end, bootstrap, [f"{prefix}.dlq"]))


# -- 1. lost, duplicated, reordered webhooks ------------------------------------------------


async def test_every_event_exactly_once_despite_lost_duplicated_reordered_webhooks(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = capture_tracking(monkeypatch)
    async with Simulator(tickets=300, seed=11) as sim:
        settings = poller_settings(kafka_bootstrap, topic_prefix, sim.base_url)
        expected = set(sim.event_ids())
        started = time.monotonic()
        async with replica(settings, captured) as bridge:
            sent = await sim.send_all(
                bridge.webhook_url, token=TOKEN, drop=0.2, duplicate=0.05, reorder_window=5
            )
            summary = sent.summary()
            assert summary["failed"] == summary["refused"] == 0, summary
            assert summary["dropped"] > 0.15 * len(expected), summary
            assert summary["duplicated"] > 0.03 * len(expected), summary
            # The poller learns tickets from webhooks: one whose webhooks were all lost is
            # the backfill's job (test_backfill...); this seed has none.
            assert sim.tickets_without_webhook() == []

            census, took = await wait_all_published(
                kafka_bootstrap, topic_prefix, expected, within=60
            )

            # Settled: every ticket polled after its terminal event and retired.
            async def settled() -> bool:
                return bridge.tracking.poller.active == 0 and bridge.polls_in_flight == 0

            await wait_until(settled, 30, lambda: f"{bridge.tracking.poller.active} active")
            polled = {p.ticket_id for p in bridge.polls}
            assert polled == set(sim.ticket_ids())
            assert all(p.result is not None and p.result.error is None for p in bridge.polls)
        # Read after the bridge stopped: nothing can arrive later.
        census = await read_events(kafka_bootstrap, topic_prefix)
        assert_exactly_once(census, sim, expected)
        assert_sources(census, sent.dropped)
        await assert_state_knows(kafka_bootstrap, topic_prefix, census)
        assert await dlq_records(kafka_bootstrap, topic_prefix) == 0
        sources = {k: len(v) for k, v in census.by_source().items()}
        report(
            "lost webhooks",
            tickets=len(sim.tickets),
            events=len(expected),
            records=len(census.records),
            duplicates=len(census.duplicates()),
            dropped=summary["dropped"],
            duplicated_deliveries=summary["duplicated"],
            answered_duplicate=summary["duplicate"],
            by_source=sources,
            polls=len(bridge.polls),
            complete_after_s=round(took, 1),
            total_s=round(time.monotonic() - started, 1),
        )


# -- 2. 429 storm, 5xx, circuit breaker -----------------------------------------------------


async def test_rest_faults_lose_nothing_and_the_client_stays_polite(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = capture_tracking(monkeypatch)
    rate, burst, retry_after, open_seconds = 10.0, 5, 1.0, 1.0
    faults = RestFaults(
        p_429=0.03, p_500=0.05, retry_after_seconds=retry_after, retry_after_form="mixed"
    )
    async with Simulator(tickets=40, seed=21, faults=faults) as sim:
        settings = poller_settings(
            kafka_bootstrap,
            topic_prefix,
            sim.base_url,
            apizee={
                "rate_limit_per_second": rate,
                "rate_limit_burst": burst,
                "max_retries": 1,
                "circuit_failure_threshold": 3,
                "circuit_open_seconds": open_seconds,
            },
        )
        expected = set(sim.event_ids())
        circuit: list[tuple[float, int]] = []

        async def watch_circuit() -> None:
            while True:
                state = int(sample(f"{M}apizee_circuit_state"))
                if not circuit or circuit[-1][1] != state:
                    circuit.append((time.monotonic(), state))
                await asyncio.sleep(0.005)

        requests_before = samples(f"{M}apizee_requests_total", "status")
        opens_before = sample(f"{M}apizee_circuit_opens_total")
        polls_before = samples(f"{M}polls_total", "outcome")
        async with replica(settings, captured) as bridge:
            watcher = asyncio.create_task(watch_circuit())
            sim.rest.reset_requests()
            sending = asyncio.create_task(sim.send_all(bridge.webhook_url, token=TOKEN, drop=0.25))

            async def polling() -> bool:
                return bridge.polls_in_flight > 0 or bool(bridge.polls)

            await wait_until(polling, 30, "the poller polls", interval=0.01)
            # A 429 storm, then a 5xx outage long enough to open the circuit (twice at least).
            sim.rest.inject("429", duration=1.5)
            sim.rest.inject("500", duration=2.5, start_in=2.0)
            sent = await sending
            census, took = await wait_all_published(
                kafka_bootstrap, topic_prefix, expected, within=60
            )

            async def settled() -> bool:
                return bridge.tracking.poller.active == 0 and bridge.polls_in_flight == 0

            await wait_until(settled, 30, lambda: f"{bridge.tracking.poller.active} active")
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        census = await read_events(kafka_bootstrap, topic_prefix)
        assert_exactly_once(census, sim, expected)
        assert_sources(census, sent.dropped)

        stats = sim.rest.stats()
        log = sorted(sim.rest.requests, key=lambda r: r.at)
        # The faults happened: 429s (each pausing every caller) and enough 500s in a row.
        assert stats.by_status.get(429, 0) >= 2, stats.by_status
        assert stats.by_status.get(500, 0) >= 3, stats.by_status

        # Client-side rate limit: a token bucket starts at most burst + rate * T requests in
        # any T seconds. Measured where they arrive, one more may fit: two requests started
        # 1/rate apart can arrive closer (one request of slack, whatever T).
        assert stats.max_per_second <= rate + burst + 1, (stats.max_per_second, rate + burst)
        over_3s = sim.rest.max_in_window(3.0)
        assert over_3s <= 3 * rate + burst + 1, (over_3s, 3 * rate + burst)

        # Retry-After honoured: after a 429 left the server, no request until it elapsed.
        # (A request already on its way when the 429 was sent may arrive just after it.)
        in_flight_slack = 0.2
        early: list[float] = []
        gaps: list[float] = []
        for r in log:
            if r.status != 429:
                continue
            answered = r.at + r.duration
            after = [q.at for q in log if q.at > answered + in_flight_slack]
            if after:
                gaps.append(after[0] - answered)
                if after[0] < answered + retry_after - 0.05:
                    early.append(after[0] - answered)
        assert not early, f"requests {early} s after a 429 with Retry-After {retry_after}"
        assert len(gaps) >= 2  # measured, not vacuous

        # The circuit opened (5xx outage), failed fast while open, and closed again.
        states = [s for _, s in circuit]
        opens = sample(f"{M}apizee_circuit_opens_total") - opens_before
        assert opens >= 1
        assert CircuitState.OPEN in states, circuit
        assert states[-1] == CircuitState.CLOSED, circuit
        open_periods = [
            (t, circuit[i + 1][0] if i + 1 < len(circuit) else time.monotonic())
            for i, (t, s) in enumerate(circuit)
            if s == CircuitState.OPEN
        ]
        leaked = [
            q.at - start
            for start, _ in open_periods
            for q in log
            if start + in_flight_slack < q.at < start + open_seconds - 0.05
        ]
        assert not leaked, f"requests while the circuit was open: {leaked}"

        # What the client counted is what the server saw.
        requests = delta(requests_before, samples(f"{M}apizee_requests_total", "status"))
        server = {str(k) if k != 500 else "5xx": float(v) for k, v in stats.by_status.items()}
        assert requests == server
        polls = delta(polls_before, samples(f"{M}polls_total", "outcome"))
        assert polls.get("circuit_open", 0) > 0, polls
        assert polls.get("rate_limited", 0) + polls.get("server_error", 0) > 0, polls
        report(
            "rest faults",
            events=len(expected),
            duplicates=len(census.duplicates()),
            requests=stats.total,
            by_status=stats.by_status,
            max_requests_in_1s=stats.max_per_second,
            limit=rate + burst,
            max_requests_in_3s=over_3s,
            min_gap_after_429_s=round(min(gaps), 2) if gaps else None,
            circuit_opens=int(opens),
            open_periods_s=[round(b - a, 2) for a, b in open_periods],
            polls=polls,
            complete_after_s=round(took, 1),
        )


# -- 3. restart -----------------------------------------------------------------------------


async def test_restart_restores_state_before_ready_and_publishes_nothing_twice(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = capture_tracking(monkeypatch)
    async with Simulator(tickets=30, seed=31, manual=True) as sim:
        # Tickets stay active across the restart: the new bridge polls every one of them.
        def settings() -> BridgeSettings:
            return poller_settings(
                kafka_bootstrap,
                topic_prefix,
                sim.base_url,
                poller={"retire_grace_seconds": 3600},
            )

        n = len(sim.events)
        first = sim.record(n * 6 // 10)
        async with replica(settings(), captured) as one:
            await send(one.webhook_url, first, seed=1, drop=0.2, duplicate=0.05, reorder_window=5)
            await wait_all_published(
                kafka_bootstrap, topic_prefix, [e.event_id for e in first], within=30
            )
            # Mid-run: more events are being delivered (and polled) when the bridge stops.
            middle = sim.record(n * 2 // 10)
            sender = WebhookSender(
                WebhookConfig(
                    url=one.webhook_url,
                    token=TOKEN,
                    seed=2,
                    drop=0.2,
                    duplicate=0.05,
                    reorder_window=5,
                    retry=False,
                )
            )
            sending = asyncio.create_task(sender.send(middle))

            async def some_delivered() -> bool:
                return len(sender.report.deliveries) >= len(middle) // 3

            await wait_until(some_delivered, 30, "a third of the webhooks delivered")
            polls_at_stop = one.polls_in_flight
            stopped_in = await one.shutdown()
            await sending
        before = await read_events(kafka_bootstrap, topic_prefix)
        assert not before.duplicates()
        await assert_state_knows(kafka_bootstrap, topic_prefix, before)
        published_before = set(before.counts)
        last = sim.record_all()  # what happens while the bridge is down

        async with replica(settings(), captured, wait_ready=False) as two:
            listening_at = time.monotonic()
            # Each answer with whether the state was restored when it was asked for: the
            # window in which only the restore is missing can be shorter than a sample.
            answers: list[tuple[int, str | None, bool]] = []
            while not answers or answers[-1][0] != 200:
                restored = two.tracking.sync.restored.is_set()
                status, body = await two.readyz()
                answers.append((status, body.get("reason"), restored))
                assert time.monotonic() - listening_at < 30, answers[-5:]
                await asyncio.sleep(0.01)
            ready_after = time.monotonic() - listening_at
            # Not ready until the state was read back; then ready, knowing every id.
            assert {s for s, _, _ in answers[:-1]} == {503}, answers
            assert not answers[0][2], "restored before the bridge listened: nothing proven"
            assert all(r for s, _, r in answers if s == 200), answers
            assert all(
                not r for _, reason, r in answers if reason == "ticket state not restored yet"
            ), answers
            assert two.tracking.sync.restored.is_set()
            store = two.tracking.store
            unknown = [i for i in published_before if not store.seen(sim.event(i).ticket_id, i)]
            assert not unknown, f"{len(unknown)} published ids not restored: {unknown[:10]}"
            restore_seconds = sample(f"{M}state_restore_seconds")

            # Apizee retries everything: what was published is a duplicate, not a record.
            replay = await send(two.webhook_url, sim.events, seed=3)
            outcomes = replay.outcomes()
            not_dup = [i for i in published_before if outcomes[i] is not Outcome.DUPLICATE]
            assert not not_dup, f"replayed webhooks not answered duplicate: {not_dup[:10]}"
            assert set(outcomes.values()) <= {Outcome.DUPLICATE, Outcome.ACCEPTED}
            replayed_at = time.monotonic()
            await wait_all_published(kafka_bootstrap, topic_prefix, sim.event_ids(), 30)

            # The poller saw every ticket again after the replay, and found nothing to do.
            async def all_polled_again() -> bool:
                done = {p.ticket_id for p in two.polls if p.started > replayed_at and p.result}
                return done >= set(sim.ticket_ids())

            await wait_until(all_polled_again, 30, "every ticket polled after the replay")
            late = [p for p in two.polls if p.started > replayed_at]
            assert all(p.result is not None and p.result.published == 0 for p in late)
        census = await read_events(kafka_bootstrap, topic_prefix)
        assert_exactly_once(census, sim, sim.event_ids())
        report(
            "restart",
            events=len(sim.events),
            published_before_restart=len(published_before),
            recorded_while_down=len(last),
            polls_in_flight_at_stop=polls_at_stop,
            stop_s=round(stopped_in, 2),
            ready_after_s=round(ready_after, 2),
            readyz_503_answers=sum(1 for s, _, _ in answers if s == 503),
            state_restore_s=round(restore_seconds, 3),
            replay=replay.summary(),
            duplicates=len(census.duplicates()),
        )


# -- 4. two replicas ------------------------------------------------------------------------


def partitions_of(bridge: Replica) -> frozenset[int]:
    return bridge.tracking.store.owned_partitions


async def test_two_replicas_split_the_tickets_and_the_survivor_takes_over(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = capture_tracking(monkeypatch)
    partitions = 4
    everything = frozenset(range(partitions))
    port = free_port()

    def settings() -> BridgeSettings:
        # Events are recorded live here: a settle delay longer than a state write takes to
        # reach the other replica keeps it from re-publishing what a webhook just brought.
        return poller_settings(
            kafka_bootstrap,
            topic_prefix,
            f"http://127.0.0.1:{port}",
            kafka={"topic_partitions": partitions},
            poller={"settle_seconds": 3.0, "retire_grace_seconds": 2.0},
        )

    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(settings(), captured))
        b_started = time.monotonic()
        b = await stack.enter_async_context(replica(settings(), captured, wait_ready=False))

        async def split() -> bool:
            pa, pb = partitions_of(a), partitions_of(b)
            return bool(pa) and bool(pb) and pa | pb == everything and not pa & pb

        await wait_until(split, 30, lambda: f"{partitions_of(a)} {partitions_of(b)}")
        await b.wait_ready()
        joined = time.monotonic() - b_started
        owned_a, owned_b = partitions_of(a), partitions_of(b)
        # Webhooks go to b only; a learns its tickets from b's state records.
        async with Simulator(tickets=30, seed=41, rate=100.0, rest_port=port) as sim:
            sending = asyncio.create_task(
                sim.send_all(b.webhook_url, token=TOKEN, drop=0.2, duplicate=0.05, reorder_window=3)
            )

            async def some_recorded() -> bool:
                return sim.recorded_count >= len(sim.events) * 4 // 10

            await wait_until(some_recorded, 30, "40% of the events recorded")
            stop_at, stop_wall = time.monotonic(), time.time()
            await a.shutdown()
            a_stopped = time.monotonic()

            async def taken_over() -> bool:
                return partitions_of(b) == everything and b.tracking.sync.restored.is_set()

            await wait_until(taken_over, 30, lambda: f"b owns {partitions_of(b)}")
            takeover = time.monotonic() - stop_at
            sent = await sending
            census, _ = await wait_all_published(
                kafka_bootstrap, topic_prefix, sim.event_ids(), within=30
            )

            async def settled() -> bool:
                return b.tracking.poller.active == 0 and b.polls_in_flight == 0

            def still_active() -> str:
                live = [s for s in b.tracking.store.owned_tickets() if not s.retired]
                return f"{b.tracking.poller.active} active: {live}"

            await wait_until(settled, 30, still_active)
    census = await read_events(kafka_bootstrap, topic_prefix)
    await assert_state_knows(kafka_bootstrap, topic_prefix, census)
    # No loss. Duplicates are counted, not asserted: across replicas the contract is
    # at-least-once (the settle delay only makes a re-publish unlikely), see ARCHITECTURE.md.
    missing = census.missing(sim.event_ids())
    assert not missing, f"{len(missing)} events lost: {sorted(missing)[:10]}"
    assert_sources(census, sent.dropped)

    def part(ticket_id: int) -> int:
        return partition_for(ticket_id, partitions)

    # While both ran, each ticket was polled by the replica owning its partition only.
    phase1_a = {p.ticket_id for p in a.polls if p.started < stop_at}
    phase1_b = {p.ticket_id for p in b.polls if p.started < stop_at}
    assert {part(t) for t in phase1_a} <= owned_a
    assert {part(t) for t in phase1_b} <= owned_b
    assert not phase1_a & phase1_b
    # ... and every ticket announced well before the stop was polled by then.
    announced = {
        e.ticket_id for e in sim.events if e.event_id not in sent.dropped and e.at < stop_wall - 4
    }
    assert announced <= phase1_a | phase1_b, sorted(announced - phase1_a - phase1_b)
    assert phase1_a
    assert phase1_b
    # a polled nothing once stopped; b took a's tickets over.
    assert all(p.ended <= a_stopped for p in a.polls)
    after = {p.ticket_id for p in b.polls if p.started > stop_at + takeover}
    late_in_a = {e.ticket_id for e in sim.events if e.at > stop_wall + takeover + 1} & {
        t for t in sim.ticket_ids() if part(t) in owned_a
    }
    assert late_in_a, "no ticket of a's partitions was active after the stop"
    assert late_in_a <= after, sorted(late_in_a - after)
    filled_for_a = {
        i
        for i in sent.dropped
        if part(sim.event(i).ticket_id) in owned_a and sim.event(i).at > stop_wall
    }
    assert filled_for_a, "no lost webhook of a's tickets after the stop: nothing proven"
    report(
        "two replicas",
        events=len(sim.events),
        partitions=f"a={sorted(owned_a)} b={sorted(owned_b)}",
        group_split_s=round(joined, 2),
        takeover_s=round(takeover, 2),
        polls=f"a={len(a.polls)} b={len(b.polls)}",
        filled_by_b_for_a=len(filled_for_a),
        duplicates=len(census.duplicates()),
        total_s=round(time.monotonic() - started, 1),
    )


# -- 5. backfill ----------------------------------------------------------------------------


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`apizee-bridge ARGS` as a process (this loop keeps serving the simulator meanwhile)."""
    script = Path(sys.executable).with_name("apizee-bridge")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "bridge.cli"]
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def cli_env(bootstrap: str, prefix: str, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    env.update(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        BRIDGE_KAFKA_TOPIC_PREFIX=prefix,
        BRIDGE_KAFKA_TOPIC_PARTITIONS="4",
        BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR="1",
        BRIDGE_AUTH_TOKEN=TOKEN,
        BRIDGE_LOG_LEVEL="WARNING",
    )
    env.update(variables)
    return env


async def test_backfill_publishes_tickets_no_webhook_announced_once(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = capture_tracking(monkeypatch)
    async with Simulator(tickets=12, seed=51) as sim:
        settings = poller_settings(kafka_bootstrap, topic_prefix, sim.base_url)
        silent = sim.ticket_ids()[3:6]  # every webhook of these tickets is lost
        silent_ids = {e.event_id for e in sim.events if e.ticket_id in silent}
        heard = [e for e in sim.events if e.ticket_id not in silent]
        env = cli_env(
            kafka_bootstrap,
            topic_prefix,
            BRIDGE_APIZEE_BASE_URL=sim.base_url,
            BRIDGE_APIZEE_TOKEN=SIM_TOKEN,
        )
        tickets = [f"--ticket={t}" for t in silent]
        async with replica(settings, captured) as bridge:
            sent = await send(bridge.webhook_url, heard, drop=0.2, duplicate=0.05)
            await wait_all_published(
                kafka_bootstrap, topic_prefix, [e.event_id for e in heard], within=30
            )

            async def settled() -> bool:
                return bridge.tracking.poller.active == 0 and bridge.polls_in_flight == 0

            await wait_until(settled, 30, "poller retired every ticket it knows")
            census = await read_events(kafka_bootstrap, topic_prefix)
            # The poller never heard of them: nothing of theirs is published.
            assert not silent_ids & set(census.counts)
            assert not {p.ticket_id for p in bridge.polls} & set(silent)

            code, out, err = await run_cli(env, "backfill", *tickets)
            assert code == 0, (out, err)
            backfilled_at = time.monotonic()
            n = len(silent_ids)
            assert out.splitlines()[-1] == (
                f"backfill: 3 tickets, fetched {n}, published {n}, already present 0,"
                " dead-lettered 0, failed 0"
            ), out
            for t in silent:
                line = next(x for x in out.splitlines() if x.startswith(f"ticket {t}: "))
                assert line.endswith(", ok"), out
            census = await read_events(kafka_bootstrap, topic_prefix)
            assert_exactly_once(census, sim, sim.event_ids())
            assert_sources(census, silent_ids | sent.dropped)

            # The backfill handed them to the running replica, which polls them now.
            async def handed_over() -> bool:
                done = {p.ticket_id for p in bridge.polls if p.started > backfilled_at}
                return done >= set(silent)

            await wait_until(handed_over, 15, "the replica polls the backfilled tickets")

            # Again: everything is there already.
            code, out2, err = await run_cli(env, "backfill", *tickets)
            assert code == 0, (out2, err)
            assert out2.splitlines()[-1] == (
                f"backfill: 3 tickets, fetched {n}, published 0, already present {n},"
                " dead-lettered 0, failed 0"
            ), out2

            # A ticket Apizee does not know fails the run (the others are still done).
            code, out3, err = await run_cli(env, "backfill", tickets[0], "--ticket=999999")
            assert code == 1, (out3, err)
            lines = out3.splitlines()
            assert f"ticket {silent[0]}: fetched" in lines[0], out3
            assert lines[0].endswith(", ok"), out3
            assert lines[1].startswith("ticket 999999: fetched 0, published 0"), out3
            assert lines[1].endswith("FAILED (not_found)"), out3
            assert out3.splitlines()[-1].endswith("failed 1"), out3
            # ... and is not handed to the replicas to poll (no state record names it).
            state = await asyncio.to_thread(
                read_to_end, kafka_bootstrap, [f"{topic_prefix}.bridge-state"]
            )
            assert {r.key for r in state} >= {str(t).encode() for t in silent}
            assert b"999999" not in {r.key for r in state}

            # A token Apizee refuses fails every ticket.
            bad_token = {**env, "BRIDGE_APIZEE_TOKEN": "not-the-token"}
            code, out4, err = await run_cli(bad_token, "backfill", *tickets)
            assert code == 1, (out4, err)
            assert out4.count("FAILED (auth_failed)") == 3, out4

            # Without Apizee's URL there is nothing to backfill from: a configuration error.
            no_url = {k: v for k, v in env.items() if k != "BRIDGE_APIZEE_BASE_URL"}
            code, out5, err5 = await run_cli(no_url, "backfill", *tickets)
            assert code == 2, (out5, err5)
            assert "BRIDGE_APIZEE_BASE_URL" in err5
            assert out5 == ""
        census = await read_events(kafka_bootstrap, topic_prefix)
        assert_exactly_once(census, sim, sim.event_ids())
        report(
            "backfill",
            silent_tickets=len(silent),
            backfilled_events=n,
            first_run=out.splitlines()[-1],
            second_run=out2.splitlines()[-1],
            duplicates=len(census.duplicates()),
        )


# -- 6. metrics -----------------------------------------------------------------------------


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """An exposition, as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_label(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, label: str
) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample_name, labels), value in metrics.items():
        if sample_name == name:
            key = dict(labels)[label]
            out[key] = out.get(key, 0.0) + value
    return out


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return metrics[(name, frozenset())]


async def test_poller_metrics_follow_what_it_did(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = capture_tracking(monkeypatch)
    async with Simulator(tickets=20, seed=61) as sim:
        settings = poller_settings(kafka_bootstrap, topic_prefix, sim.base_url)
        async with replica(settings, captured) as bridge:
            before = scrape(await bridge.metrics_text())
            assert value(before, f"{M}state_restored") == 1
            restore = value(before, f"{M}state_restore_seconds")
            assert 0 < restore < 30
            sim.rest.reset_requests()
            active: list[float] = []

            async def watch_active() -> None:
                while True:
                    active.append(sample(f"{M}active_tickets"))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch_active())
            sent = await sim.send_all(bridge.webhook_url, token=TOKEN, drop=0.3)
            await wait_all_published(kafka_bootstrap, topic_prefix, sim.event_ids(), within=30)

            async def settled() -> bool:
                return bridge.tracking.poller.active == 0 and bridge.polls_in_flight == 0

            await wait_until(settled, 30, "every ticket retired")

            # The gauges are set by the poller's loop (at least once a second).
            async def idle() -> bool:
                return sample(f"{M}active_tickets") == 0

            await wait_until(idle, 5, "active_tickets back to 0")
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # Written every flush interval: let one pass after the last change.
            await asyncio.sleep(2 * settings.poller.state_flush_seconds)
            after = scrape(await bridge.metrics_text())
            store_size = len(bridge.tracking.store)
        census = await read_events(kafka_bootstrap, topic_prefix)
        assert_exactly_once(census, sim, sim.event_ids())

        def grew(name: str, label: str) -> dict[str, float]:
            return delta(by_label(before, name, label), by_label(after, name, label))

        # Gaps: found = filled = POLLER records, per category.
        poller_by_category: dict[str, float] = {}
        for r in census.records:
            if r.headers["source"] == b"POLLER":
                category = r.topic.removeprefix(f"{topic_prefix}.")
                poller_by_category[category] = poller_by_category.get(category, 0) + 1
        assert len(poller_by_category) >= 3  # several categories were filled
        assert grew(f"{M}gaps_found_total", "category") == poller_by_category
        assert grew(f"{M}gaps_filled_total", "category") == poller_by_category
        published = grew(f"{M}events_published_total", "source")
        sources = census.by_source()
        assert published == {k: float(len(v)) for k, v in sources.items()}
        assert sources["POLLER"] >= sent.dropped

        # Polls: one ok per poll the poller made; requests as the simulator saw them.
        polls = grew(f"{M}polls_total", "outcome")
        assert polls == {"ok": float(len(bridge.polls))}
        assert {p.ticket_id for p in bridge.polls} == set(sim.ticket_ids())
        assert grew(f"{M}apizee_requests_total", "status") == {"200": float(sim.rest.stats().total)}
        assert sim.rest.stats().by_status == {200: len(bridge.polls)}

        # Active tickets rose while polling and fell back; every ticket retired after its end.
        assert 1 <= max(active) <= len(sim.tickets)
        assert grew(f"{M}tickets_retired_total", "reason") == {"terminal": float(len(sim.tickets))}
        # The state store: written, and the gauge counts what it holds.
        writes = value(after, f"{M}state_writes_total") - value(before, f"{M}state_writes_total")
        assert writes >= len(sim.tickets)
        assert value(after, f"{M}state_tickets") == store_size == len(sim.tickets)
        report(
            "metrics",
            gaps_filled=poller_by_category,
            polls=polls,
            max_active_tickets=max(active),
            state_writes=writes,
            state_tickets=value(after, f"{M}state_tickets"),
            restore_s=restore,
        )
