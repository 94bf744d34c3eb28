"""`make reliability`: every scenario at full size on Apache Kafka, and the table.

Scenario 1 kills the only node of a single-node cluster; the others share a 3-node cluster
(topics at replication factor 3, min.insync.replicas=2), where 7-10 kill, restart or freeze
nodes under load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from bridge.devtools.devbroker import KafkaCluster
from tests.reliability import cluster
from tests.reliability import exactly_once as eos
from tests.reliability.scenarios import (
    CI,
    FULL,
    FULL_REST_OUTAGE,
    SLOWLORIS_ROW,
    Row,
    Size,
    bridge_signal,
    broker_restart,
    replica_killed,
    rest_storm,
    table,
)


async def run_all(
    size: Size,
    load: cluster.LoadSize,
    eos_size: eos.Size,
    rest_outage: float,
    logs: Path,
    only: set[str] | None,
    guarantees: list[str],
) -> list[Row]:
    """Scenarios 1-10 once per delivery guarantee; E1-E5 (exactly_once only)."""
    rows: list[Row] = []
    stamp = f"rel.{int(time.time())}"
    TERM, KILL = signal.SIGTERM, signal.SIGKILL

    def wanted(n: str) -> bool:
        return only is None or n in only

    def show(row: Row) -> None:
        rows.append(row)
        print(table([row]).splitlines()[1], flush=True)

    for g in guarantees:
        if wanted("1"):
            with KafkaCluster(nodes=1, workdir=logs / f"kafka-1-{g}") as own:
                show(await broker_restart(own, f"{stamp}.{g}.1", logs, size, g))
    with KafkaCluster(nodes=3, workdir=logs / "kafka-3") as kafka3:
        boot = kafka3.bootstrap_servers
        outage = replace(size, outage_seconds=rest_outage)
        for g in guarantees:
            p = f"{stamp}.{g}"
            steps: list[tuple[str, Callable[[], Awaitable[Row]]]] = [
                ("2", lambda p=p, g=g: bridge_signal(boot, f"{p}.2", logs, size, TERM, g)),
                ("3", lambda p=p, g=g: bridge_signal(boot, f"{p}.3", logs, size, KILL, g)),
                ("4", lambda p=p, g=g: rest_storm(boot, f"{p}.4", logs, outage, g)),
                ("5", lambda p=p, g=g: replica_killed(boot, f"{p}.5", logs, size, g)),
                ("7", lambda p=p, g=g: cluster.leader_kill(kafka3, f"{p}.7", logs, load, g)),
                ("8", lambda p=p, g=g: cluster.rolling_restart(kafka3, f"{p}.8", logs, load, g)),
            ]
            for name, step in steps:
                if wanted(name):
                    show(await step())
            if wanted("9"):
                outage9 = await cluster.isr_outage(kafka3, f"{p}.9", logs, load, guarantee=g)
                show(outage9.row)
            if wanted("10"):
                variables = {"BRIDGE_DELIVERY_GUARANTEE": g}
                frozen = await cluster.leader_frozen(kafka3, f"{p}.10", logs, **variables)
                frozen.row.guarantee = g
                show(frozen.row)
        if "exactly_once" in guarantees:
            eos_steps: list[tuple[str, Callable[[], Awaitable[Row]]]] = [
                ("E1", lambda: eos.same_webhook_two_replicas(boot, f"{stamp}.e1", logs, eos_size)),
                ("E2", lambda: eos.replica_killed(boot, f"{stamp}.e2", logs, eos_size)),
                ("E3", lambda: eos.zombie(boot, f"{stamp}.e3", logs, eos_size)),
                ("E4", lambda: eos.scaled(boot, f"{stamp}.e4", logs, eos_size)),
            ]
            for name, step in eos_steps:
                if wanted(name):
                    show(await step())
    if "exactly_once" in guarantees and wanted("E5"):
        # Its own cluster: brokers with the request.timeout.ms docs/exactly-once.md advises.
        with KafkaCluster(
            nodes=3,
            workdir=logs / "kafka-3-e5",
            broker_config=cluster.RECOMMENDED_FOR_EXACTLY_ONCE,
        ) as kafka3e:
            variables = {"BRIDGE_DELIVERY_GUARANTEE": "exactly_once"}
            coordinator = await cluster.leader_frozen(
                kafka3e, f"{stamp}.e5", logs, coordinator=True, **variables
            )
            coordinator.row.guarantee = "exactly_once"
            coordinator.row.note += "; brokers' request.timeout.ms=5000"
            show(coordinator.row)
    rows.append(SLOWLORIS_ROW)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("ci", "full"), default="full")
    parser.add_argument("--only", nargs="*", help="scenario numbers, e.g. 1 7 E2")
    parser.add_argument(
        "--guarantee",
        choices=("at_least_once", "exactly_once", "both"),
        default="both",
        help="BRIDGE_DELIVERY_GUARANTEE of the bridges (both: every scenario twice)",
    )
    parser.add_argument("--logs", type=Path, default=None, help="keep bridge/broker logs here")
    args = parser.parse_args(argv)
    full = args.size == "full"
    size, load = (FULL, cluster.FULL) if full else (CI, cluster.CI)
    eos_size = eos.FULL if full else eos.CI
    guarantees = ["at_least_once", "exactly_once"] if args.guarantee == "both" else [args.guarantee]
    rest_outage = FULL_REST_OUTAGE if full else CI.outage_seconds
    only = set(args.only) if args.only else None
    with contextlib.ExitStack() as stack:
        logs = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logs.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        rows = asyncio.run(run_all(size, load, eos_size, rest_outage, logs, only, guarantees))
    print()
    print(f"reliability ({args.size}: {size.tickets} tickets, load {size.load_seconds:g}s,"
          f" broker down {size.outage_seconds:g}s, REST outage {rest_outage:g}s;"
          f" {load.webhooks} webhooks at concurrency {load.concurrency} for 7-9;"
          f" {time.monotonic() - started:.0f}s in all)")  # fmt: skip
    print(table(rows))
    # exactly_once promises no duplicate either.
    failed = [r for r in rows if r.missing or (r.guarantee == "exactly_once" and r.duplicates)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
