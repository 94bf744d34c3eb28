"""Wires the stages together and runs them: the only module that knows the whole bridge.

Resources are acquired and released in one async context manager; the public and admin
servers run on their own ports; SIGTERM drains in-flight requests, then flushes Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from bridge.auth import Authenticator
from bridge.codec import Codec
from bridge.config import BridgeSettings
from bridge.dedupe import RecentIds
from bridge.ingress import Ingress, build_admin_app, build_public_app
from bridge.logs import configure_logging
from bridge.publisher import Publisher

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Listening:
    """Where a started bridge listens (ports resolved when 0 was asked for)."""

    public_port: int
    admin_port: int
    webhook_url: str


@contextlib.asynccontextmanager
async def bridge_resources(settings: BridgeSettings) -> AsyncIterator[Ingress]:
    """Create the producer and the shared state; close them in reverse on exit."""
    codec = Codec()
    dedupe = RecentIds(settings.dedupe.window_seconds, settings.dedupe.max_entries)
    publisher = Publisher(settings.kafka, codec, max_body_bytes=settings.ingress.max_body_bytes)
    await publisher.start()
    try:
        yield Ingress(
            settings=settings,
            publisher=publisher,
            authenticator=Authenticator(settings.auth),
            dedupe=dedupe,
        )
    finally:
        await publisher.stop()


def _bound_port(site: web.TCPSite) -> int:
    # aiohttp keeps the listening server here; before 3.12 its public API has no bound port.
    # Not an asyncio.base_events.Server under uvloop, but both kinds have `sockets`.
    server: Any = site._server
    port: int = server.sockets[0].getsockname()[1]
    return port


async def serve(
    settings: BridgeSettings,
    *,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[Listening], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Run the bridge until `stop` is set or SIGTERM/SIGINT arrives, then shut down cleanly.

    Shutdown order: readiness goes false, the public port stops accepting, in-flight
    webhooks finish (up to the grace period), the producer flushes, the admin port closes.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    ingress_settings = settings.ingress
    async with bridge_resources(settings) as ingress:
        public = web.AppRunner(
            build_public_app(ingress),
            handle_signals=False,
            access_log=log if ingress_settings.access_log else None,
            shutdown_timeout=ingress_settings.shutdown_grace_seconds,
        )
        admin = web.AppRunner(build_admin_app(ingress), handle_signals=False, access_log=None)
        await public.setup()
        await admin.setup()
        try:
            admin_site = web.TCPSite(
                admin, settings.admin.host, settings.admin.port, reuse_port=reuse_port
            )
            await admin_site.start()
            public_site = web.TCPSite(
                public, ingress_settings.host, ingress_settings.port, reuse_port=reuse_port
            )
            await public_site.start()
            listening = Listening(
                public_port=_bound_port(public_site),
                admin_port=_bound_port(admin_site),
                webhook_url=(
                    f"http://{_display_host(ingress_settings.host)}:"
                    f"{_bound_port(public_site)}{ingress_settings.path}"
                ),
            )
            log.info(
                "listening",
                webhook_url=listening.webhook_url,
                admin_port=listening.admin_port,
                auth=list(ingress.authenticator.methods) or ["none (insecure)"],
                pid=os.getpid(),
            )
            if on_listening is not None:
                on_listening(listening)
            await stop.wait()
            log.info("shutting_down", grace_seconds=ingress_settings.shutdown_grace_seconds)
            ingress.shutting_down = True
        finally:
            await public.cleanup()
            await admin.cleanup()
    log.info("stopped")


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104


def run(settings: BridgeSettings) -> None:
    """Run in this process (one worker); uvloop when available."""
    configure_logging(settings.log.level, settings.log.format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


def _worker_main(settings: BridgeSettings) -> None:
    configure_logging(settings.log.level, settings.log.format)
    import uvloop

    uvloop.run(serve(settings, reuse_port=True))


def run_workers(settings: BridgeSettings, workers: int) -> int:
    """N processes sharing the ports (SO_REUSEPORT); the kernel spreads connections.

    Metrics of all workers are merged through prometheus-client's multiprocess directory,
    which must be set before any worker imports prometheus_client (hence "spawn").
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SystemExit("--workers > 1 needs SO_REUSEPORT (Linux)")
    configure_logging(settings.log.level, settings.log.format)
    with tempfile.TemporaryDirectory(prefix="apizee-bridge-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        context = multiprocessing.get_context("spawn")
        processes: list[Any] = [
            context.Process(target=_worker_main, args=(settings,), name=f"worker-{n}")
            for n in range(workers)
        ]
        for process in processes:
            process.start()

        def forward(signum: int, _frame: object) -> None:
            for process in processes:
                if process.is_alive() and process.pid is not None:
                    os.kill(process.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        log.info("workers_started", workers=workers, pids=[p.pid for p in processes])
        for process in processes:
            process.join()
        codes = [p.exitcode for p in processes]
    return 0 if all(c == 0 for c in codes) else 1
