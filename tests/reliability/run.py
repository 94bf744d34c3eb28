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
    rest_outage: float,
    logs: Path,
    only: set[str] | None,
) -> list[Row]:
    rows: list[Row] = []
    stamp = f"rel.{int(time.time())}"

    def wanted(n: str) -> bool:
        return only is None or n in only

    def show(row: Row) -> None:
        rows.append(row)
        print(table([row]).splitlines()[1], flush=True)

    if wanted("1"):
        with KafkaCluster(nodes=1, workdir=logs / "kafka-1") as own:
            show(await broker_restart(own, f"{stamp}.1", logs, size))
    with KafkaCluster(nodes=3, workdir=logs / "kafka-3") as kafka3:
        boot = kafka3.bootstrap_servers
        outage = replace(size, outage_seconds=rest_outage)
        steps: list[tuple[str, Callable[[], Awaitable[Row]]]] = [
            ("2", lambda: bridge_signal(boot, f"{stamp}.2", logs, size, signal.SIGTERM)),
            ("3", lambda: bridge_signal(boot, f"{stamp}.3", logs, size, signal.SIGKILL)),
            ("4", lambda: rest_storm(boot, f"{stamp}.4", logs, outage)),
            ("5", lambda: replica_killed(boot, f"{stamp}.5", logs, size)),
            ("7", lambda: cluster.leader_kill(kafka3, f"{stamp}.7", logs, load)),
            ("8", lambda: cluster.rolling_restart(kafka3, f"{stamp}.8", logs, load)),
        ]
        for name, step in steps:
            if wanted(name):
                show(await step())
        if wanted("9"):
            show((await cluster.isr_outage(kafka3, f"{stamp}.9", logs, load)).row)
        if wanted("10"):
            show((await cluster.leader_frozen(kafka3, f"{stamp}.10", logs)).row)
    rows.append(SLOWLORIS_ROW)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("ci", "full"), default="full")
    parser.add_argument("--only", nargs="*", help="scenario numbers, e.g. 1 7")
    parser.add_argument("--logs", type=Path, default=None, help="keep bridge/broker logs here")
    args = parser.parse_args(argv)
    full = args.size == "full"
    size, load = (FULL, cluster.FULL) if full else (CI, cluster.CI)
    rest_outage = FULL_REST_OUTAGE if full else CI.outage_seconds
    only = set(args.only) if args.only else None
    with contextlib.ExitStack() as stack:
        logs = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logs.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        rows = asyncio.run(run_all(size, load, rest_outage, logs, only))
    print()
    print(f"reliability ({args.size}: {size.tickets} tickets, load {size.load_seconds:g}s,"
          f" broker down {size.outage_seconds:g}s, REST outage {rest_outage:g}s;"
          f" {load.webhooks} webhooks at concurrency {load.concurrency} for 7-9;"
          f" {time.monotonic() - started:.0f}s in all)")  # fmt: skip
    print(table(rows))
    return 1 if any(r.missing for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
