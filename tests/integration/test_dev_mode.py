"""`apizee-bridge dev` (what `make run` runs), as a newcomer uses it: start it, watch the
simulated sessions land (some through the poller), paste the printed curl, see the event land,
then `source .run/env` and run every command the banner prints, as printed, from the checkout;
Ctrl-C: the process exits 0 and takes its broker and its env file with it. On Apache Kafka by
default; on tansu without Java (and saying what tansu lacks); with the test registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bridge.devtools.dev import kafka_missing, registry_missing
from bridge.devtools.devbroker import free_port
from tests.integration.commands.clikit import Ran, finish

pytestmark = pytest.mark.integration

# Apache Kafka (format + JVM start) + bridge + topics + state restore: about 8 s on an idle
# machine; the registry adds about 8 s.
START_TIMEOUT = 90.0
EVENT_TIMEOUT = 10.0
# Gaps are filled a poll interval (5 s) after the first webhook of their ticket, once older
# than the settle delay (3 s): the first within ~10 s of the banner.
GAPS_TIMEOUT = 20.0
LANDED = re.compile(r"^apizee\.session-events\.\w+ p\d+@\d+ key=(\d+) \S+ id=(\d+) source=(\w+)")
STOP_TIMEOUT = 15.0
BANNER_END = "Ctrl-C stops"


def _command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("apizee-bridge")
    if script.is_file():
        return [str(script), "dev", *args]
    return [sys.executable, "-m", "bridge.cli", "dev", *args]


def _env(**settings: str) -> dict[str, str]:
    # Nothing from the caller's BRIDGE_* environment: dev mode must start its own broker and
    # generate its token.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    env.update(settings)
    return env


@dataclass
class DevProcess:
    process: asyncio.subprocess.Process
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    broker_pid: int | None = None

    async def read_until(self, done: Callable[[str], bool], within: float) -> str:
        """Read stdout lines until one satisfies `done`; return it."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(within):
                while True:
                    raw = await self.process.stdout.readline()
                    if not raw:
                        raise AssertionError("dev mode exited early")
                    line = raw.decode().rstrip("\n")
                    self.lines.append(line)
                    if done(line):
                        return line
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"{exc or 'timed out'}; {self.transcript()}") from None

    def transcript(self) -> str:
        return (
            "stdout:\n"
            + "\n".join(self.lines)
            + f"\nstderr:\n{self.stderr_path.read_text(errors='replace')}"
        )

    def banner_value(self, label: str) -> str:
        for line in self.lines:
            match = re.match(rf"\s+{label}\s+(\S+)", line)
            if match:
                return match.group(1)
        raise AssertionError(f"no {label!r} line in the banner; {self.transcript()}")

    async def stop(self, sig: int = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        async with asyncio.timeout(STOP_TIMEOUT):
            rest, _ = await self.process.communicate()
        self.lines.extend(rest.decode().splitlines())
        assert self.process.returncode is not None
        return self.process.returncode


@contextlib.asynccontextmanager
async def dev_mode(tmp_path: Path, *args: str, **settings: str) -> AsyncIterator[DevProcess]:
    """`apizee-bridge dev ARGS` with its run dir in `tmp_path` (not the checkout's .run)."""
    stderr_path = tmp_path / "dev.stderr"
    settings.setdefault("BRIDGE_DEV_RUN_DIR", str(tmp_path / "run"))
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *_command(*args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=_env(**settings),
        )
    dev = DevProcess(process, stderr_path)
    try:
        yield dev
    finally:
        # A failed test must not leave a bridge, a broker or a registry (each in a session of
        # its own) running: SIGTERM first, on which dev mode stops them all; SIGKILL if not.
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if dev.broker_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(dev.broker_pid, signal.SIGKILL)


def _curl_request(line: str) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body of the banner's curl command, read as a shell would."""
    args = iter(shlex.split(line))
    assert next(args) == "curl"
    url, headers, body = "", {}, b""
    for arg in args:
        if arg == "-H":
            name, _, value = next(args).partition(": ")
            headers[name] = value
        elif arg == "--data-binary":
            body = next(args).encode()
        elif arg == "-w":
            next(args)
        elif not arg.startswith("-"):
            url = arg
    return url, headers, body


def _broker_pid(dev: DevProcess) -> int:
    for line in dev.lines:
        match = re.match(
            r"\s+kafka\s+(?:tansu \(memory only|Apache Kafka \S+ \(KRaft, 1 node), pid (\d+)\)",
            line,
        )
        if match:
            return int(match.group(1))
    raise AssertionError(f"no local broker in the banner; {dev.transcript()}")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
        yield sock


def _landed(lines: list[str]) -> list[tuple[int, int, str]]:
    """(ticket, event id, source) of every event line the console consumer printed."""
    found = [LANDED.match(line) for line in lines]
    return [(int(m[1]), int(m[2]), m[3]) for m in found if m is not None]


async def test_simulated_sessions_and_the_seed_example_land_then_ctrl_c_stops_everything(
    tmp_path: Path,
) -> None:
    public, admin = free_port(), free_port()
    async with dev_mode(
        tmp_path, BRIDGE_INGRESS_PORT=str(public), BRIDGE_ADMIN_PORT=str(admin)
    ) as dev:
        curl = await dev.read_until(lambda line: line.lstrip().startswith("curl "), START_TIMEOUT)
        await dev.read_until(lambda line: line.startswith(BANNER_END), 1.0)
        assert "apizee-bridge dev: ready" in dev.lines, dev.transcript()
        dev.broker_pid = _broker_pid(dev)
        # Apache Kafka wherever it can run (make kafka's jars and Java), tansu elsewhere.
        assert dev.banner_value("kafka") == ("Apache" if kafka_missing() is None else "tansu")
        env_file = tmp_path / "run" / "env"
        assert env_file.is_file(), dev.transcript()
        webhook, token = dev.banner_value("webhook"), dev.banner_value("token")
        assert webhook == f"http://127.0.0.1:{public}/webhooks/apizee"
        assert dev.banner_value("admin") == f"http://127.0.0.1:{admin}/metrics"
        assert dev.banner_value("apizee") == "simulator"
        assert "  poller   every 5s, gaps older than 3s" in dev.lines, dev.transcript()

        # The simulator's sessions land as they happen; the webhooks it drops on purpose
        # land too, a few seconds later, published by the poller from the REST API.
        def enough(_: str) -> bool:
            sources = [source for _, _, source in _landed(dev.lines)]
            return sources.count("WEBHOOK") >= 10 and sources.count("POLLER") >= 2

        await dev.read_until(enough, GAPS_TIMEOUT)

        # The printed command, verbatim: its URL, headers and body.
        url, headers, body = _curl_request(curl.strip())
        assert url == webhook
        assert headers["X-Webhook-Token"] == token
        async with aiohttp.ClientSession() as session:
            async with session.post(url, headers=headers, data=body) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == {"status": "accepted", "eventId": 1266}
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as response:
                assert response.status == 200

        landed = await dev.read_until(lambda line: "media.OCRDone id=1266" in line, EVENT_TIMEOUT)
        assert landed.startswith("apizee.session-events.media p"), landed
        assert "key=361" in landed
        assert "source=WEBHOOK" in landed
        assert "text='text captured by OCR'" in landed

        started = time.monotonic()
        code = await dev.stop(signal.SIGINT)
        assert code == 0, dev.transcript()
        assert time.monotonic() - started < STOP_TIMEOUT
        assert dev.lines[-1] == "apizee-bridge dev: stopped", dev.transcript()
        assert _process_gone(dev.broker_pid), f"broker pid {dev.broker_pid} survived"
        assert not env_file.exists(), "the env file outlived its session"

    landed_events = _landed(dev.lines)
    ids = [event_id for _, event_id, _ in landed_events]
    assert len(ids) == len(set(ids)), f"an event landed twice; {dev.transcript()}"
    # The seed's ticket 361, and the simulator's tickets from 362 on.
    assert min(t for t, _, _ in landed_events) == 361
    filled = {t for t, _, source in landed_events if source == "POLLER"}
    assert filled
    assert min(filled) >= 362
    events = [line for line in dev.lines if LANDED.match(line)]
    assert all("source=POLLER (gap filled) at=" in line for line in events if "=POLLER" in line)
    stderr = dev.stderr_path.read_text(errors="replace")
    # The token is for the terminal, never for the logs.
    assert token not in stderr
    # Nothing failed on the way: no poll of the simulator, no coroutine left un-awaited.
    for trouble in ("poll_failed", "poll_crashed", "Traceback", "never awaited"):
        assert trouble not in stderr, dev.transcript()


async def test_busy_default_port_falls_back_to_a_free_one(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        # Held here, or already taken by something else: busy either way.
        with contextlib.suppress(OSError):
            stack.enter_context(_listening("127.0.0.1", 8080))
        async with dev_mode(
            tmp_path, "--no-simulator", "--broker", "tansu", BRIDGE_ADMIN_PORT=str(free_port())
        ) as dev:
            await dev.read_until(lambda line: line.startswith(BANNER_END), START_TIMEOUT)
            dev.broker_pid = _broker_pid(dev)
            webhook = dev.banner_value("webhook")
            assert not webhook.startswith("http://127.0.0.1:8080/"), webhook
            assert any("ingress port 8080 (the default) is busy" in line for line in dev.lines)
            assert dev.banner_value("apizee") == "none:", dev.transcript()
            assert await dev.stop(signal.SIGTERM) == 0, dev.transcript()
            assert _process_gone(dev.broker_pid)


async def test_busy_configured_port_is_refused_before_starting_anything(tmp_path: Path) -> None:
    port = free_port()
    with _listening("127.0.0.1", port):
        async with dev_mode(
            tmp_path, BRIDGE_INGRESS_PORT=str(port), BRIDGE_ADMIN_PORT=str(free_port())
        ) as dev:
            async with asyncio.timeout(STOP_TIMEOUT):
                out, _ = await dev.process.communicate()
    assert dev.process.returncode == 1
    assert "starting" not in out.decode()  # no broker was started
    error = dev.stderr_path.read_text()
    assert f"port {port} (BRIDGE_INGRESS_PORT) is already in use" in error


# -- the commands the banner prints, run as printed -------------------------------------------

REPO = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 120.0
# The Python example ends 10 s after the last event: the simulation (175 events at 2/s) and
# the poller's last gaps come first, about 100 s after the banner.
EXAMPLE_TIMEOUT = 240.0
EVENT_LINE = re.compile(r"^\S+\.(\w+) p\d+@\d+ key=\d+ [\w.]+ id=\d+ source=(WEBHOOK|POLLER)")


def _printed_commands(dev: DevProcess) -> tuple[str, list[str]]:
    """The banner's `source ...` line and the command lines under it, as printed."""
    lines = [line.strip() for line in dev.lines]
    starts = [i for i, line in enumerate(lines) if line.startswith("source ")]
    assert len(starts) == 1, dev.transcript()
    block: list[str] = []
    for line in lines[starts[0] :]:
        if not line:
            break
        block.append(line)
    return block[0], block[1:]


async def _drain(dev: DevProcess) -> None:
    # Dev mode prints every event: unread, the pipe would fill and stall the session.
    assert dev.process.stdout is not None
    while raw := await dev.process.stdout.readline():
        dev.lines.append(raw.decode(errors="replace").rstrip("\n"))


async def _stop_drained(dev: DevProcess, drain: asyncio.Task[None]) -> int:
    """Ctrl-C a session whose output `drain` reads; its exit status once all is read."""
    dev.process.send_signal(signal.SIGINT)
    async with asyncio.timeout(STOP_TIMEOUT):
        await drain
        return await dev.process.wait()


async def _run_as_printed(source: str, command: str, within: float = COMMAND_TIMEOUT) -> Ran:
    """`command` as a newcomer pastes it into a new shell at the checkout's root."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"{source} && {command}",
        cwd=REPO,
        env=_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return await finish(process, within)


def _one(commands: list[str], start: str) -> str:
    found = [c for c in commands if c.startswith(start)]
    assert len(found) == 1, (start, commands)
    return found[0]


@dataclass
class Printed:
    """A running `dev` session on Apache Kafka and what its banner printed."""

    dev: DevProcess
    run_dir: Path
    source: str
    commands: list[str]
    drain: asyncio.Task[None]
    python_example: asyncio.Task[Ran] | None = None

    def command(self, start: str) -> str:
        return _one(self.commands, start)


@pytest.fixture(scope="module")
async def printed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Printed]:
    missing = kafka_missing()
    if missing is not None:
        pytest.skip(f"Apache Kafka cannot run here: {missing}")
    tmp_path = tmp_path_factory.mktemp("dev-commands")
    async with dev_mode(
        tmp_path, BRIDGE_INGRESS_PORT=str(free_port()), BRIDGE_ADMIN_PORT=str(free_port())
    ) as dev:
        await dev.read_until(lambda line: line.startswith(BANNER_END), START_TIMEOUT)
        dev.broker_pid = _broker_pid(dev)
        source, commands = _printed_commands(dev)
        session = Printed(dev, tmp_path / "run", source, commands, asyncio.create_task(_drain(dev)))
        example = [c for c in commands if c.startswith("python ")]
        if example:
            # Started now: it reads until the simulation is over (see EXAMPLE_TIMEOUT).
            session.python_example = asyncio.create_task(
                _run_as_printed(source, example[0], EXAMPLE_TIMEOUT)
            )
        try:
            yield session
        finally:
            for task in (session.python_example, session.drain):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, AssertionError):
                        await task


async def test_the_banner_hands_out_the_sessions_coordinates_and_commands(
    printed: Printed,
) -> None:
    env_file = printed.run_dir / "env"
    assert printed.source == f"source {env_file}"
    assert env_file.stat().st_mode & 0o077 == 0, "the env file holds tokens: owner only"
    assert printed.dev.banner_value("kafka") == "Apache"
    ticket = 362  # the simulator's first ticket
    expected = [
        "apizee-bridge check",
        "apizee-bridge tail --from-beginning --count 10",
        "apizee-bridge replay --from dlq --dry-run",
        f"apizee-bridge backfill --ticket {ticket}",
    ]
    if (REPO / "consumers/python/examples/print_events.py").is_file():
        expected.append("python consumers/python/examples/print_events.py")
    assert printed.commands[: len(expected)] == expected, printed.dev.transcript()
    java = [c for c in printed.commands if c.startswith("java ")]
    if java:
        assert "TicketTimeline --bootstrap-servers" in java[0]
        assert java[0].endswith(f"--ticket {ticket}")
    else:
        assert any(
            "The Java example, TicketTimeline, is left out:" in line for line in printed.dev.lines
        )
    assert len(printed.commands) == len(expected) + len(java), printed.commands


async def test_check_as_printed_passes_with_no_fail(printed: Printed) -> None:
    ran = await _run_as_printed(printed.source, printed.command("apizee-bridge check"))
    print(f"\n{ran.stdout}")
    assert ran.code == 0, ran
    assert not [line for line in ran.lines if line.startswith("FAIL")], ran
    assert re.fullmatch(r"check: all \d+ checks passed", ran.lines[-1]), ran
    # The session's own choices are what was checked: its partitions, its simulated Apizee.
    assert "3 partitions" in ran.line("OK    topic apizee.session-events.ticket:")
    assert "token accepted" in ran.line("OK    Apizee REST API http://127.0.0.1:")


async def test_tail_as_printed_prints_events(printed: Printed) -> None:
    ran = await _run_as_printed(printed.source, printed.command("apizee-bridge tail"))
    assert ran.code == 0, ran
    events = [line for line in ran.lines if EVENT_LINE.match(line)]
    assert len(events) == 10, ran


async def test_replay_dry_run_as_printed_reports_its_selection(printed: Printed) -> None:
    ran = await _run_as_printed(printed.source, printed.command("apizee-bridge replay"))
    assert ran.code == 0, ran
    assert ran.lines[0].startswith(
        "replay --from dlq --dry-run: from apizee.session-events.dlq, group"
    ), ran
    assert re.search(r"^\s+selected\s+\d+$", ran.stdout, re.MULTILINE), ran


def _readme_trying_it() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text[text.index("### From another terminal") : text.index("### Other ways to run it")]


async def test_the_readme_shows_the_commands_the_banner_prints(printed: Printed) -> None:
    """The README's walk-through is the banner's, command for command."""
    block = re.search(r"```sh\n(.*?)```", _readme_trying_it(), re.DOTALL)
    assert block is not None
    shown = block.group(1).splitlines()
    assert shown[0] == "source .run/env"  # the default run dir; this session's is a temp one
    if not [c for c in printed.commands if c.startswith("java ")]:
        # Not built here (the test of the Java example says why); the README shows it.
        shown = [c for c in shown if not c.startswith("java ")]
    assert shown[1:] == printed.commands, printed.commands


async def test_a_dead_letter_parked_as_the_readme_says_shows_in_the_dry_run(
    printed: Printed,
) -> None:
    # The README's curl, as written there, against this session.
    (curl,) = [
        line.strip()
        for line in _readme_trying_it().splitlines()
        if line.strip().startswith("curl ") and "'not json'" in line
    ]
    posted = await _run_as_printed(printed.source, curl)
    assert posted.code == 0, posted
    assert posted.stdout.startswith('{"status":"invalid","reason":"body: Invalid JSON'), posted
    ran = await _run_as_printed(printed.source, printed.command("apizee-bridge replay"))
    assert ran.code == 1, ran
    assert re.search(r"^\s+still failing\s+1\b", ran.stdout, re.MULTILINE), ran
    assert re.search(r"^\s+invalid_json\s+1$", ran.stdout, re.MULTILINE), ran


async def test_backfill_as_printed_publishes_what_is_missing(printed: Printed) -> None:
    command = printed.command("apizee-bridge backfill")
    ticket = command.rsplit(" ", 1)[1]
    ran = await _run_as_printed(printed.source, command)
    assert ran.code == 0, ran
    line = ran.line(f"ticket {ticket}: fetched ")
    assert line.endswith(", ok"), line
    assert not line.startswith(f"ticket {ticket}: fetched 0,"), line
    assert ran.lines[-1].endswith("failed 0"), ran


async def test_the_java_timeline_as_printed_prints_the_tickets_events(printed: Printed) -> None:
    java = [c for c in printed.commands if c.startswith("java ")]
    if not java:
        reason = [line for line in printed.dev.lines if "TicketTimeline, is left out" in line]
        pytest.skip(reason[0].strip() if reason else "the banner prints no Java command")
    ticket = java[0].rsplit(" ", 1)[1]
    ran = await _run_as_printed(printed.source, java[0])
    assert ran.code == 0, ran
    assert re.search(rf"^ticket {ticket}: (\d+) events$", ran.stderr, re.MULTILINE), ran
    lines = ran.lines
    assert lines, ran
    # One line per event of the ticket, in order of occurredAt, with where it was read.
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\S+ [\w.]+ id=\d+ source=\w+", line) for line in lines)
    assert all(line.endswith(")") and "(apizee.session-events." in line for line in lines), ran
    assert lines == sorted(lines), ran  # ISO-8601 instants sort as time does


async def test_the_python_example_as_printed_prints_events(printed: Printed) -> None:
    if printed.python_example is None:
        pytest.skip("the banner prints no Python example (consumers/python/examples missing)")
    ran = await printed.python_example
    assert ran.code == 0, ran
    events = [line for line in ran.lines if line.startswith("apizee.session-events.")]
    assert len(events) >= 10, ran
    ids = [re.search(r" ticketId=\d+ eventId=(\d+) occurredAt=", line) for line in events]
    assert all(ids), ran
    # From the oldest record on, each event once.
    assert len({m[1] for m in ids if m}) == len(ids), ran


async def test_ctrl_c_ends_the_session_and_its_env_file(printed: Printed) -> None:
    # Last of the module: the commands above ran against this session.
    env_file = printed.run_dir / "env"
    assert env_file.is_file()
    code = await _stop_drained(printed.dev, printed.drain)
    assert code == 0, printed.dev.transcript()
    assert not env_file.exists()
    assert printed.dev.broker_pid is not None
    assert _process_gone(printed.dev.broker_pid)


# -- without Java: tansu; with --registry: the test registry -----------------------------------


async def test_without_java_it_runs_on_tansu_and_says_what_does_not_work_there(
    tmp_path: Path,
) -> None:
    async with dev_mode(
        tmp_path,
        "--no-simulator",
        JAVA_HOME=str(tmp_path / "no-java"),
        BRIDGE_INGRESS_PORT=str(free_port()),
        BRIDGE_ADMIN_PORT=str(free_port()),
    ) as dev:
        await dev.read_until(lambda line: line.startswith(BANNER_END), START_TIMEOUT)
        dev.broker_pid = _broker_pid(dev)
        drain = asyncio.create_task(_drain(dev))
        assert dev.banner_value("kafka") == "tansu"
        (note,) = [line for line in dev.lines if "tansu runs instead of Apache Kafka" in line]
        assert "Apache Kafka needs a Java runtime (java on PATH, or JAVA_HOME)" in note
        assert (
            "On tansu: no transactions, no SASL, the Java consumer kit cannot connect, and"
            " `check` skips the authorized-operations checks." in note
        )
        source, commands = _printed_commands(dev)
        assert not [c for c in commands if c.startswith("java ")]
        assert any(
            "TicketTimeline, is left out: kafka-clients cannot connect to tansu" in line
            for line in dev.lines
        )
        # What it cannot verify on tansu is SKIP, never FAIL.
        ran = await _run_as_printed(source, _one(commands, "apizee-bridge check"))
        assert ran.code == 0, ran
        assert not [line for line in ran.lines if line.startswith("FAIL")], ran
        assert "not checked: the broker reports no authorized operations" in ran.line(
            "SKIP  rights of User:ANONYMOUS on"
        )
        assert await _stop_drained(dev, drain) == 0, dev.transcript()
        assert not (tmp_path / "run" / "env").exists()


async def test_registry_mode_in_one_command(tmp_path: Path) -> None:
    missing = registry_missing()
    if missing is not None:
        pytest.skip(f"the test registry cannot run here: {missing}")
    async with dev_mode(
        tmp_path,
        "--registry",
        "--broker",
        "tansu",  # the registry is what this test is about: the quick broker
        "--no-simulator",
        BRIDGE_INGRESS_PORT=str(free_port()),
        BRIDGE_ADMIN_PORT=str(free_port()),
    ) as dev:
        curl = await dev.read_until(lambda line: line.lstrip().startswith("curl "), START_TIMEOUT)
        await dev.read_until(lambda line: line.startswith(BANNER_END), 1.0)
        dev.broker_pid = _broker_pid(dev)
        registry = dev.banner_value("registry")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/apis/ccompat/v7", registry), registry
        env_file = (tmp_path / "run" / "env").read_text()
        assert f"export BRIDGE_SCHEMA_REGISTRY_URL={registry}" in env_file.splitlines()
        # The seed example lands Confluent-framed, and the console decodes it.
        url, headers, body = _curl_request(curl.strip())
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, headers=headers, data=body) as response,
        ):
            assert response.status == 200, await response.text()
        landed = await dev.read_until(lambda line: "media.OCRDone id=1266" in line, EVENT_TIMEOUT)
        assert "source=WEBHOOK" in landed
        drain = asyncio.create_task(_drain(dev))
        source, commands = _printed_commands(dev)
        ran = await _run_as_printed(source, _one(commands, "apizee-bridge check"))
        assert ran.code == 0, ran
        assert "reachable; 33 of the bridge's 33 subjects registered" in ran.line(
            f"OK    schema registry {registry}:"
        )
        assert await _stop_drained(dev, drain) == 0, dev.transcript()


async def test_registry_mode_without_the_registry_jar_says_how_to_build_it(
    tmp_path: Path,
) -> None:
    async with dev_mode(
        tmp_path, "--registry", APICURIO_REGISTRY_JAR=str(tmp_path / "missing.jar")
    ) as dev:
        async with asyncio.timeout(STOP_TIMEOUT):
            out, _ = await dev.process.communicate()
    assert dev.process.returncode == 1
    assert "starting" not in out.decode()  # nothing was started
    error = dev.stderr_path.read_text()
    assert "--registry: the test schema registry cannot run: no Apicurio Registry jar at" in error
    assert "run `make registry`" in error


# -- `make run` and Ctrl-C -----------------------------------------------------------------------


def _read_pty_until(master: int, marker: bytes, within: float) -> bytes:
    """What the terminal shows until `marker` (or the end, or the deadline)."""
    seen = b""
    deadline = time.monotonic() + within
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_make_run_exits_0_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C in the terminal of `make run`: the status is the program's (0), not make's 130."""
    make, setsid = shutil.which("make"), shutil.which("setsid")
    if make is None or setsid is None:
        pytest.skip(f"{'make' if make is None else 'setsid (util-linux)'} is not installed")
    if subprocess.run([make, "-q", "install"], cwd=REPO, check=False).returncode != 0:
        pytest.skip("`make install` is not up to date in this checkout: make run would reinstall")
    master, slave = pty.openpty()
    env = _env(
        # The terminal is what this test is about: the quickest session.
        BRIDGE_DEV_BROKER="tansu",
        BRIDGE_DEV_SIMULATOR="false",
        BRIDGE_DEV_RUN_DIR=str(tmp_path / "run"),
        BRIDGE_INGRESS_PORT=str(free_port()),
        BRIDGE_ADMIN_PORT=str(free_port()),
    )
    # A terminal of its own, as a newcomer's shell gives `make run`: setsid --ctty makes the
    # pseudo-terminal the controlling one, so ^C is the kernel's SIGINT to its foreground job.
    process = subprocess.Popen(
        [setsid, "--ctty", "--wait", make, "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    try:
        shown = _read_pty_until(master, BANNER_END.encode(), START_TIMEOUT)
        assert BANNER_END.encode() in shown, shown.decode(errors="replace")
        os.write(master, b"\x03")  # Ctrl-C, as typed
        code = process.wait(timeout=STOP_TIMEOUT)
        shown += _read_pty_until(master, b"\x00", 1.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = shown.decode(errors="replace")
    assert code == 0, text
    assert "apizee-bridge dev: stopped" in text
    assert "Interrupt" not in text  # make's "*** [Makefile: run] Interrupt"
    assert not (tmp_path / "run" / "env").exists()
