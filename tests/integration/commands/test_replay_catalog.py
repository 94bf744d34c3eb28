"""A DLQ and an unknown topic filled by the fuzz corpus, replayed by the next version of the
bridge, whose catalog has learned two of the eventTypes the corpus sent.

The catalog is code: the next version is this package with `bridge/catalog.py` edited the way
a developer adds an eventType (one `EventSpec` line each), copied to a directory of its own and
run from there (`PYTHONPATH`), as a deployment of that version would run `replay`. The bridge
that took the corpus ran the current catalog. What the corpus did to each request is known
independently of the bridge (the fuzz generator classifies it), so the replay's figures are
checked against that.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

import bridge
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import running_bridge
from tests.integration.commands.clikit import Ran, command_env, run_cli
from tests.integration.commands.test_replay import by_event_id, summary_of
from tests.integration.pollerkit import read_to_end
from tests.integration.test_fuzz import (
    CONCURRENCY,
    SEED,
    Generator,
    Outcome,
    fuzz_settings,
    send_all,
)

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("REPLAY_FUZZ_EXAMPLES", "2000"))
# Two of the corpus's unknown eventTypes, learned by the next version: one of a new category
# (its topic does not exist yet), one of a category the bridge has.
LEARNED = {"whiteboard.drawn": "()", "media.hologram": '("mediaId",)'}
_LAST_SPEC = '    EventSpec("media.OCRDone", ("text",), "An OCR scan finished."),\n)'


def next_version(root: Path) -> Path:
    """This package with the catalog change, in a directory of its own."""
    target = root / "next-version"
    shutil.copytree(
        Path(bridge.__file__).parent,
        target / "bridge",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    catalog = target / "bridge" / "catalog.py"
    text = catalog.read_text(encoding="utf-8")
    assert text.count(_LAST_SPEC) == 1, "the catalog's last entry moved: update this test"
    added = "".join(
        f'    EventSpec("{event_type}", {attributes}, "Learned after the DLQ filled."),\n'
        for event_type, attributes in LEARNED.items()
    )
    catalog.write_text(text.replace(_LAST_SPEC, _LAST_SPEC[:-2] + "\n" + added + ")"))
    return target


def run_next(target: Path, script: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        # Not the checkout: `-c` puts the working directory first on sys.path.
        cwd=target,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


_DECODE = """
import base64, json, sys
from bridge.codec import Codec
from bridge.models import from_webhook, parse_webhook
codec = Codec()
for line in sys.stdin:
    pair = json.loads(line)
    event = codec.decode(base64.b64decode(pair["value"]))
    sent = from_webhook(parse_webhook(base64.b64decode(pair["body"])), event.received_at_ms)
    print(json.dumps([event.event_type, event.event_id, event == sent]))
"""


async def fuzz(kafka_bootstrap: str, prefix: str) -> list[Outcome]:
    settings = fuzz_settings(kafka_bootstrap, prefix)
    generator = Generator(SEED)
    async with running_bridge(settings) as running:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            running.session = session
            cases = (generator.case(n, time.time()) for n in range(EXAMPLES))
            return await send_all(running, cases)


def table(ran: Ran) -> str:
    return "\n".join(ran.lines)


async def test_the_next_version_replays_the_fuzzed_dlq_and_unknown_topic(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    outcomes = await fuzz(kafka_bootstrap, topic_prefix)
    topics = TopicNames(topic_prefix)
    # What the corpus parked, by the generator's own account.
    unknown_by_type: dict[str, set[int]] = {}
    for outcome in outcomes:
        if outcome.reply is not None and outcome.reply.status == 202:
            case = outcome.case
            assert case.event_type is not None
            assert case.event_id is not None
            unknown_by_type.setdefault(case.event_type, set()).add(case.event_id)
    learned_ids = {i for t in LEARNED for i in unknown_by_type.get(t, set())}
    assert learned_ids, "the corpus sent none of the learned types: choose others"
    still_unknown = {t: len(ids) for t, ids in unknown_by_type.items() if t not in LEARNED}
    parked = read_to_end(kafka_bootstrap, [topics.dlq])
    assert parked, "the corpus parked nothing on the DLQ"
    parked_kinds = Counter(r.headers["dlq-kind"].decode() for r in parked)
    categories = [topics.category(c) for c in ("consent", "ticket", "geo", "mediaDevice")]
    categories += [topics.category(c) for c in ("session", "media", "survey")]
    before = by_event_id(read_to_end(kafka_bootstrap, categories))

    target = next_version(tmp_path)
    learned = run_next(
        target,
        "import bridge.catalog as c, bridge.publisher as p;"
        f"print(sorted(t for t in {sorted(LEARNED)!r} if t in c.EVENTS), p.__file__)",
    )
    assert learned.split()[0:2] == ["['media.hologram',", "'whiteboard.drawn']"], learned
    assert learned.split()[2].startswith(str(target)), learned
    env = {**command_env(kafka_bootstrap, topic_prefix), "PYTHONPATH": str(target)}

    # 1. The learned types, from the unknown topic: all of them pass, each to its category.
    kinds = [arg for t in sorted(LEARNED) for arg in ("--kind", t)]
    ran = await run_cli("replay", "--from", "unknown", *kinds, env=env)
    print(f"\n{table(ran)}")
    assert ran.code == 0, ran
    figures = summary_of(ran)
    assert figures["selected"] == figures["published"] == len(learned_ids), ran
    assert figures["still failing"] == figures["skipped, already present"] == 0
    whiteboard = topics.category("whiteboard")
    replayed = read_to_end(kafka_bootstrap, [whiteboard, topics.category("media")])
    replayed = [r for r in replayed if "replayed-from" in r.headers]
    assert by_event_id(replayed) == dict.fromkeys(learned_ids, 1)
    assert {r.topic for r in replayed} == {
        topics.category(t.split(".")[0]) for t in LEARNED if unknown_by_type.get(t)
    }
    # Each decodes, with the next version's schemas, to what its webhook says today.
    sent = {o.case.event_id: o.case.body for o in outcomes if o.case.event_id in learned_ids}
    lines = "".join(
        json.dumps(
            {
                "value": base64.b64encode(r.value or b"").decode(),
                "body": base64.b64encode(sent[int(r.headers["event-id"])]).decode(),
            }
        )
        + "\n"
        for r in replayed
    )
    decoded = [json.loads(line) for line in run_next(target, _DECODE, lines).splitlines()]
    assert len(decoded) == len(replayed)
    assert all(same for _, _, same in decoded), [d for d in decoded if not d[2]][:5]
    assert {t for t, _, _ in decoded} <= set(LEARNED)

    # 2. Everything on the unknown topic (another selection: a group of its own): the learned
    # ones are there now, the others are still unknown, counted per type.
    ran = await run_cli(
        "replay", "--from", "unknown", "--group", f"{topic_prefix}.all-unknown", env=env
    )
    print(f"\n{table(ran)}")
    assert ran.code == 1, ran
    figures = summary_of(ran)
    assert figures["published"] == 0
    assert figures["skipped, already present"] == len(learned_ids)
    assert figures["still failing"] == sum(still_unknown.values())
    for event_type, count in still_unknown.items():
        line = ran.line(f"      unknown eventType {event_type} ")
        assert line.split()[-1] == str(count), line

    # 3. The DLQ: nothing in it was waiting for a catalog entry, everything still fails,
    # counted by reason; the reasons agree with the kinds the bridge parked them under.
    ran = await run_cli("replay", "--from", "dlq", env=env)
    print(f"\n{table(ran)}")
    assert ran.code == 1, ran
    figures = summary_of(ran)
    assert figures["selected"] == figures["still failing"] == len(parked), ran
    assert figures["published"] == figures["skipped, already present"] == 0
    reasons = {
        line.strip().rsplit(None, 1)[0]: int(line.split()[-1])
        for line in ran.lines
        if line.startswith("      ") and line.split()[-1].isdigit()
    }
    assert sum(reasons.values()) == len(parked)
    assert reasons.get("invalid_json", 0) == parked_kinds["invalid_json"]
    assert (
        sum(n for r, n in reasons.items() if r.startswith("invalid_envelope"))
        == (parked_kinds["invalid_envelope"])
    )
    assert len(reasons) < 80, "reasons are grouped, not one per record"

    # Nothing else was written anywhere.
    after = by_event_id(read_to_end(kafka_bootstrap, categories))
    assert after - before == Counter(
        i for i in learned_ids if i in unknown_by_type.get("media.hologram", set())
    )
    assert max(after.values()) == 1
    await asyncio.sleep(0)
