"""`apizee-bridge dev` (what `make run` runs), as a newcomer uses it: start it, watch the
simulated sessions land (some through the poller), paste the printed curl, see the event land,
Ctrl-C; the process exits 0 and takes its broker with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bridge.devtools.devbroker import free_port

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
        # A failed test must not leave a bridge or a broker (its own session) running.
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
        assert _process_gone(dev.broker_pid), f"tansu pid {dev.broker_pid} survived"

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
