"""The README's consumer example, run as it is written against what the bridge wrote to
Apache Kafka: in registry mode (Confluent framing, schemas fetched from Apicurio) and in the
default single-object mode. Only the deployment values at its top are replaced."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.devtools.devregistry import RegistryServer
from tests.integration.bridgeproc import bridge_settings, running_bridge
from tests.integration.registrykit import seed_webhooks
from tests.unit.conftest import REPO

pytestmark = pytest.mark.integration

_MARKER = "<!-- example: consumer -->\n```python\n"


def readme_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index(_MARKER) + len(_MARKER)
    return readme[start : readme.index("```", start)]


def deployed(code: str, **values: str | None) -> str:
    """The example with its deployment values (`name = ...` lines) set to `values`."""
    for name, value in values.items():
        pattern = re.compile(rf"^{name} = .*$", re.MULTILINE)
        assert pattern.search(code), f"the README example no longer sets {name}"
        code = pattern.sub(f"{name} = {value!r}", code, count=1)
    return code


async def _run_example(bootstrap: str, prefix: str, registry_url: str | None) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    code = deployed(
        readme_example(), bootstrap_servers=bootstrap, prefix=prefix, registry_url=registry_url
    )
    await asyncio.to_thread(exec, compile(code, "README.md (consumer example)", "exec"), namespace)
    return namespace


async def _post_and_read(
    kafka_bootstrap: str, prefix: str, registry_url: str | None, schema: dict[str, Any]
) -> None:
    tickets = {8101: seed_webhooks(8101, 950_000), 8102: seed_webhooks(8102, 960_000)[:5]}
    async with running_bridge(bridge_settings(kafka_bootstrap, prefix, schema=schema)) as bridge:
        for bodies in tickets.values():
            for body in bodies:
                reply = await bridge.post(body)
                assert reply.status in (200, 202), reply
    namespace = await _run_example(kafka_bootstrap, prefix, registry_url)
    timelines: defaultdict[int, list[tuple[datetime, str, int]]] = namespace["timelines"]
    assert set(timelines) == set(tickets)
    for ticket_id, bodies in tickets.items():
        expected = [
            (
                datetime.fromtimestamp(b["time"], UTC),
                b["props"]["eventType"],
                b["objectId"],
            )
            for b in bodies
        ]
        assert sorted(timelines[ticket_id]) == expected


async def test_readme_example_reads_registry_mode_records(
    kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer
) -> None:
    schema = {"registry_url": schema_registry.url}
    await _post_and_read(kafka_bootstrap, topic_prefix, schema_registry.url, schema)


async def test_readme_example_reads_single_object_records(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    await _post_and_read(kafka_bootstrap, topic_prefix, None, {})
