"""Run the bridge for integration tests: in this event loop (`serve()`) or as the CLI process.

In process: `running_bridge()` runs `bridge.app.serve` as a task on ports 0 and hands back the
bound ports and a client session. As a process: `BridgeProcess` runs `apizee-bridge run` with
`BRIDGE_*` variables, collects its JSON log lines from stderr and reads the ports it bound from
its `listening` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict

from bridge.app import Listening, serve
from bridge.auth import sign
from bridge.config import BridgeSettings, load_settings
from bridge.publisher import TopicNames

TOKEN: Final = "integration-token-0123456789"
HMAC_SECRET: Final = "integration-hmac-secret"
TOKEN_HEADER: Final = "X-Webhook-Token"
HMAC_HEADER: Final = "X-Apizee-Signature"

START_TIMEOUT: Final = 30.0  # bridge up and topics created; about 1 s on an idle laptop
STOP_TIMEOUT: Final = 30.0

JsonBody = Mapping[str, Any]


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def bridge_settings(bootstrap: str, prefix: str, **sections: Mapping[str, Any]) -> BridgeSettings:
    """Loopback ports picked by the kernel, token + HMAC auth, no poller; `sections` merge in."""
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "topic_partitions": 3,
        },
        "ingress": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "auth": {"token": TOKEN, "hmac_secret": HMAC_SECRET},
        # Overrides win over the environment: no poller whatever the caller's BRIDGE_* say.
        "apizee": {"base_url": None},
    }
    return load_settings(**_merge(base, sections))


def body_bytes(body: bytes | JsonBody) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def signature_headers(body: bytes) -> dict[str, str]:
    return {HMAC_HEADER: sign(HMAC_SECRET.encode(), body, None, "hex")}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


def webhook(
    event_type: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    event_id: int,
    ticket_id: int = 361,
    conversation_id: int = 548,
    event_code: int | None = 41,
    time: float = 1749581447,
) -> dict[str, Any]:
    """A `conversationevent.create` body shaped like the seed's example."""
    props: dict[str, Any] = {
        "eventType": event_type,
        "conversationId": conversation_id,
        "ticketId": ticket_id,
        **(attributes or {}),
    }
    if event_code is not None:
        props["eventCode"] = event_code
    return {
        "event": "create",
        "time": time,
        "object": "conversationevent",
        "objectId": event_id,
        "props": props,
    }


def assert_json_error(reply: Reply, status: int, label: str) -> dict[str, Any]:
    """An error answer: the status, a JSON body with that status label and a reason."""
    assert reply.status == status, reply
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["status"] == label, body
    assert isinstance(body["reason"], str), body
    assert body["reason"].strip(), body
    return body


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    interval: float = 0.1,
    last: list[Any] | None = None,
) -> None:
    """Poll `condition` until it holds; fail naming `what` when `within` seconds pass.

    `what` may hold one `{}`, filled with `last[0]` (the condition's latest observation).
    """
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return
        if time.monotonic() >= deadline:
            seen = "" if last is None else str(last[0])
            raise AssertionError(f"not within {within:g}s: {what.replace('{}', seen)}")
        await asyncio.sleep(interval)


@dataclass
class BridgeClient:
    """HTTP access to one running bridge (in process or not)."""

    webhook_url: str
    admin_url: str
    session: aiohttp.ClientSession

    async def post(
        self,
        body: bytes | JsonBody,
        *,
        token: str | None = TOKEN,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        """POST a webhook; the shared token in its header unless `token` is None."""
        all_headers: dict[str, str] = {}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if token is not None:
            all_headers[TOKEN_HEADER] = token
        all_headers.update(headers or {})
        async with self.session.post(
            self.webhook_url,
            data=body_bytes(body),
            headers=all_headers,
            params=params,
            # Without this aiohttp sets application/octet-stream when Content-Type is absent.
            skip_auto_headers=["Content-Type"],
        ) as response:
            return Reply(response.status, CIMultiDict(response.headers), await response.read())

    async def get(self, url: str) -> Reply:
        async with self.session.get(url) as response:
            return Reply(response.status, CIMultiDict(response.headers), await response.read())

    async def admin(self, path: str) -> Reply:
        return await self.get(f"{self.admin_url}{path}")

    async def readyz(self) -> Reply | None:
        """/readyz, or None while the admin port does not answer."""
        try:
            return await self.admin("/readyz")
        except aiohttp.ClientError:
            return None

    async def wait_ready(self, within: float = START_TIMEOUT, ready: bool = True) -> None:
        """Until /readyz answers 200 (or 503 with `ready=False`)."""
        want = 200 if ready else 503
        last: list[Reply | None] = [None]

        async def check() -> bool:
            last[0] = await self.readyz()
            return last[0] is not None and last[0].status == want

        await wait_for(check, within, f"/readyz answers {want} (last: {{}})", last=last)


@dataclass
class InProcessBridge(BridgeClient):
    settings: BridgeSettings = field(kw_only=True)
    listening: Listening = field(kw_only=True)
    task: asyncio.Task[None] = field(kw_only=True)

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.settings.kafka.topic_prefix)


@contextlib.asynccontextmanager
async def running_bridge(
    settings: BridgeSettings, *, wait_ready: bool = True
) -> AsyncIterator[InProcessBridge]:
    """`serve(settings)` as a task of this loop; stopped (and awaited) on exit."""
    stop = asyncio.Event()
    listening: asyncio.Future[Listening] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop=stop, on_listening=listening.set_result))
    try:
        done, _ = await asyncio.wait(
            {task, listening}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # raises what made serve() fail
            raise AssertionError("serve() returned before listening")
        if listening not in done:
            raise AssertionError(f"the bridge did not listen within {START_TIMEOUT}s")
        where = listening.result()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            bridge = InProcessBridge(
                webhook_url=where.webhook_url,
                admin_url=f"http://127.0.0.1:{where.admin_port}",
                session=session,
                settings=settings,
                listening=where,
                task=task,
            )
            if wait_ready:
                await bridge.wait_ready()
            yield bridge
    finally:
        stop.set()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


# -- the CLI as a process ----------------------------------------------------------------


def bridge_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("apizee-bridge")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "bridge.cli", *args]


def bridge_env(**variables: str) -> dict[str, str]:
    """This process's environment minus every BRIDGE_* variable, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    env.update(variables)
    return env


def process_env(bootstrap: str, prefix: str, **variables: str) -> dict[str, str]:
    """What `bridge_settings` sets, as variables (ports 0), then `variables` over them."""
    env = bridge_env(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        BRIDGE_KAFKA_TOPIC_PREFIX=prefix,
        BRIDGE_KAFKA_TOPIC_PARTITIONS="3",
        BRIDGE_INGRESS_HOST="127.0.0.1",
        BRIDGE_INGRESS_PORT="0",
        BRIDGE_ADMIN_HOST="127.0.0.1",
        BRIDGE_ADMIN_PORT="0",
        BRIDGE_AUTH_TOKEN=TOKEN,
        BRIDGE_LOG_LEVEL="INFO",
        BRIDGE_LOG_FORMAT="json",
    )
    env.update(variables)
    return env


@dataclass
class BridgeProcess:
    """`apizee-bridge run ...` with its stderr read line by line (and kept in a file)."""

    process: asyncio.subprocess.Process
    log_path: Path
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(
        cls,
        args: list[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        launcher: Sequence[str] = (),
    ) -> BridgeProcess:
        """`launcher` (e.g. `podman run ... IMAGE`) runs the CLI instead of this venv's script."""
        command = [*launcher, *args] if launcher else bridge_command(*args)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            # Its own process group: workers it spawns can be found and ended with it.
            start_new_session=True,
        )
        bridge = cls(process, log_path)
        bridge._reader = asyncio.create_task(bridge._read())
        return bridge

    async def _read(self) -> None:
        assert self.process.stderr is not None
        with self.log_path.open("ab") as log:
            while raw := await self.process.stderr.readline():
                log.write(raw)
                log.flush()
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.set()
        self._changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is `name`."""
        found = []
        for line in self.lines:
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    found.append(record)
        return found

    async def wait_events(self, name: str, count: int, within: float) -> list[dict[str, Any]]:
        """Until `count` log lines of event `name` were written; fail if the process exits."""
        deadline = time.monotonic() + within
        while True:
            self._changed.clear()  # before looking: a line read meanwhile wakes the wait
            found = self.events(name)
            if len(found) >= count:
                return found
            if self._reader is not None and self._reader.done():
                raise AssertionError(f"exited before {count} {name!r} lines; {self.transcript()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"not {count} {name!r} lines in {within}s; {self.transcript()}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def stopped(self, within: float) -> int:
        """Wait for exit (and the last log line); the exit status."""
        async with asyncio.timeout(within):
            code = await self.process.wait()
            if self._reader is not None:
                await self._reader
        return code

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def kill(self) -> None:
        """SIGKILL the process and whatever is left of its group (its workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.returncode is None:
            await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)

    def transcript(self, last: int = 60) -> str:
        return "stderr (tail):\n" + "\n".join(self.lines[-last:])


@contextlib.asynccontextmanager
async def bridge_process(
    args: list[str], env: Mapping[str, str], log_path: Path, *, launcher: Sequence[str] = ()
) -> AsyncIterator[BridgeProcess]:
    """A bridge process that is killed on exit if the test left it running."""
    bridge = await BridgeProcess.start(args, env, log_path, launcher=launcher)
    try:
        yield bridge
    finally:
        await bridge.kill()
