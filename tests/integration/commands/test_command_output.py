"""What the operator commands print: their result on stdout, and on stderr only their own
warnings and errors as readable lines, even with the service's BRIDGE_LOG_FORMAT=json and
BRIDGE_LOG_LEVEL=INFO in the environment (a pod's, where an operator runs them)."""

from __future__ import annotations

import json

import pytest

from bridge.devtools.simulator import ApizeeRestServer
from tests.integration.bridgeproc import bridge_settings, process_env, running_bridge, webhook
from tests.integration.commands.clikit import Ran, run_cli
from tests.integration.commands.test_replay import park, webhook_letter

pytestmark = pytest.mark.integration


def _json_lines(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            found.append(line)
    return found


def _only_human_output(ran: Ran) -> None:
    assert not _json_lines(ran.stdout), ran
    assert not _json_lines(ran.stderr), ran
    # Nothing below warning: progress is the commands' own output, not log lines.
    assert not [line for line in ran.stderr.splitlines() if "[info" in line], ran


async def test_commands_print_their_result_and_no_json_log_lines(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    rest = ApizeeRestServer(lambda _t: None, token="simulator-token")
    await rest.start()
    env = process_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_LOG_FORMAT="json",
        BRIDGE_LOG_LEVEL="INFO",
        BRIDGE_APIZEE_BASE_URL=rest.url,
        BRIDGE_APIZEE_TOKEN="simulator-token",
    )
    try:
        async with running_bridge(bridge_settings(kafka_bootstrap, topic_prefix)) as bridge:
            assert (await bridge.post(webhook("ticket.new", event_id=1, ticket_id=5))).status == 200
            assert (await bridge.post(b"{not json")).status == 400

            check = await run_cli("check", env=env)
            tail = await run_cli("tail", "--from-beginning", "--count", "2", env=env)
            dry_run = await run_cli("replay", "--from", "dlq", "--dry-run", env=env)
            park(kafka_bootstrap, topic_prefix, [webhook_letter(2, 6)])  # passes today
            replay = await run_cli("replay", "--from", "dlq", "--kind", "invalid_envelope", env=env)
            backfill = await run_cli("backfill", "--ticket", "5", env=env)
    finally:
        await rest.stop()

    for ran in (check, tail, dry_run, replay, backfill):
        _only_human_output(ran)
    assert check.lines[-1].startswith("check: "), check
    assert len(tail.lines) == 2, tail
    assert dry_run.lines[-1].startswith("replay: "), dry_run
    assert replay.lines[-1] == "replay: all 1 selected records handled", replay
    assert backfill.lines[-1].startswith("backfill: 1 tickets"), backfill
