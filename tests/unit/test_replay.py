"""Replay's judgement of parked records (bridge/commands/replay.py), without a broker: what passes
today, what still fails and why, the selection, the summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import dlq
from bridge.codec import Codec, json_text
from bridge.commands.replay import Judge, Selection, Summary, parse_time
from bridge.errors import CodecError
from bridge.models import CanonicalEvent, Source, from_rest, from_webhook, parse_rest_item
from bridge.models import parse_webhook as parse
from tests.unit.strategies import rest_items, webhook_bodies

CODEC = Codec()
UNKNOWN = "zz.notInTheCatalog"


@dataclass
class Record:
    """A consumed record, as aiokafka hands it over."""

    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: bytes | None = None
    timestamp: int = 1_000
    topic: str = "p.dlq"
    partition: int = 0
    offset: int = 0


def dead_letter(body: bytes, **headers: str) -> Record:
    return Record(body, [(k.replace("_", "-"), v.encode()) for k, v in headers.items()])


def body(value: dict[str, Any]) -> bytes:
    return json_text(value).encode()


def as_generic(event: CanonicalEvent) -> bytes:
    """The record an older bridge, whose catalog lacked the type, wrote to `{prefix}.unknown`."""
    writer = CODEC.writers[""]
    record = {
        "eventId": event.event_id,
        "eventType": event.event_type,
        "eventCode": event.event_code,
        "ticketId": event.ticket_id,
        "conversationId": event.conversation_id,
        "occurredAt": event.occurred_at_ms,
        "source": event.source.value,
        "receivedAt": event.received_at_ms,
        "extra": json_text(event.extra) if event.extra else None,
    }
    out = BytesIO()
    out.write(writer.header)
    schemaless_writer(out, writer.parsed_for_writing, record)
    return out.getvalue()


def parked_unknown(event: CanonicalEvent) -> Record:
    return Record(as_generic(event), [("event-type", event.event_type.encode())], b"1")


# -- time and selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-11-25T16:00:00Z", 1_795_622_400_000),
        ("2026-11-25T17:00:00+01:00", 1_795_622_400_000),
        ("2026-11-25T16:00:00", 1_795_622_400_000),
        ("2026-11-25", 1_795_564_800_000),
        ("2026-11-25T16:00:00.250Z", 1_795_622_400_250),
    ],
)
def test_times_are_iso_8601_and_naive_means_utc(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize("text", ["yesterday", "1749581447", "2026-13-01", ""])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time(text)


def test_the_selection_takes_what_its_filters_name() -> None:
    selection = Selection(
        "dlq", since_ms=10, until_ms=20, kinds=frozenset({"a"}), tickets=frozenset({7})
    )
    assert selection.takes(10, "a", 7)
    assert selection.takes(20, "a", 7)
    assert not selection.takes(9, "a", 7)
    assert not selection.takes(21, "a", 7)
    assert not selection.takes(15, "b", 7)
    assert not selection.takes(15, "a", 8)
    assert not selection.takes(15, "a", None)
    assert Selection("dlq").takes(0, None, None)


def test_the_digest_names_the_selection_not_the_run() -> None:
    base = Selection("dlq", kinds=frozenset({"a", "b"}))
    assert base.digest == Selection("dlq", kinds=frozenset({"b", "a"})).digest
    others = [
        Selection("unknown", kinds=frozenset({"a", "b"})),
        Selection("dlq"),
        Selection("dlq", kinds=frozenset({"a", "b"}), tickets=frozenset({1})),
        Selection("dlq", kinds=frozenset({"a", "b"}), since_ms=0),
    ]
    assert len({base.digest, *(s.digest for s in others)}) == 5
    assert base.describe() == "--from dlq --kind a --kind b"


# -- dead letters ----------------------------------------------------------------------------


SEED = {
    "event": "create",
    "time": 1749581447,
    "object": "conversationevent",
    "objectId": 1266,
    "props": {
        "eventType": "media.OCRDone",
        "eventCode": 41,
        "conversationId": 548,
        "ticketId": 361,
        "text": "text captured by OCR",
    },
}


def test_a_webhook_body_that_passes_now_becomes_its_event() -> None:
    headers = dlq.webhook_headers(request_id="r", received_at_ms=5_000, ticket_id=None)
    record = dead_letter(body(SEED), dlq_kind="invalid_envelope", **headers)
    parked = Judge("dlq", CODEC).parked(record)
    assert (parked.kind, parked.ticket) == ("invalid_envelope", 361)  # from the body
    verdict = Judge("dlq", CODEC).judge(record)
    assert verdict.failures == []
    assert verdict.events == [from_webhook(parse(body(SEED)), 5_000)]


def test_a_webhook_body_that_still_fails_says_why_in_a_bounded_reason() -> None:
    judge = Judge("dlq", CODEC)
    broken = json.loads(json.dumps(SEED))
    del broken["props"]["ticketId"]
    cases = {
        b"\xff not json": "invalid_json",
        body(broken): "invalid_envelope: props.ticketId: Field required",
    }
    survey = json.loads(json.dumps(SEED))
    survey["props"].update(
        eventType="survey.answered", surveyAnswer={"questions": [{"id": 1}, {"id": "x"}]}
    )
    cases[body(survey)] = "invalid_envelope: props.surveyAnswer.questions.*.id:"
    for raw, reason in cases.items():
        verdict = judge.judge(dead_letter(raw, source="WEBHOOK"))
        assert verdict.events == []
        assert len(verdict.failures) == 1
        assert verdict.failures[0].startswith(reason), verdict.failures


def test_a_rest_item_parked_by_the_poller_becomes_a_poller_event_of_its_ticket() -> None:
    item = {
        "id": 9,
        "eventType": "media.pictureTaken",
        "timestamp": 1749581447,
        "conversationId": 5,
        "data": {"mediaId": 7},
    }
    headers = dlq.poller_headers(request_id="r", received_at_ms=6_000, ticket_id=77)
    verdict = Judge("dlq", CODEC).judge(dead_letter(body(item), **headers))
    assert verdict.events == [from_rest(parse_rest_item(item), 77, 6_000, Source.POLLER)]
    # A whole body: each item on its own.
    whole = body([item, {"id": "x"}])  # type: ignore[arg-type]
    verdict = Judge("dlq", CODEC).judge(dead_letter(whole, **headers))
    assert [e.event_id for e in verdict.events] == [9]
    assert len(verdict.failures) == 1
    # Without its ticket, a REST item cannot be an event.
    verdict = Judge("dlq", CODEC).judge(dead_letter(body(item), source="POLLER"))
    assert verdict.failures == ["no ticket-id header: the polled ticket is unknown"]


def test_an_event_the_schemas_still_cannot_hold_fails_instead_of_stopping_the_run() -> None:
    class Broken(Codec):
        def encode(self, event: CanonicalEvent) -> bytes:
            if event.event_id == 1266:
                raise CodecError("cannot encode media.OCRDone: a defect")
            return super().encode(event)

    record = dead_letter(body(SEED), dlq_kind="encode_error", source="WEBHOOK")
    verdict = Judge("dlq", Broken()).judge(record)
    assert verdict.events == []
    assert verdict.failures == ["encode_error: cannot encode media.OCRDone: a defect"]


# -- unknown events --------------------------------------------------------------------------


def _as_unknown(known: CanonicalEvent, raw: bytes, from_rest_item: bool) -> CanonicalEvent:
    """What the ingress (or the poller) made of the event while its type was not known."""
    if from_rest_item:
        item = json.loads(raw)
        item["eventType"] = UNKNOWN
        unknown = from_rest(parse_rest_item(item), known.ticket_id, known.received_at_ms)
    else:
        envelope = json.loads(raw)
        envelope["props"]["eventType"] = UNKNOWN
        unknown = from_webhook(parse(body(envelope)), known.received_at_ms)
    return replace(unknown, event_type=known.event_type)


@settings(max_examples=300)
@given(
    webhook_bodies(), st.dictionaries(st.sampled_from(["trace", "v"]), st.integers(), max_size=2)
)
def test_an_unknown_webhook_event_of_a_type_learned_since_is_what_the_ingress_makes_now(
    envelope: dict[str, Any], around: dict[str, Any]
) -> None:
    raw = json.dumps({**around, **envelope}).encode()
    now = from_webhook(parse(raw), 1_234)
    verdict = Judge("unknown", CODEC).judge(parked_unknown(_as_unknown(now, raw, False)))
    assert verdict.failures == []
    assert verdict.events == [now]


@settings(max_examples=300)
@given(rest_items())
def test_an_unknown_rest_event_of_a_type_learned_since_is_what_the_poller_makes_now(
    item: dict[str, Any],
) -> None:
    raw = json.dumps(item).encode()
    now = from_rest(parse_rest_item(json.loads(raw)), 361, 1_234, Source.POLLER)
    verdict = Judge("unknown", CODEC).judge(parked_unknown(_as_unknown(now, raw, True)))
    assert verdict.failures == []
    assert verdict.events == [now]


def test_an_unknown_event_still_unknown_or_now_invalid_stays() -> None:
    judge = Judge("unknown", CODEC)
    still = CanonicalEvent(1, UNKNOWN, None, 2, 3, 0, Source.WEBHOOK, 0, extra={"k": 1})
    assert judge.judge(parked_unknown(still)).failures == [f"unknown eventType {UNKNOWN}"]
    # Learned since, but the catalog types an attribute this payload had wrong.
    typed = replace(still, event_type="media.pictureTaken", extra={"mediaId": "not a number"})
    (reason,) = judge.judge(parked_unknown(typed)).failures
    assert reason.startswith("invalid_envelope: props.mediaId:")
    assert judge.judge(Record(b"\x00\x01garbage")).failures[0].startswith("undecodable:")


# -- the summary -----------------------------------------------------------------------------


def test_the_summary_table_and_its_exit_code() -> None:
    summary = Summary("p.dlq", "g", Selection("dlq"), dry_run=False)
    summary.read, summary.selected, summary.published, summary.present = 5, 4, 2, 1
    summary.failing = 1
    summary.by_topic.update({"p.ticket": 2})
    summary.reasons.update(["invalid_json"])
    lines = summary.table()
    assert lines[0] == "replay --from dlq: from p.dlq, group g"
    assert any(line.split() == ["published", "2", "p.ticket", "2"] for line in lines), lines
    assert any(line.split() == ["invalid_json", "1"] for line in lines), lines
    assert summary.exit_code == 1
    assert summary.verdict() == "replay: 1 of 4 selected records still fail; they stay on p.dlq"
    summary.failing = 0
    assert summary.exit_code == 0
    summary.stopped = "broker gone"
    assert summary.exit_code == 1
