"""`apizee-bridge dev` (what `make run` runs), as a newcomer uses it: start it, paste the
printed curl, see the event land, Ctrl-C; the process exits 0 and takes its broker with it.
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

from bridge.devbroker import free_port

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0  # broker + bridge + topics; about 1 s on a laptop
EVENT_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
BANNER_END = "Ctrl-C stops"


def _command() -> list[str]:
    script = Path(sys.executable).with_name("apizee-bridge")
    if script.is_file():
        return [str(script), "dev"]
    return [sys.executable, "-m", "bridge.cli", "dev"]


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
async def dev_mode(tmp_path: Path, **settings: str) -> AsyncIterator[DevProcess]:
    stderr_path = tmp_path / "dev.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *_command(),
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
        match = re.match(r"\s+kafka\s+tansu \(memory only, pid (\d+)\)", line)
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


async def test_seed_example_lands_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
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
        assert "WEBHOOK" in landed
        assert "text='text captured by OCR'" in landed

        started = time.monotonic()
        code = await dev.stop(signal.SIGINT)
        assert code == 0, dev.transcript()
        assert time.monotonic() - started < STOP_TIMEOUT
        assert dev.lines[-1] == "apizee-bridge dev: stopped", dev.transcript()
        assert _process_gone(dev.broker_pid), f"tansu pid {dev.broker_pid} survived"
        # The token is for the terminal, never for the logs.
        assert token not in dev.stderr_path.read_text(errors="replace")


async def test_busy_default_port_falls_back_to_a_free_one(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        # Held here, or already taken by something else: busy either way.
        with contextlib.suppress(OSError):
            stack.enter_context(_listening("127.0.0.1", 8080))
        async with dev_mode(tmp_path, BRIDGE_ADMIN_PORT=str(free_port())) as dev:
            await dev.read_until(lambda line: line.startswith(BANNER_END), START_TIMEOUT)
            dev.broker_pid = _broker_pid(dev)
            webhook = dev.banner_value("webhook")
            assert not webhook.startswith("http://127.0.0.1:8080/"), webhook
            assert any("ingress port 8080 (the default) is busy" in line for line in dev.lines)
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
