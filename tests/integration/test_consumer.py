"""The consumer package's example (consumers/python/examples/print_events.py, the same code as
in its README) run as a newcomer runs it: a process of its own with the bridge's variables in
its environment, against what a bridge wrote to Apache Kafka, in the default single-object
mode and in registry mode (Confluent framing, schemas fetched from Apicurio)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.catalog import EVENTS
from bridge.devtools.devregistry import RegistryServer
from tests.integration.bridgeproc import bridge_env, bridge_settings, running_bridge
from tests.integration.registrykit import UNKNOWN_TYPE, seed_webhooks
from tests.unit.conftest import REPO

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "consumers" / "python" / "examples" / "print_events.py"
# The group join, reading 8 topics, then the example's own 10 s without a record.
EXAMPLE_TIMEOUT = 120.0


async def _run_example(cwd: Path, **variables: str) -> tuple[int, list[str], str]:
    """(exit status, stdout lines, stderr) of the example run with `variables`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        cwd=cwd,  # not the repository: the installed package, not a checkout, is imported
        env=bridge_env(**variables),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode(errors="replace")


async def _post_and_print(
    tmp_path: Path, bootstrap: str, prefix: str, registry_url: str | None
) -> None:
    bodies = seed_webhooks(8101, 950_000) + seed_webhooks(8102, 960_000)[:5]
    schema = {"registry_url": registry_url} if registry_url else {}
    async with running_bridge(bridge_settings(bootstrap, prefix, schema=schema)) as bridge:
        for body in bodies:
            reply = await bridge.post(body)
            assert reply.status in (200, 202), reply  # 202: an unknown eventType, stored

    variables = {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "BRIDGE_KAFKA_TOPIC_PREFIX": prefix}
    if registry_url:
        variables["BRIDGE_SCHEMA_REGISTRY_URL"] = registry_url
    status, lines, err = await _run_example(tmp_path, **variables)
    assert status == 0, err

    expected = []
    for body in bodies:
        props = body["props"]
        event_type = props["eventType"]
        category = "unknown" if event_type == UNKNOWN_TYPE else EVENTS[event_type].category
        occurred = datetime.fromtimestamp(body["time"], UTC).isoformat()
        expected.append(
            f"{prefix}.{category} {event_type} ticketId={props['ticketId']}"
            f" eventId={body['objectId']} occurredAt={occurred}"
        )
    assert sorted(lines) == sorted(expected)


async def test_example_prints_registry_mode_records(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer
) -> None:
    await _post_and_print(tmp_path, kafka_bootstrap, topic_prefix, schema_registry.url)


async def test_example_prints_single_object_records(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    await _post_and_print(tmp_path, kafka_bootstrap, topic_prefix, None)


async def test_example_fails_in_registry_mode_without_the_registry(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer
) -> None:
    """A newcomer who forgets BRIDGE_SCHEMA_REGISTRY_URL is told what is missing."""
    schema = {"registry_url": schema_registry.url}
    settings = bridge_settings(kafka_bootstrap, topic_prefix, schema=schema)
    async with running_bridge(settings) as bridge:
        reply = await bridge.post(seed_webhooks(8103, 965_000)[0])
        assert reply.status == 200, reply
    status, _, err = await _run_example(
        tmp_path,
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        BRIDGE_KAFKA_TOPIC_PREFIX=topic_prefix,
    )
    assert status == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("apizee_session_events.errors.UnknownSchemaError: "), last
    assert f"{topic_prefix}." in last
    assert "offset 0" in last
    assert "no schema with registry id" in last
    assert "has no registry_url" in last
