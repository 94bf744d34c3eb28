"""Wires the stages together and runs them: the only module that knows the whole bridge.

Resources are acquired and released in one async context manager; the public and admin
servers run on their own ports; SIGTERM drains in-flight requests, then flushes Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from bridge.admission import LINGER_SECONDS, PublicRunner
from bridge.apizee import ApizeeClient
from bridge.auth import Authenticator
from bridge.codec import Codec
from bridge.config import BridgeSettings, SchemaSettings
from bridge.dedupe import RecentIds
from bridge.errors import SchemaRejectedError, TransactionsUnavailableError
from bridge.exactly_once import CommitWatch, ExactlyOnce, IntakeSink
from bridge.ingress import AccessLogger, Ingress, build_admin_app, build_public_app
from bridge.logs import configure_logging
from bridge.models import CanonicalEvent
from bridge.poller import Poller, PollResult
from bridge.publisher import Publisher, group_connection_kwargs, idempotence_refused
from bridge.registry import SchemaRegistration, SchemaToRegister, subject_name
from bridge.state import StateStore, StateSync

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Listening:
    """Where a started bridge listens (ports resolved when 0 was asked for)."""

    public_port: int
    admin_port: int
    webhook_url: str


class Tracking:
    """The ingress's view of the ticket state and the poller (the ingress's Tracker)."""

    def __init__(self, store: StateStore, sync: StateSync, poller: Poller) -> None:
        self.store = store
        self.sync = sync
        self.poller = poller

    @property
    def not_ready_reason(self) -> str | None:
        if self.sync.problem is not None:
            return self.sync.problem
        return None if self.sync.restored.is_set() else "ticket state not restored yet"

    def seen(self, ticket_id: int, event_id: int) -> bool:
        return self.store.seen(ticket_id, event_id)

    def published(self, event: CanonicalEvent) -> None:
        self.store.record(event.ticket_id, event.event_id, event.event_type, event.occurred_at_ms)
        self.poller.observe(event.ticket_id, event.event_type)


def polling_enabled(settings: BridgeSettings) -> bool:
    return settings.poller.enabled and settings.apizee.base_url is not None


def _state(
    settings: BridgeSettings, publisher: Publisher, *, in_group: bool
) -> tuple[StateStore, StateSync]:
    """The ticket state and its sync with the state topic, written through `publisher`.

    In the group (a serving replica) the sync joins only once the publisher created the
    topic; out of it (backfill) the caller restores every partition itself.
    """
    store = StateStore(settings.poller.max_ids_per_ticket)
    sync = StateSync(
        store,
        publisher.topics.state,
        settings.poller,
        publisher.publish_state,
        group_connection_kwargs(settings.kafka),
        topic_ready=publisher.wait_ready if in_group else None,
    )
    return store, sync


@contextlib.asynccontextmanager
async def tracking(
    settings: BridgeSettings,
    publisher: Publisher,
    dedupe: RecentIds,
    sink: IntakeSink | None = None,
) -> AsyncIterator[Tracking]:
    """Ticket state (restored from and written to the state topic) and the poller."""
    client = ApizeeClient(settings.apizee)
    store, sync = _state(settings, publisher, in_group=True)
    poller = Poller(settings.poller, client, publisher, store, dedupe, sink=sink)
    store.on_owned_change = poller.reschedule_owned
    store.on_owned_record = poller.track
    await client.start()
    try:
        await sync.start()
        try:
            await poller.start(sync)
            try:
                yield Tracking(store, sync, poller)
            finally:
                await poller.stop()
        finally:
            # Writes what is left and leaves the group, so another replica takes over now.
            await sync.stop()
    finally:
        await client.close()


def schemas_to_register(
    settings: SchemaSettings, codec: Codec, publisher: Publisher
) -> list[SchemaToRegister]:
    """Every schema of `codec` under its subject: the topic its events go to and the record's
    full name, named by the configured strategy."""
    return [
        SchemaToRegister(
            event_type=event_type,
            subject=subject_name(
                settings.subject_strategy, publisher.topic_for(event_type), writer.full_name
            ),
            schema_text=json.dumps(writer.schema, separators=(",", ":"), ensure_ascii=False),
        )
        for event_type, writer in codec.writers.items()
    ]


@contextlib.asynccontextmanager
async def schema_registration(
    settings: SchemaSettings, codec: Codec, publisher: Publisher
) -> AsyncIterator[SchemaRegistration]:
    """Registry mode: the schemas registered in the background; once their ids are known the
    publisher frames events the Confluent way."""

    def registered(ids: Mapping[str, int]) -> None:
        publisher.use_codec(Codec(schema_ids=ids))

    registration = SchemaRegistration(
        settings, schemas_to_register(settings, codec, publisher), registered
    )
    await registration.start()
    try:
        yield registration
    finally:
        await registration.stop()


@contextlib.asynccontextmanager
async def exactly_once_engine(
    settings: BridgeSettings, publisher: Publisher
) -> AsyncIterator[ExactlyOnce]:
    """exactly_once: this replica's member of the intake group (bridge/exactly_once.py)."""
    engine = ExactlyOnce(settings, publisher)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@contextlib.asynccontextmanager
async def bridge_resources(settings: BridgeSettings) -> AsyncIterator[Ingress]:
    """Create the producer and the shared state; close them in reverse on exit."""
    codec = Codec()
    dedupe = RecentIds(settings.dedupe.window_seconds, settings.dedupe.max_entries)
    polling = polling_enabled(settings)
    registry_mode = settings.schema.registry_url is not None
    exact = settings.delivery.guarantee == "exactly_once"
    publisher = Publisher(
        settings.kafka,
        codec,
        max_body_bytes=settings.ingress.max_body_bytes,
        state_topic=polling,
        intake_topics=exact,
        schemas_pending=registry_mode,
    )
    await publisher.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            registration = None
            if registry_mode:
                registration = await stack.enter_async_context(
                    schema_registration(settings.schema, codec, publisher)
                )
            engine = None
            if exact:
                engine = await stack.enter_async_context(exactly_once_engine(settings, publisher))
            sink = None if engine is None else engine.sink
            tracker = None
            if polling:
                tracker = await stack.enter_async_context(
                    tracking(settings, publisher, dedupe, sink)
                )
            else:
                log.info("poller_disabled", reason="BRIDGE_APIZEE_BASE_URL not set or disabled")
            yield Ingress(
                settings=settings,
                publisher=publisher,
                authenticator=Authenticator(settings.auth),
                dedupe=dedupe,
                tracker=tracker,
                schemas=registration,
                sink=sink,
                delivery=engine,
            )
    finally:
        await publisher.stop()


async def backfill(
    settings: BridgeSettings,
    ticket_ids: list[int],
    *,
    ready_timeout: float = 30.0,
) -> list[PollResult]:
    """One-shot: publish what is missing of these tickets, then hand them to the pollers.

    Reads the whole state topic (without joining the replicas' group), fetches each ticket's
    events, publishes every listed event the state lacks (no settle delay: the events are
    old), and writes the tickets' state so that the running replicas keep polling them.
    """
    # Said at once: the publisher would retry its connection until the ready timeout.
    if (refused := await idempotence_refused(settings.kafka)) is not None:
        raise BackfillError(refused)
    codec = Codec()
    dedupe = RecentIds(settings.dedupe.window_seconds, settings.dedupe.max_entries)
    registry_mode = settings.schema.registry_url is not None
    exact = settings.delivery.guarantee == "exactly_once"
    publisher = Publisher(
        settings.kafka,
        codec,
        max_body_bytes=settings.ingress.max_body_bytes,
        state_topic=True,
        intake_topics=exact,
        schemas_pending=registry_mode,
    )
    await publisher.start()
    stack = contextlib.AsyncExitStack()
    registration: SchemaRegistration | None = None
    try:
        try:
            async with asyncio.timeout(ready_timeout):
                await publisher.wait_ready()
                if registry_mode:
                    registration = await stack.enter_async_context(
                        schema_registration(settings.schema, codec, publisher)
                    )
                    await registration.finished
        except TimeoutError:
            reason = publisher.not_ready_reason
            if reason is None and registration is not None:
                reason = registration.not_ready_reason
            raise BackfillError(f"not ready within {ready_timeout:g}s: {reason}") from None
        except SchemaRejectedError as exc:
            raise BackfillError(str(exc)) from None
        store, sync = _state(settings, publisher, in_group=False)
        await sync.restore_all(await publisher.partition_count(publisher.topics.state))
        sink = None
        if exact:
            # Through the intake like the webhooks: the running replicas' owners write each
            # event once; a gap is done when its transaction committed.
            watch = CommitWatch(settings, publisher.topics.intake)
            await watch.start()
            stack.push_async_callback(watch.stop)
            sink = IntakeSink(publisher, watch)
        async with ApizeeClient(settings.apizee) as client:
            poller = Poller(settings.poller, client, publisher, store, dedupe, sink=sink)
            semaphore = asyncio.Semaphore(settings.poller.concurrency)

            async def one(ticket_id: int) -> PollResult:
                async with semaphore:
                    result = await poller.poll_ticket(ticket_id, settle_seconds=0)
                    if result.error is None:
                        # Handed to the replicas' pollers only once Apizee listed it: a
                        # mistyped id (404) would otherwise be polled until the idle TTL.
                        store.touch(ticket_id)
                    return result

            results = await asyncio.gather(*(one(t) for t in ticket_ids))
        await sync.flush()
        return list(results)
    finally:
        await stack.aclose()
        await publisher.stop()


class BackfillError(Exception):
    """The backfill could not run at all (as opposed to a ticket that failed)."""


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
        public = PublicRunner(
            build_public_app(ingress),
            max_connections=ingress_settings.max_connections,
            retry_after_seconds=ingress_settings.retry_after_seconds,
            handle_signals=False,
            access_log=logging.getLogger("bridge.access") if ingress_settings.access_log else None,
            access_log_class=AccessLogger,
            shutdown_timeout=ingress_settings.shutdown_grace_seconds,
            # Until a request's headers are complete, aiohttp's only timer is the keep-alive
            # timeout (default 3630 s, armed on connect, not reset by incoming bytes): it is
            # what bounds slow headers and silent connections (slowloris).
            keepalive_timeout=ingress_settings.request_timeout_seconds,
            # Bodies are read as sent; the handler refuses any Content-Encoding with 415.
            auto_decompress=False,
            # A request refused before its body was read (401, 413, 503): what the sender
            # still sends is discarded for this long, then the connection closes.
            lingering_time=LINGER_SECONDS,
        )
        ingress.connections = lambda: public.connections
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
            await _until_stopped(stop, ingress.schemas, ingress.delivery)
            log.info("shutting_down", grace_seconds=ingress_settings.shutdown_grace_seconds)
            ingress.shutting_down = True
        finally:
            await public.cleanup()
            await admin.cleanup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    log.info("stopped")


async def _until_stopped(stop: asyncio.Event, schemas: object, delivery: object) -> None:
    """Until `stop` is set; raises SchemaRejectedError at once if the registry refused a
    schema, TransactionsUnavailableError if exactly_once cannot run (the bridge must not run
    on: it could never publish, or not as promised)."""
    watched: set[asyncio.Future[Any]] = set()
    if isinstance(schemas, SchemaRegistration):
        watched.add(schemas.finished)
    if isinstance(delivery, ExactlyOnce):
        watched.add(delivery.fatal)
    if not watched:
        await stop.wait()
        return
    stopping = asyncio.create_task(stop.wait())
    try:
        pending: set[asyncio.Future[Any]] = {stopping, *watched}
        while not stopping.done():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done - {stopping}:
                if not future.cancelled():
                    future.result()  # raises what made it fatal
    finally:
        stopping.cancel()


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


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

    try:
        uvloop.run(serve(settings, reuse_port=True))
    except (SchemaRejectedError, TransactionsUnavailableError):
        # Logged once where it happened; no traceback on top of that line.
        raise SystemExit(2) from None


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
