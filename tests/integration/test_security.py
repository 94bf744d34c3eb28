"""Security checks on the real CLI process: secrets never show in its output, authentication
guards the one public route, and the admin endpoints are not served on the public port.

The bridge runs as `apizee-bridge run` with every secret it has set (HMAC secret, token, Basic
password, Apizee token; the SASL password in a run of its own), its stdout and stderr both
captured. Requests carry wrong credentials that *contain* the real secrets, so that logging
what a sender presented would leak them too, and the poller is pointed at a simulated Apizee
that refuses its token, so that the client's error path runs as well.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from bridge.auth import sign
from bridge.config import REDACTED
from bridge.devtools.simulator import Simulator
from tests.integration.bridgeproc import (
    HMAC_HEADER,
    START_TIMEOUT,
    TOKEN_HEADER,
    BridgeClient,
    bridge_command,
    process_env,
    wait_for,
    webhook,
)

pytestmark = pytest.mark.integration

TOKEN: Final = "sec-token-Q7w9Z2x"
HMAC_SECRET: Final = "sec-hmac-K3j8L1p"
BASIC_USER: Final = "apizee-hooks"
BASIC_PASSWORD: Final = "sec-basic-M4n6B0v"
APIZEE_TOKEN: Final = "sec-apizee-R5t7Y9u"
SASL_PASSWORD: Final = "sec-sasl-H2g4F6d"
SECRETS: Final = (TOKEN, HMAC_SECRET, BASIC_PASSWORD, APIZEE_TOKEN, SASL_PASSWORD)
PATH: Final = "/webhooks/apizee"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _leaks(text: str | bytes) -> list[str]:
    """The secrets (or their base64 / hex forms) found in `text`."""
    data = text if isinstance(text, bytes) else text.encode(errors="surrogateescape")
    found = []
    for secret in SECRETS:
        forms = {
            secret.encode(),
            base64.b64encode(secret.encode()).rstrip(b"="),
            secret.encode().hex().encode(),
        }
        if any(form in data for form in forms):
            found.append(secret)
    # The Basic pair as a whole, as the header carries it.
    if base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).rstrip(b"=") in data:
        found.append("basic pair")
    return found


class Captured:
    """A CLI process with stdout and stderr both written to one file."""

    def __init__(self, process: asyncio.subprocess.Process, path: Path) -> None:
        self.process = process
        self.path = path

    @classmethod
    async def start(cls, args: list[str], env: Mapping[str, str], path: Path) -> Captured:
        with path.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *bridge_command(*args),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        return cls(process, path)

    def output(self) -> bytes:
        return self.path.read_bytes()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    found.append(record)
        return found

    async def wait_event(self, name: str, within: float = START_TIMEOUT) -> dict[str, Any]:
        async def seen() -> bool:
            if self.process.returncode is not None:
                raise AssertionError(f"exited: {self.output()[-3000:]!r}")
            return bool(self.events(name))

        await wait_for(seen, within, f"a {name!r} log line")
        return self.events(name)[0]

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await self.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()


@contextlib.asynccontextmanager
async def captured(args: list[str], env: Mapping[str, str], path: Path) -> AsyncIterator[Captured]:
    process = await Captured.start(args, env, path)
    try:
        yield process
    finally:
        await process.stop()


def _env(kafka_bootstrap: str, topic_prefix: str, **extra: str) -> dict[str, str]:
    return process_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_AUTH_TOKEN=TOKEN,
        BRIDGE_AUTH_HMAC_SECRET=HMAC_SECRET,
        BRIDGE_AUTH_BASIC_USERNAME=BASIC_USER,
        BRIDGE_AUTH_BASIC_PASSWORD=BASIC_PASSWORD,
        **extra,
    )


async def _run_cli(args: list[str], env: Mapping[str, str]) -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        *bridge_command(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output


async def _exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    async with session.request(method, url, data=body, headers=headers) as response:
        return response.status, await response.read()


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
async def test_no_secret_in_logs_metrics_config_or_answers(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, log_level: str
) -> None:
    async with Simulator(tickets=1, seed=3, rest_token="the-simulator-wants-another") as sim:
        env = _env(
            kafka_bootstrap,
            topic_prefix,
            BRIDGE_APIZEE_BASE_URL=sim.base_url,
            BRIDGE_APIZEE_TOKEN=APIZEE_TOKEN,
            BRIDGE_APIZEE_MAX_RETRIES="0",
            BRIDGE_POLLER_INTERVAL_SECONDS="0.5",
            BRIDGE_POLLER_GROUP_ID=f"{topic_prefix}-group",
            BRIDGE_LOG_LEVEL=log_level,
        )
        answers: dict[str, tuple[int, bytes]] = {}
        async with (
            captured(["run"], env, tmp_path / "bridge.out") as bridge,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            where = await bridge.wait_event("listening")
            url = where["webhook_url"]
            admin = f"http://127.0.0.1:{where['admin_port']}"
            client = BridgeClient(url, admin, session)
            await client.wait_ready()
            body = json.dumps(webhook("ticket.new", event_id=77, ticket_id=4242)).encode()
            stale = int(time.time()) - 10_000
            json_type = {"Content-Type": "application/json"}
            attempts: dict[str, tuple[str, dict[str, str]]] = {
                "token ok": (url, {TOKEN_HEADER: TOKEN}),
                "token wrong": (url, {TOKEN_HEADER: TOKEN + "-not"}),
                "token prefixed": (url, {TOKEN_HEADER: "x" + TOKEN}),
                "query ok": (f"{url}?token={TOKEN}", {}),
                "query wrong": (f"{url}?token={TOKEN}-not", {}),
                "hmac ok": (url, {HMAC_HEADER: sign(HMAC_SECRET.encode(), body, None, "hex")}),
                "hmac is the secret": (url, {HMAC_HEADER: HMAC_SECRET}),
                "hmac of another message": (
                    url,
                    {HMAC_HEADER: sign(HMAC_SECRET.encode(), body, stale, "hex")},
                ),
                "basic ok": (url, {"Authorization": _basic(BASIC_USER, BASIC_PASSWORD)}),
                "basic wrong": (url, {"Authorization": _basic(BASIC_USER, BASIC_PASSWORD + "!")}),
                "basic user is a secret": (url, {"Authorization": _basic(TOKEN, HMAC_SECRET)}),
                "no credentials": (url, {}),
            }
            for name, (target, headers) in attempts.items():
                answers[name] = await _exchange(
                    session, "POST", target, body=body, headers={**json_type, **headers}
                )
            # A bad body from an authenticated sender: 400, reason in the answer.
            answers["invalid"] = await _exchange(
                session, "POST", url, body=b"{nope", headers={**json_type, TOKEN_HEADER: TOKEN}
            )
            # The poller polls ticket 4242, Apizee refuses the token: the error path logs.
            await bridge.wait_event("apizee_auth_failed", within=30)
            for path in ("/metrics", "/healthz", "/readyz"):
                answers[path] = await _exchange(session, "GET", admin + path)

        config_code, config_out = await _run_cli(["config"], env)
        sasl_env = {
            **env,
            "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "BRIDGE_KAFKA_SASL_MECHANISM": "PLAIN",
            "BRIDGE_KAFKA_SASL_USERNAME": "bridge",
            "BRIDGE_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        }
        sasl_code, sasl_config = await _run_cli(["config"], sasl_env)
        # The SASL password in use: a run against a broker that does not speak SASL.
        async with captured(["run"], sasl_env, tmp_path / "sasl.out") as sasl_run:
            await asyncio.sleep(6)

    statuses = {name: status for name, (status, _) in answers.items()}
    assert statuses == {
        "token ok": 200,
        "token wrong": 401,
        "token prefixed": 401,
        "query ok": 200,  # the same event: a duplicate, answered 200
        "query wrong": 401,
        "hmac ok": 200,
        "hmac is the secret": 401,
        "hmac of another message": 401,
        "basic ok": 200,
        "basic wrong": 401,
        "basic user is a secret": 401,
        "no credentials": 401,
        "invalid": 400,
        "/metrics": 200,
        "/healthz": 200,
        "/readyz": 200,
    }, statuses
    for name, (_, content) in answers.items():
        assert not _leaks(content), f"{name}: answer leaks {_leaks(content)}"
    metrics = answers["/metrics"][1].decode()
    assert "apizee_bridge_webhook_requests_total" in metrics  # a real scrape, not an error
    output = bridge.output()
    assert len(output.splitlines()) > 10, output  # the logs were captured
    if log_level == "DEBUG":
        assert bridge.events("webhook_refused"), "refusals not logged at DEBUG?"
    assert not _leaks(output), f"bridge output leaks {_leaks(output)}"

    assert config_code == 0, config_out
    assert sasl_code == 0, sasl_config
    for out in (config_out, sasl_config):
        assert not _leaks(out), f"`apizee-bridge config` leaks {_leaks(out)}"
    shown = json.loads(sasl_config)
    assert shown["auth"]["token"] == REDACTED
    assert shown["auth"]["hmac_secret"] == REDACTED
    assert shown["auth"]["basic_password"] == REDACTED
    assert shown["apizee"]["token"] == REDACTED
    assert shown["kafka"]["sasl_password"] == REDACTED
    sasl_output = sasl_run.output()
    assert sasl_output.strip(), "the SASL run said nothing"
    assert not _leaks(sasl_output), f"SASL run output leaks {_leaks(sasl_output)}"


# -- routes ------------------------------------------------------------------------------

_OTHER_PATHS = [
    "/",
    "/metrics",
    "/healthz",
    "/readyz",
    PATH + "/",
    PATH.upper(),
    PATH + "x",
    PATH + "/..",
    "/webhooks",
    "/webhooks/apizee%2F",
    "//webhooks/apizee",
    "/admin",
    "/.env",
    "/static/../../etc/passwd",
]
_METHODS = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS", "POST"]


async def test_auth_guards_the_one_public_route_and_admin_is_not_public(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, topic_prefix)
    body = json.dumps(webhook("consent.accepted", event_id=5)).encode()
    json_type = {"Content-Type": "application/json"}
    good = {**json_type, TOKEN_HEADER: TOKEN}
    async with (
        captured(["run"], env, tmp_path / "bridge.out") as bridge,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
    ):
        where = await bridge.wait_event("listening")
        public = where["webhook_url"].removesuffix(PATH)
        admin = f"http://127.0.0.1:{where['admin_port']}"
        await BridgeClient(where["webhook_url"], admin, session).wait_ready()

        webhook_no_creds = await _exchange(
            session, "POST", public + PATH, body=body, headers=json_type
        )
        webhook_query = await _exchange(
            session, "POST", public + PATH + "?debug=1&admin=true", body=body, headers=json_type
        )
        other_methods = {
            method: (await _exchange(session, method, public + PATH, body=body, headers=good))[0]
            for method in _METHODS
            if method != "POST"
        }
        other_paths: dict[str, int] = {}
        for path in _OTHER_PATHS:
            for method in _METHODS:
                for name, headers in (("creds", good), ("none", json_type)):
                    status, _ = await _exchange(
                        session, method, public + path, body=body, headers=headers
                    )
                    other_paths[f"{method} {path} {name}"] = status
        admin_answers = {
            path: (await _exchange(session, "GET", admin + path))[0]
            for path in ("/metrics", "/healthz", "/readyz")
        }
        webhook_on_admin = await _exchange(session, "POST", admin + PATH, body=body, headers=good)
        accepted = await _exchange(session, "POST", public + PATH, body=body, headers=good)

    assert webhook_no_creds[0] == 401, webhook_no_creds
    assert webhook_query[0] == 401, webhook_query
    # Every other method on the webhook path: not allowed, even with credentials.
    assert set(other_methods.values()) == {405}, other_methods
    served = {k: v for k, v in other_paths.items() if v not in (404, 405)}
    assert not served, served
    # The admin endpoints are served, but only on the admin port.
    assert admin_answers == {"/metrics": 200, "/healthz": 200, "/readyz": 200}
    assert webhook_on_admin[0] in (404, 405), webhook_on_admin
    # And the route itself works with credentials: the refusals above were the routing.
    assert accepted[0] == 200, accepted


async def test_with_the_access_log_on_requests_are_answered_and_no_secret_is_logged(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, topic_prefix, BRIDGE_INGRESS_ACCESS_LOG="true")
    body = json.dumps(webhook("consent.accepted", event_id=6)).encode()
    json_type = {"Content-Type": "application/json"}
    async with (
        captured(["run"], env, tmp_path / "bridge.out") as bridge,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
    ):
        where = await bridge.wait_event("listening")
        url = where["webhook_url"]
        await BridgeClient(url, f"http://127.0.0.1:{where['admin_port']}", session).wait_ready()
        answers = []
        for query in (f"?token={TOKEN}", f"?token={TOKEN}-not"):
            try:
                answers.append(
                    (await _exchange(session, "POST", url + query, body=body, headers=json_type))[0]
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                answers.append(type(exc).__name__)
        await asyncio.sleep(0.5)  # let the access log lines be written

    assert answers == [200, 401], answers
    output = bridge.output()
    assert not _leaks(output), f"bridge output leaks {_leaks(output)}"
