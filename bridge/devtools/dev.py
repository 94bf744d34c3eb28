"""`apizee-bridge dev`, what `make run` runs: a local broker (unless one is configured: Apache
Kafka when Java and `make kafka`'s jars are there, else tansu), the bridge with a generated
token, a console consumer printing each event as it lands in Kafka, optionally the test schema
registry (--registry), and (unless turned off or a real Apizee is configured) a simulated Apizee
in the same process: its REST API for the poller, and its webhooks sent to the bridge with some
dropped on purpose, so that events flow and the poller can be seen filling the gaps.

The session's coordinates go to `<run dir>/env` (default `.run/env`), sourceable, for the
operator commands and consumer examples the banner prints; the file goes when the session does.

Dev tooling: the banner prints the session's token on purpose; nothing here runs in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, Literal

import structlog
from aiohttp import ClientError, ClientSession, ClientTimeout

from bridge.app import Listening, serve
from bridge.auth import sign
from bridge.commands.console import ConsoleConsumer, event_decoder
from bridge.config import (
    AdminSettings,
    BridgeSettings,
    ConfigError,
    IngressSettings,
    KafkaSettings,
    env_name,
    load_settings,
)
from bridge.devtools.devbroker import DevBrokerError, KafkaCluster, TansuBroker
from bridge.devtools.devbroker._local import java_executable
from bridge.devtools.devbroker.kafka import kafka_libs
from bridge.devtools.devregistry import RegistryServer, registry_jar
from bridge.devtools.simulator import REST_PATH, SimEvent, Simulator, SimulatorConfig, WebhookConfig
from bridge.errors import BridgeError
from bridge.logs import configure_logging
from bridge.publisher import TopicNames

log = structlog.get_logger(__name__)

# The "Example Payload" of the conversationevent.create webhook in Apizee's Session Events API
# (tests/fixtures/seed_webhook_example.json), embedded: the package may be installed without
# its tests.
SEED_WEBHOOK: Final = (
    b'{"event":"create","time":1749581447,"object":"conversationevent","objectId":1266,'
    b'"props":{"eventType":"media.OCRDone","eventCode":41,"conversationId":548,"ticketId":361,'
    b'"text":"text captured by OCR"}}'
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2  # as `apizee-bridge run` (bridge.cli.EXIT_CONFIG)

_LOOPBACK: Final = "127.0.0.1"
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared, not bound
_READY_TIMEOUT: Final = 20.0
_CONSUMER_STOP_SECONDS: Final = 2.0

# The simulated Apizee: a handful of sessions at a pace one can read, a fifth of their webhooks
# lost on the way, and poller timings short enough to see each gap filled within seconds.
SIMULATOR_ENV: Final = "BRIDGE_DEV_SIMULATOR"  # false/0/no/off: as --no-simulator
SIM_TICKETS: Final = 10
SIM_RATE: Final = 2.0  # events recorded per second
SIM_DROP: Final = 0.2  # share of webhooks never sent
SIM_FIRST_TICKET_ID: Final = 362  # the seed example's ticket 361 is served apart
DEV_POLLER: Final[dict[str, float]] = {
    "interval_seconds": 5.0,
    "settle_seconds": 3.0,
    "terminal_poll_delay_seconds": 4.0,
    "retire_grace_seconds": 20.0,
}
# The seed example as the simulated Apizee lists it, so that the poller, once the banner's
# curl has named ticket 361, finds the event there instead of a 404 on every poll.
SEED_EVENT: Final = SimEvent(
    event_id=1266,
    event_type="media.OCRDone",
    event_code=41,
    ticket_id=361,
    conversation_id=548,
    at=1749581447.0,
    attributes={"text": "text captured by OCR"},
)


# Where the session keeps what it writes (the env file, Kafka's data, the servers' logs).
RUN_DIR_ENV: Final = "BRIDGE_DEV_RUN_DIR"  # as --run-dir
DEFAULT_RUN_DIR: Final = Path(".run")
ENV_FILE: Final = "env"
# Set by the env file: the variables it exported. A shell that sourced it and then runs
# `make run` again would otherwise point the new session at the old one's broker and Apizee.
SESSION_ENV: Final = "BRIDGE_DEV_SESSION"
# Where this session's bridge listens, for hand-made curls (no setting of the bridge's).
WEBHOOK_URL_ENV: Final = "BRIDGE_DEV_WEBHOOK_URL"
ADMIN_URL_ENV: Final = "BRIDGE_DEV_ADMIN_URL"
# Which local broker: kafka, tansu, or auto (Apache Kafka when it can run, else tansu).
BROKER_ENV: Final = "BRIDGE_DEV_BROKER"  # as --broker
BrokerKind = Literal["kafka", "tansu"]
BROKER_KINDS: Final[tuple[BrokerKind, ...]] = ("kafka", "tansu")
# What a newcomer would try on tansu and find broken (tansu.py says why).
TANSU_LIMITS: Final = (
    "no transactions, no SASL, the Java consumer kit cannot connect, and `check` skips the"
    " authorized-operations checks"
)
_KAFKA_HEAP: Final = "512m"
# The checkout `apizee-bridge dev` runs from (an editable install): the consumer examples
# the banner offers live there.
_REPO: Final = Path(__file__).resolve().parents[2]
PY_EXAMPLE: Final = Path("consumers/python/examples/print_events.py")
JAVA_KIT: Final = Path("consumers/java")
JAVA_TIMELINE: Final = "com.apizee.sessionevents.kafka.examples.TicketTimeline"


class DevModeError(BridgeError):
    """Dev mode cannot start; the message says what to change."""


@dataclass(frozen=True, slots=True)
class DevOptions:
    """The command line of `apizee-bridge dev` (and the BRIDGE_DEV_* variables)."""

    simulator: bool = True
    registry: bool = False
    broker: BrokerKind | None = None  # None: BRIDGE_DEV_BROKER, else auto
    run_dir: Path | None = None  # None: BRIDGE_DEV_RUN_DIR, else .run


def _say(text: str = "") -> None:
    # The banner and the consumer lines are the interface of dev mode: stdout, unbuffered, so
    # that a pipe (or a test) sees each line as it is printed. Logs go to stderr.
    print(text, flush=True)


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """What dev mode decided before starting anything."""

    settings: BridgeSettings  # the user's settings; the broker's address is filled in later
    overrides: dict[str, dict[str, Any]]
    generated_token: str | None
    local_broker: bool
    # Sections ("ingress", "admin") whose default port was busy, with that port.
    busy_defaults: dict[str, int] = field(default_factory=dict)
    # The simulated Apizee to run (its REST port is the kernel's pick: the poller's base URL
    # is filled in once it listens); None with --no-simulator or BRIDGE_APIZEE_BASE_URL set.
    simulator: SimulatorConfig | None = None


def _user_settings() -> tuple[BridgeSettings, str | None]:
    """The user's settings; with a generated token when they configure no authentication."""
    try:
        return load_settings(), None
    except ConfigError as exc:
        # config names the "no method configured" problem BRIDGE_AUTH_*; any other problem
        # is the user's to fix, and is reported without that line once the token is in.
        no_method = env_name("auth", "*") + ":"
        if not any(line.startswith(no_method) for line in str(exc).splitlines()):
            raise
    token = secrets.token_urlsafe(24)
    return load_settings(auth={"token": token}), token


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As asyncio's create_server does: a port in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))  # noqa: S104
        except OSError:
            return False
    return True


def simulator_wanted(flag_off: bool = False) -> bool:
    """Whether dev mode runs the simulated Apizee: not with --no-simulator or
    BRIDGE_DEV_SIMULATOR=false (nor, decided later, with BRIDGE_APIZEE_BASE_URL set)."""
    if flag_off:
        return False
    raw = os.environ.get(SIMULATOR_ENV, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise DevModeError(f"{SIMULATOR_ENV}={raw!r}: expected true or false")


def _simulator_config(local_broker: bool) -> SimulatorConfig:
    return SimulatorConfig(
        tickets=SIM_TICKETS,
        rate=SIM_RATE,
        first_ticket_id=SIM_FIRST_TICKET_ID,
        # The local broker keeps nothing: short ids. A cluster keeps the ticket state of past
        # sessions, whose ids would read as already published: start above them.
        first_event_id=56_000 if local_broker else time.time_ns() // 1_000_000,
        rest_token=secrets.token_urlsafe(16),
    )


def _plan(simulate: bool = True) -> _Plan:
    settings, token = _user_settings()
    overrides: dict[str, dict[str, Any]] = {}
    busy_defaults: dict[str, int] = {}
    if token is not None:
        overrides["auth"] = {"token": token}
    local_broker = "bootstrap_servers" not in settings.kafka.model_fields_set
    simulator = None
    if simulate and settings.apizee.base_url is None:
        simulator = _simulator_config(local_broker)
        overrides["apizee"] = {"token": simulator.rest_token, "token_file": None}
        # Short timings, unless the user chose their own.
        poller = {
            name: value
            for name, value in DEV_POLLER.items()
            if name not in settings.poller.model_fields_set
        }
        if poller:
            overrides["poller"] = poller
    if "format" not in settings.log.model_fields_set:
        overrides["log"] = {"format": "console"}
    servers: tuple[tuple[str, IngressSettings | AdminSettings], ...] = (
        ("ingress", settings.ingress),
        ("admin", settings.admin),
    )
    for section, server in servers:
        if server.port == 0 or _port_is_free(server.host, server.port):
            continue
        variable = env_name(section, "port")
        if "port" in server.model_fields_set:
            raise DevModeError(
                f"port {server.port} ({variable}) is already in use: choose another, or unset"
                f" {variable} to let dev mode pick a free one"
            )
        # The default port is busy (another bridge, a dev server): a newcomer's first
        # `make run` should work anyway, on a port the kernel picks.
        overrides[section] = {"port": 0}
        busy_defaults[section] = server.port
    return _Plan(
        settings=settings,
        overrides=overrides,
        generated_token=token,
        local_broker=local_broker,
        busy_defaults=busy_defaults,
        simulator=simulator,
    )


def broker_wanted(flag: BrokerKind | None = None) -> BrokerKind | None:
    """The local broker asked for (--broker, else BRIDGE_DEV_BROKER); None: whichever runs."""
    if flag is not None:
        return flag
    raw = os.environ.get(BROKER_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return None
    for kind in BROKER_KINDS:
        if raw == kind:
            return kind
    raise DevModeError(f"{BROKER_ENV}={raw!r}: expected kafka, tansu or auto")


def _cannot_run(what: str, find_files: Callable[[], object]) -> str | None:
    """Why the Java server `what` cannot run here (no Java, files missing), or None."""
    try:
        java_executable(what)
        find_files()
    except DevBrokerError as exc:
        return str(exc)
    return None


def kafka_missing() -> str | None:
    """Why Apache Kafka cannot run here (no Java, no jars), or None when it can."""
    return _cannot_run("Apache Kafka", kafka_libs)


def choose_broker(wanted: BrokerKind | None) -> tuple[BrokerKind, str | None]:
    """The local broker to start, and why it is tansu when it is."""
    if wanted == "tansu":
        return "tansu", f"asked for (--broker tansu or {BROKER_ENV}=tansu)"
    missing = kafka_missing()
    if missing is None:
        return "kafka", None
    if wanted == "kafka":
        raise DevModeError(f"Apache Kafka cannot run: {missing}")
    return "tansu", missing


def run_dir_wanted(flag: Path | None = None) -> Path:
    if flag is not None:
        return flag
    raw = os.environ.get(RUN_DIR_ENV, "").strip()
    return Path(raw) if raw else DEFAULT_RUN_DIR


@dataclass(frozen=True, slots=True)
class LocalBroker:
    """The broker dev mode started, as the banner and the env file describe it."""

    kind: BrokerKind
    bootstrap_servers: str
    pid: int | None
    # Apache Kafka: its version and data directory; tansu: why it runs instead of Kafka.
    version: str | None = None
    data_dir: Path | None = None
    fallback_reason: str | None = None


def _local_kafka(kafka: KafkaSettings, broker: LocalBroker) -> dict[str, Any]:
    values: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap_servers,
        # One node cannot hold more than one replica.
        "topic_replication_factor": 1,
    }
    if broker.kind == "tansu" and "enable_idempotence" not in kafka.model_fields_set:
        # tansu has no idempotent producer.
        values["enable_idempotence"] = False
    if "topic_partitions" not in kafka.model_fields_set:
        values["topic_partitions"] = 3
    return values


# -- the local servers and signals -----------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Let a bounded cleanup finish: a second Ctrl-C must not orphan the broker."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _run_dir_held(run_dir: Path) -> Iterator[Path]:
    """The session's directory, locked: two sessions would overwrite each other's env file
    and Kafka data. The lock goes with the process, however it ends."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = (run_dir / "dev.lock").open("a+", encoding="utf-8")
    except OSError as exc:
        raise DevModeError(f"cannot use {run_dir} ({RUN_DIR_ENV}): {exc}") from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise DevModeError(
                f"another `apizee-bridge dev` (pid {holder}) is using {_shown(run_dir)}: stop"
                f" it, or give this one a directory of its own ({RUN_DIR_ENV} or --run-dir)"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield run_dir


@contextlib.contextmanager
def _kafka_broker(run_dir: Path) -> Iterator[LocalBroker]:
    workdir = run_dir / "kafka"
    # A new cluster every session, as tansu's memory: the simulator's ids start over, and a
    # leftover of a killed session (another cluster id) would not start.
    shutil.rmtree(workdir, ignore_errors=True)
    cluster = KafkaCluster(nodes=1, workdir=workdir, heap=_KAFKA_HEAP)
    node = cluster.nodes[0]
    version = next(kafka_libs().glob("kafka_2.13-*.jar")).stem.split("-", 1)[1]
    # Its JVM runs in a session of its own (so the terminal's Ctrl-C reaches only us):
    # whatever happens here, it must be stopped before we exit.
    try:
        cluster.start()
        yield LocalBroker(
            kind="kafka",
            bootstrap_servers=cluster.bootstrap_servers,
            pid=node.pid,
            version=version,
            data_dir=workdir,
        )
    finally:
        with _signals_ignored():
            cluster.stop()
            # The log stays for a look after the fact; the data goes, as tansu's does.
            shutil.rmtree(node.data_dir, ignore_errors=True)


@contextlib.contextmanager
def _tansu_broker(run_dir: Path, reason: str | None) -> Iterator[LocalBroker]:
    broker = TansuBroker(log_path=run_dir / "tansu.log")
    try:
        broker.start()
        yield LocalBroker(
            kind="tansu",
            bootstrap_servers=broker.bootstrap_servers,
            pid=broker.pid,
            fallback_reason=reason,
        )
    finally:
        with _signals_ignored():
            broker.stop()


def registry_missing() -> str | None:
    """Why the test registry cannot run here (no Java, jar not built), or None."""
    return _cannot_run("the test schema registry", registry_jar)


@contextlib.contextmanager
def _registry_server(run_dir: Path) -> Iterator[RegistryServer]:
    registry = RegistryServer(log_path=run_dir / "registry.log")
    try:
        registry.start()
        yield registry
    finally:
        with _signals_ignored():
            registry.stop()


# -- entry point ---------------------------------------------------------------------------


def run_dev(options: DevOptions | None = None) -> int:
    """Run dev mode until Ctrl-C or SIGTERM; 0 on a clean stop."""
    # Until the event loop takes over the signals (and after it gives them back), SIGTERM
    # unwinds like Ctrl-C, through the `finally` that stops the broker.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_dev(options or DevOptions())
    except KeyboardInterrupt:
        _say("apizee-bridge dev: interrupted")
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True, slots=True)
class _Local:
    """What dev mode started beside the bridge, and where it keeps its files."""

    run_dir: Path
    broker: LocalBroker | None = None
    registry: RegistryServer | None = None

    @property
    def env_file(self) -> Path:
        return self.run_dir / ENV_FILE


def forget_sourced_session() -> list[str]:
    """Drop from this process's environment what a previous session's env file exported (the
    shell that runs us sourced it); the names dropped."""
    names = os.environ.pop(SESSION_ENV, "").split()
    dropped = [name for name in names if os.environ.pop(name, None) is not None]
    return dropped


def _run_dev(options: DevOptions) -> int:
    dropped = forget_sourced_session()
    if dropped:
        _say(
            "apizee-bridge dev: this shell sourced a previous session's env file; ignoring what"
            f" it set ({', '.join(dropped)})"
        )
    try:
        plan = _plan(simulator_wanted(flag_off=not options.simulator))
        kind, reason = choose_broker(broker_wanted(options.broker))
        run_dir = run_dir_wanted(options.run_dir)
        if options.registry:
            missing = registry_missing()
            if missing is not None:
                raise DevModeError(f"--registry: the test schema registry cannot run: {missing}")
    except ConfigError as exc:
        print(f"apizee-bridge dev: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DevModeError as exc:
        print(f"apizee-bridge dev: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_run_dir_held(run_dir))
            local = _Local(run_dir)
            # A killed session's file points at nothing: gone until this one is ready. And
            # registered before anything starts: the file goes however this session ends.
            _remove_env_file(local.env_file)
            stack.callback(_remove_env_file, local.env_file)
            overrides: dict[str, Any] = dict(plan.overrides)
            if plan.local_broker:
                if kind == "kafka":
                    _say("apizee-bridge dev: starting Apache Kafka (KRaft, 1 node) ...")
                    broker = stack.enter_context(_kafka_broker(run_dir))
                else:
                    _say("apizee-bridge dev: starting a local Kafka-protocol broker (tansu) ...")
                    broker = stack.enter_context(_tansu_broker(run_dir, reason))
                local = _Local(run_dir, broker=broker)
                overrides["kafka"] = _local_kafka(plan.settings.kafka, broker)
            if options.registry:
                _say("apizee-bridge dev: starting the test schema registry (Apicurio) ...")
                registry = stack.enter_context(_registry_server(run_dir))
                local = _Local(run_dir, broker=local.broker, registry=registry)
                overrides["schema"] = {"registry_url": registry.url}
            settings = load_settings(**overrides)
            configure_logging(settings.log.level, settings.log.format)
            _run_loop(_session(settings, plan, local))
    except DevModeError as exc:
        print(f"apizee-bridge dev: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DevBrokerError as exc:
        print(
            f"apizee-bridge dev: a local server failed: {exc}\n(or set"
            f" {env_name('kafka', 'bootstrap_servers')} to use a running Kafka cluster)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as exc:  # a port taken between the check and the bind
        print(f"apizee-bridge dev: cannot listen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _say("apizee-bridge dev: stopped")
    return EXIT_OK


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        asyncio.run(main)
    else:
        uvloop.run(main)


# -- the session: bridge, console consumer, banner -------------------------------------------


class _DevSimulator(Simulator):
    """The simulated Apizee, which also lists the seed example under its ticket 361."""

    def _recorded_events_of(self, ticket_id: int) -> Sequence[SimEvent] | None:
        if ticket_id == SEED_EVENT.ticket_id:
            return (SEED_EVENT,)
        return super()._recorded_events_of(ticket_id)


def _with_apizee_at(settings: BridgeSettings, base_url: str) -> BridgeSettings:
    # Validated already with the simulator's token; only its URL was unknown until it listened.
    apizee = settings.apizee.model_copy(update={"base_url": base_url})
    return settings.model_copy(update={"apizee": apizee})


async def _session(settings: BridgeSettings, plan: _Plan, local: _Local) -> None:
    """Run the bridge, the console consumer and the simulator until SIGINT/SIGTERM; stop all."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # serve() installs the same handlers on the same event; installed here too so that a
    # Ctrl-C before the bridge listens also stops everything.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    simulator: Simulator | None = None
    if plan.simulator is not None:
        # Before the bridge: its REST API is there when the poller first calls it.
        simulator = _DevSimulator(plan.simulator)
        await simulator.start()
        settings = _with_apizee_at(settings, simulator.base_url)
    try:
        await _run_session(settings, plan, local, stop, simulator)
    finally:
        if simulator is not None:
            # After the bridge: no poll in flight meets a closed server.
            await simulator.stop()


async def _run_session(
    settings: BridgeSettings,
    plan: _Plan,
    local: _Local,
    stop: asyncio.Event,
    simulator: Simulator | None,
) -> None:
    loop = asyncio.get_running_loop()
    listening: asyncio.Future[Listening] = loop.create_future()
    # Either framing: Confluent's with the registry (--registry), else single-object.
    consumer = ConsoleConsumer(settings.kafka, decode=event_decoder(settings.schema))
    consumer_task = asyncio.create_task(consumer.run(stop), name="dev-console-consumer")

    # A defect in the consumer stops the session rather than leaving a silent console.
    def stop_on_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            stop.set()

    consumer_task.add_done_callback(stop_on_failure)
    announced = asyncio.Event()
    announce_task = asyncio.create_task(
        _announce(settings, plan, local, listening, consumer, stop, announced),
        name="dev-banner",
    )
    tasks = [announce_task]
    if simulator is not None:
        tasks.append(
            asyncio.create_task(
                _send_webhooks(settings, simulator, listening, announced, stop),
                name="dev-simulator-webhooks",
            )
        )
    try:
        await serve(settings, stop=stop, on_listening=listening.set_result)
    finally:
        # The bridge has drained and flushed: what it published has been printed, or will be
        # within one poll; then the consumer stops.
        stop.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # It stops within one poll, unless a request to an unreachable cluster is pending.
        await asyncio.wait({consumer_task}, timeout=_CONSUMER_STOP_SECONDS)
        consumer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer_task


async def _announce(
    settings: BridgeSettings,
    plan: _Plan,
    local: _Local,
    listening: asyncio.Future[Listening],
    consumer: ConsoleConsumer,
    stop: asyncio.Event,
    announced: asyncio.Event,
) -> None:
    """Write the env file and print the banner once the bridge is ready and the console
    consumer sees every topic."""
    where = await listening
    admin_base = f"http://{_url_host(settings.admin.host)}:{where.admin_port}"
    deadline = time.monotonic() + _READY_TIMEOUT
    ready = await _wait_ready(f"{admin_base}/readyz", deadline, stop)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await consumer.all_assigned.wait()
    if not stop.is_set():
        variables = session_env(settings, plan, local)
        variables[WEBHOOK_URL_ENV] = where.webhook_url
        variables[ADMIN_URL_ENV] = admin_base
        _write_env_file(local.env_file, variables)
        _say(_banner(settings, plan, local, where, admin_base, ready))
        announced.set()


async def _send_webhooks(
    settings: BridgeSettings,
    simulator: Simulator,
    listening: asyncio.Future[Listening],
    announced: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Send the simulator's webhooks to the bridge from the banner on, until all are sent."""
    where = await listening
    await announced.wait()
    sending = asyncio.create_task(simulator.send_all(_webhook_config(settings, where.webhook_url)))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({sending, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, stopping):
            task.cancel()
        await asyncio.gather(sending, stopping, return_exceptions=True)
    if stop.is_set() or sending.cancelled() or sending.exception() is not None:
        return
    report = sending.result().summary()
    poller = settings.poller
    _say(
        f"apizee-bridge dev: the simulator sent its last webhook ({report['events']} events,"
        f" {report['dropped']} dropped, {report['acked']} accepted); the poller fills the last"
        f" gaps within ~{poller.interval_seconds + poller.settle_seconds:g}s. Ctrl-C to stop."
    )


def _webhook_config(settings: BridgeSettings, url: str) -> WebhookConfig:
    """How the simulator posts to this bridge: with the first credentials it takes."""
    auth = settings.auth
    credentials: dict[str, Any] = {}
    if auth.hmac_secret is not None:
        credentials = {
            "hmac_secret": auth.hmac_secret.get_secret_value(),
            "hmac_header": auth.hmac_header,
            "hmac_encoding": auth.hmac_encoding,
            "hmac_prefix": auth.hmac_prefix,
            "timestamp_header": auth.timestamp_header,
        }
    elif auth.token is not None:
        credentials = {"token": auth.token.get_secret_value(), "token_header": auth.token_header}
    elif auth.basic_username is not None and auth.basic_password is not None:
        credentials = {"basic": (auth.basic_username, auth.basic_password.get_secret_value())}
    return WebhookConfig(url=url, drop=SIM_DROP, **credentials)


async def _wait_ready(url: str, deadline: float, stop: asyncio.Event) -> bool:
    async with ClientSession(timeout=ClientTimeout(total=1.0)) as session:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return True
            except (ClientError, TimeoutError):
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    return False


def _url_host(host: str) -> str:
    if host in _WILDCARD_HOSTS:
        return _LOOPBACK
    return f"[{host}]" if ":" in host else host


def _banner(
    settings: BridgeSettings,
    plan: _Plan,
    local: _Local,
    where: Listening,
    admin_base: str,
    ready: bool,
) -> str:
    topics = TopicNames(settings.kafka.topic_prefix)
    suffixes = ",".join(t.removeprefix(topics.prefix + ".") for t in topics.events())
    auth_line, curl_auth = _auth_for_curl(settings, plan.generated_token)
    webhook = where.webhook_url
    bound = {"ingress": where.public_port, "admin": where.admin_port}
    notes = [
        f"{section} port {port} (the default) is busy: listening on {bound[section]} instead;"
        f" set {env_name(section, 'port')} to choose"
        for section, port in plan.busy_defaults.items()
    ]
    broker = local.broker
    if broker is not None and broker.kind == "tansu":
        notes.append(
            f"tansu runs instead of Apache Kafka: {broker.fallback_reason}. On tansu:"
            f" {TANSU_LIMITS}."
        )
    curl = shlex.join(
        [
            "curl",
            "-sS",
            "-w",
            r"\n",
            webhook,
            "-H",
            "Content-Type: application/json",
            *curl_auth,
            "--data-binary",
            SEED_WEBHOOK.decode(),
        ]
    )
    lines = [
        "",
        "apizee-bridge dev: ready" if ready else "apizee-bridge dev: listening, Kafka NOT ready",
        f"  kafka    {_kafka_line(settings, broker)}",
        f"  topics   {topics.prefix}.{{{suffixes}}}",
        f"  webhook  {webhook}",
        f"  admin    {admin_base}/metrics  {admin_base}/readyz",
        f"  {auth_line}",
        *_registry_lines(settings, local),
        *_apizee_lines(settings, plan),
        *(f"  note     {note}" for note in notes),
        "",
        *_simulation_lines(plan),
        "Post the seed example (media.OCRDone, event 1266); it shows up below as it lands:",
        "",
        f"  {curl}",
        "",
        *_try_lines(settings, plan, local),
        "Ctrl-C stops the bridge"
        + (", the simulator" if plan.simulator is not None else "")
        + (", the registry" if local.registry is not None else "")
        + (" and the broker" if broker is not None else "")
        + f"; {_shown(local.env_file)} goes with them.",
        "",
    ]
    if not ready:
        lines.insert(2, f"  (the bridge answers 503 until {admin_base}/readyz says ready)")
    return "\n".join(lines)


def _kafka_line(settings: BridgeSettings, broker: LocalBroker | None) -> str:
    if broker is None:
        return f"{settings.kafka.bootstrap_servers} ({env_name('kafka', 'bootstrap_servers')})"
    if broker.kind == "tansu":
        return f"tansu (memory only, pid {broker.pid}) on {broker.bootstrap_servers}"
    data = f", data in {_shown(broker.data_dir)} (removed at exit)" if broker.data_dir else ""
    return (
        f"Apache Kafka {broker.version} (KRaft, 1 node, pid {broker.pid}) on"
        f" {broker.bootstrap_servers}{data}"
    )


def _registry_lines(settings: BridgeSettings, local: _Local) -> list[str]:
    url = settings.schema.registry_url
    if url is None:
        return []
    if local.registry is not None:
        return [f"  registry {url} (Apicurio, in memory; records are Confluent-framed)"]
    return [f"  registry {url} ({env_name('schema', 'registry_url')})"]


# -- the session's coordinates: the env file and the commands that use it --------------------


def _shown(path: Path) -> str:
    """`path` as the banner shows it: relative to the working directory when inside it."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def timeline_ticket(plan: _Plan) -> int:
    """A ticket the session has events of: the simulator's first, else the seed example's."""
    return SIM_FIRST_TICKET_ID if plan.simulator is not None else SEED_EVENT.ticket_id


def session_env(settings: BridgeSettings, plan: _Plan, local: _Local) -> dict[str, str]:
    """The variables that point a command at this session: what dev mode chose or generated.

    The user's own BRIDGE_* settings are theirs already and are not repeated (some are
    secrets); the session's Kafka and registry addresses are, whoever chose them.
    """
    kafka = settings.kafka
    env = {
        env_name("kafka", "bootstrap_servers"): kafka.bootstrap_servers,
        env_name("kafka", "topic_prefix"): kafka.topic_prefix,
        # What `check` compares the topics with: the partitions this session created them with.
        env_name("kafka", "topic_partitions"): str(kafka.topic_partitions),
        env_name("kafka", "topic_replication_factor"): str(kafka.topic_replication_factor),
    }
    if not kafka.enable_idempotence:
        # tansu: a replay's producer would otherwise fail as the bridge's would.
        env[env_name("kafka", "enable_idempotence")] = "false"
    if plan.generated_token is not None:
        env[env_name("auth", "token")] = plan.generated_token
    if plan.simulator is not None and settings.apizee.base_url is not None:
        env[env_name("apizee", "base_url")] = settings.apizee.base_url
        env[env_name("apizee", "token")] = plan.simulator.rest_token
    if settings.schema.registry_url is not None:
        env[env_name("schema", "registry_url")] = settings.schema.registry_url
    if "format" not in plan.settings.log.model_fields_set:
        env[env_name("log", "format")] = "console"
    return env


def _env_file_text(variables: Mapping[str, str]) -> str:
    # The venv first on PATH: `apizee-bridge` and `python` (with the consumers' package)
    # are this session's, from any shell.
    bin_dir = shlex.quote(os.path.abspath(Path(sys.executable).parent))
    lines = [
        f"# apizee-bridge dev (pid {os.getpid()}): this session's settings, for the commands its",
        "# banner prints. Removed when the session stops. Your own BRIDGE_* variables, if any,",
        "# are not repeated here.",
        f'export PATH={bin_dir}:"$PATH"',
        *(f"export {name}={shlex.quote(value)}" for name, value in variables.items()),
        f"export {SESSION_ENV}={shlex.quote(' '.join(variables))}",
    ]
    return "\n".join(lines) + "\n"


def _write_env_file(path: Path, variables: Mapping[str, str]) -> None:
    # Owner-only (it holds the session's tokens), and whole or not at all: written aside,
    # then renamed over.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(_env_file_text(variables))
    os.replace(partial, path)


def _remove_env_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def _java_timeline_command(settings: BridgeSettings, local: _Local, ticket: int) -> str | None:
    """The Java kit's TicketTimeline as a shell line, or None (with `_java_absent` saying why)."""
    if _java_absent(local) is not None:
        return None
    target = _REPO / JAVA_KIT / "target"
    classes, classpath = _shown(target / "classes"), shlex.quote(_shown(target / "classpath.txt"))
    command = (
        f'java -cp "{classes}:$(cat {classpath})"'
        f' {JAVA_TIMELINE} --bootstrap-servers "${env_name("kafka", "bootstrap_servers")}"'
        f' --prefix "${env_name("kafka", "topic_prefix")}" --ticket {ticket}'
    )
    if settings.schema.registry_url is not None:
        command += f' --schema-registry-url "${env_name("schema", "registry_url")}"'
    return command


def _java_absent(local: _Local) -> str | None:
    if local.broker is not None and local.broker.kind == "tansu":
        return "kafka-clients cannot connect to tansu"
    target = _REPO / JAVA_KIT / "target"
    if not ((target / "classes").is_dir() and (target / "classpath.txt").is_file()):
        return "not built: `make consumer-kit` builds it (Java and Maven)"
    try:
        java_executable("the Java example")
    except DevBrokerError as exc:
        return str(exc)
    return None


def try_commands(settings: BridgeSettings, plan: _Plan, local: _Local) -> list[str]:
    """The commands the banner offers, each a shell line that works as printed once the env
    file is sourced, from the working directory."""
    ticket = timeline_ticket(plan)
    commands = [
        f"source {shlex.quote(_shown(local.env_file))}",
        "apizee-bridge check",
        "apizee-bridge tail --from-beginning --count 10",
        "apizee-bridge replay --from dlq --dry-run",
    ]
    if plan.simulator is not None:
        commands.append(f"apizee-bridge backfill --ticket {ticket}")
    example = _REPO / PY_EXAMPLE
    if example.is_file():
        commands.append(f"python {shlex.quote(_shown(example))}")
    java = _java_timeline_command(settings, local, ticket)
    if java is not None:
        commands.append(java)
    return commands


def _try_lines(settings: BridgeSettings, plan: _Plan, local: _Local) -> list[str]:
    ticket = timeline_ticket(plan)
    commands = try_commands(settings, plan, local)
    said = [
        "`check` runs the preflight against this session, `tail` prints its topics decoded,",
        "`replay --dry-run` counts what the dead-letter topic holds and what would replay,",
    ]
    if plan.simulator is not None:
        said.append(
            f"`backfill` fetches ticket {ticket} from the simulated Apizee and publishes what is"
            " missing,"
        )
    said.append(f"and the consumer examples read the events (Java: ticket {ticket}'s timeline).")
    java_absent = _java_absent(local)
    if java_absent is not None:
        said.append(f"(The Java example, TicketTimeline, is left out: {java_absent}.)")
    return [
        "In another terminal, in this directory, the session's settings, then commands that",
        "work as printed:",
        "",
        *(f"  {command}" for command in commands),
        "",
        *said,
        "",
    ]


def _apizee_lines(settings: BridgeSettings, plan: _Plan) -> list[str]:
    apizee, poller = settings.apizee, settings.poller
    if apizee.base_url is None:
        return [
            "  apizee   none: no poller (simulator off; set"
            f" {env_name('apizee', 'base_url')} to poll Apizee)"
        ]
    where = (
        f"simulator {apizee.base_url}{REST_PATH} ({SIM_TICKETS} tickets, {SIM_RATE:g} events/s)"
        if plan.simulator is not None
        else f"{apizee.base_url} ({env_name('apizee', 'base_url')})"
    )
    polling = (
        f"every {poller.interval_seconds:g}s, gaps older than {poller.settle_seconds:g}s"
        if poller.enabled
        else f"off ({env_name('poller', 'enabled')}=false)"
    )
    return [f"  apizee   {where}", f"  poller   {polling}"]


def _simulation_lines(plan: _Plan) -> list[str]:
    if plan.simulator is None:
        return []
    return [
        f"Simulated sessions start now; the simulator drops {SIM_DROP:.0%} of their webhooks on"
        " purpose.",
        "Each event prints below as it lands: source=WEBHOOK, or source=POLLER (gap filled)",
        "when the poller found it in the REST API instead. --no-simulator turns this off.",
        "",
    ]


def _auth_for_curl(settings: BridgeSettings, generated_token: str | None) -> tuple[str, list[str]]:
    """The banner's auth line and the curl arguments that authenticate the seed example.

    Only the generated token is shown; configured secrets stay out of the terminal (an HMAC
    signature can be computed without showing its key).
    """
    auth = settings.auth
    if generated_token is not None:
        return (
            f"token    {generated_token}   (generated for this session; header"
            f" {auth.token_header})",
            ["-H", f"{auth.token_header}: {generated_token}"],
        )
    if auth.insecure_no_auth:
        return "auth     none (BRIDGE_AUTH_INSECURE_NO_AUTH)", []
    if auth.hmac_secret is not None:
        timestamp = int(time.time()) if auth.timestamp_header else None
        signature = sign(
            auth.hmac_secret.get_secret_value().encode("utf-8", "surrogatepass"),
            SEED_WEBHOOK,
            timestamp,
            auth.hmac_encoding,
        )
        arguments = ["-H", f"{auth.hmac_header}: {auth.hmac_prefix}{signature}"]
        note = ""
        if auth.timestamp_header is not None:
            arguments += ["-H", f"{auth.timestamp_header}: {timestamp}"]
            note = f"; the signed timestamp expires in {auth.timestamp_tolerance_seconds}s"
        return f"auth     hmac (configured{note})", arguments
    if auth.token is not None:
        return (
            "auth     token (configured, not shown: put it in the curl below)",
            ["-H", f"{auth.token_header}: <{env_name('auth', 'token')}>"],
        )
    return (
        "auth     basic (configured, not shown: put the password in the curl below)",
        ["-u", f"{auth.basic_username}:<{env_name('auth', 'basic_password')}>"],
    )
