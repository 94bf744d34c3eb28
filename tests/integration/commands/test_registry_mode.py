"""The operator commands beside a bridge in registry mode (Apicurio Registry, Confluent wire
format): check asks the registry, tail decodes Confluent-framed records, replay publishes in
the framing the bridge writes."""

from __future__ import annotations

import pytest
from apizee_session_events import Decoder

from bridge.devtools.devregistry import CCOMPAT_PATH, RegistryServer
from tests.integration.bridgeproc import bridge_settings, running_bridge, webhook
from tests.integration.commands.clikit import command_env, run_cli
from tests.integration.commands.test_replay import park, summary_of, webhook_letter
from tests.integration.pollerkit import read_to_end

pytestmark = pytest.mark.integration


async def test_check_tail_and_replay_in_registry_mode(
    kafka_bootstrap: str, topic_prefix: str, schema_registry: RegistryServer
) -> None:
    url = schema_registry.url
    settings = bridge_settings(kafka_bootstrap, topic_prefix, schema={"registry_url": url})
    async with running_bridge(settings) as bridge:
        for event_id in (7101, 7102):
            reply = await bridge.post(webhook("media.OCRDone", {"text": "t"}, event_id=event_id))
            assert reply.status == 200, reply
    env = command_env(kafka_bootstrap, topic_prefix, BRIDGE_SCHEMA_REGISTRY_URL=url)

    ran = await run_cli("check", env=env)
    assert ran.code == 0, ran
    assert ran.line(f"OK    schema registry {url}:").endswith(
        "reachable; 33 of the bridge's 33 subjects registered"
    )
    # The registry's root, not its Confluent-compatible API: named, with the path to use.
    root = url.removesuffix(CCOMPAT_PATH)
    ran = await run_cli("check", env={**env, "BRIDGE_SCHEMA_REGISTRY_URL": root})
    assert ran.code == 1, ran
    line = ran.line(f"FAIL  schema registry {root}:")
    assert "no Confluent-compatible API there" in line
    assert "(Apicurio: .../apis/ccompat/v7)" in line

    ran = await run_cli("tail", "--from-beginning", "--topic", "media", "--count", "2", env=env)
    assert ran.code == 0, ran
    assert "UNDECODABLE" not in ran.stdout
    assert [line.split(" id=")[1].split()[0] for line in ran.lines] == ["7101", "7102"]

    park(kafka_bootstrap, topic_prefix, [webhook_letter(7103, 361, "media.pictureSent")])
    ran = await run_cli("replay", "--from", "dlq", env=env)
    assert ran.code == 0, ran
    assert summary_of(ran)["published"] == 1
    (replayed,) = [
        r
        for r in read_to_end(kafka_bootstrap, [f"{topic_prefix}.media"])
        if "replayed-from" in r.headers
    ]
    assert replayed.value is not None
    assert replayed.value[:1] == b"\x00", "not in the Confluent wire format the bridge writes"
    decoded = Decoder(url).decode_record(replayed.value)
    assert decoded.framing == "confluent"
    assert (decoded.event_type, decoded.fields["eventId"]) == ("media.pictureSent", 7103)
    assert decoded.fields["ticketId"] == 361
