"""Edge validation and normalization (bridge/models.py) on Apizee's examples and beyond."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.catalog import EVENTS
from bridge.codec import Codec, json_text
from bridge.errors import InvalidEventError
from bridge.models import (
    ENVELOPE_EXTRA_KEY,
    CanonicalEvent,
    Source,
    from_rest,
    from_webhook,
    parse_rest_item,
    parse_webhook,
    split_extra,
)
from tests.unit.conftest import load_fixture, webhook
from tests.unit.strategies import (
    COMMON_PROPS,
    ENVELOPE_FIELDS,
    json_values,
    rest_items,
    webhook_bodies,
)

RECEIVED = 1_749_581_448_123
_CODEC = Codec()


def normalize_body(body: dict[str, Any] | bytes) -> CanonicalEvent:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return from_webhook(parse_webhook(raw), RECEIVED)


def test_seed_webhook_example_normalizes_to_the_canonical_event() -> None:
    event = normalize_body(load_fixture("seed_webhook_example.json"))
    assert event == CanonicalEvent(
        event_id=1266,
        event_type="media.OCRDone",
        event_code=41,
        ticket_id=361,
        conversation_id=548,
        occurred_at_ms=1_749_581_447_000,
        source=Source.WEBHOOK,
        received_at_ms=RECEIVED,
        attributes={"text": "text captured by OCR"},
        extra={},
    )
    assert event.category == "media"


def test_every_seed_props_example_validates(seed_props: dict[str, dict[str, Any]]) -> None:
    for event_type, attributes in seed_props.items():
        event = normalize_body(webhook(event_type, attributes))
        assert event.event_type == event_type
        assert event.extra == {}, event_type
        assert set(event.attributes) == set(EVENTS[event_type].attributes)
        for name, value in attributes.items():
            typed = event.attributes[name]
            # Typed values equal the input (persons: every key the seed gave is kept).
            if isinstance(value, dict):
                assert {k: typed[k] for k in value} == value
            else:
                assert typed == value


def test_seed_quirks_are_accepted(seed_props: dict[str, dict[str, Any]]) -> None:
    survey = normalize_body(webhook("survey.answered", seed_props["survey.answered"]))
    assert survey.attributes["requestor"]["firstname"] == ""
    assert survey.attributes["requestor"]["lastname"] == "contact Flegoff"
    questions = survey.attributes["surveyAnswer"]["questions"]
    assert questions[0]["label"] == {"fr": "Première question ?", "en": "Question one?"}
    geo = normalize_body(webhook("geo.ansAllowed", seed_props["geo.ansAllowed"]))
    assert geo.attributes["geoloc"] == {"lat": 48.650032799999998, "lng": -3.3655395000000001}
    prio = normalize_body(webhook("ticket.priorityChanged", seed_props["ticket.priorityChanged"]))
    assert prio.attributes["agent"]["phone"] == ""
    assert (prio.attributes["oldPriority"], prio.attributes["newPriority"]) == (1, 0)


def test_seed_rest_example_keeps_unlisted_attributes_in_extra() -> None:
    items = load_fixture("seed_rest_example.json")
    events = [from_rest(parse_rest_item(i), 777, RECEIVED) for i in items]
    accepted, prio, picture = events
    assert accepted.event_type == "ticket.invitationAccepted"
    assert accepted.ticket_id == 777
    assert accepted.source is Source.POLLER
    assert accepted.event_code is None
    assert accepted.occurred_at_ms == 1_741_621_530_000
    assert accepted.attributes["requestor"]["firstname"] == "Jane"
    assert accepted.extra == {"oldPriority": 1, "newPriority": 0}
    assert prio.attributes["oldPriority"] == 1
    assert prio.extra == {}
    assert picture.attributes == {"mediaId": 342432}


def test_unknown_nested_and_envelope_fields_are_kept_in_extra() -> None:
    body = webhook(
        "survey.answered",
        {
            "requestor": {"email": "a@b.c", "id": 9},
            "surveyAnswer": {"questions": [{"id": 1}, {"id": 2, "weight": 3}], "x": True},
            "brandNew": [1, {"a": None}],
        },
        deliveryId="d-1",
    )
    event = normalize_body(body)
    assert event.extra == {
        "requestor": {"id": 9},
        "surveyAnswer": {"questions": [{}, {"weight": 3}], "x": True},
        "brandNew": [1, {"a": None}],
        ENVELOPE_EXTRA_KEY: {"deliveryId": "d-1"},
    }
    assert event.attributes["requestor"] == {
        "email": "a@b.c",
        "phone": None,
        "firstname": None,
        "lastname": None,
    }


def test_unknown_event_type_keeps_every_attribute_raw() -> None:
    event = normalize_body(webhook("whiteboard.drawn", {"strokes": [1, 2], "agent": "x"}))
    assert event.spec is None
    assert event.category == "unknown"
    assert event.attributes == {}
    assert event.extra == {"strokes": [1, 2], "agent": "x"}


def test_float_time_becomes_milliseconds() -> None:
    assert normalize_body(webhook("consent.accepted", {}, time=1.5)).occurred_at_ms == 1500


BAD_WEBHOOKS: list[tuple[str, bytes | dict[str, Any], str, str]] = [
    ("not json", b"{nope", "invalid_json", "body: Invalid JSON"),
    ("empty body", b"", "invalid_json", "body: Invalid JSON"),
    ("json array", b"[1]", "invalid_envelope", "body: Input should be an object"),
    (
        "missing ticketId",
        {**webhook("consent.accepted", {}), "props": {"eventType": "x", "conversationId": 1}},
        "invalid_envelope",
        "props.ticketId: Field required",
    ),
    (
        "ticketId as string",
        webhook("consent.accepted", {}, props={**webhook("a.b", {})["props"], "ticketId": "361"}),
        "invalid_envelope",
        "props.ticketId: Input should be a valid integer",
    ),
    (
        "objectId not an integer",
        webhook("consent.accepted", {}, objectId=12.5),
        "invalid_envelope",
        "objectId: Input should be a valid integer",
    ),
    (
        "negative id",
        webhook("consent.accepted", {}, objectId=-1),
        "invalid_envelope",
        "objectId: Input should be greater than or equal to 0",
    ),
    (
        "id beyond 64 bits",
        webhook("consent.accepted", {}, objectId=2**64),
        "invalid_envelope",
        "objectId: Input should be less than or equal to 9223372036854775807",
    ),
    (
        "eventType not a string",
        webhook("consent.accepted", {}, props={**webhook("a.b", {})["props"], "eventType": 5}),
        "invalid_envelope",
        "props.eventType: Input should be a valid string",
    ),
    (
        "props not an object",
        webhook("consent.accepted", {}, props="hello"),
        "invalid_envelope",
        "props: Input should be an object",
    ),
    (
        "time not a number",
        webhook("consent.accepted", {}, time="yesterday"),
        "invalid_envelope",
        "time: Input should be a valid number",
    ),
    (
        "another webhook",
        webhook("consent.accepted", {}, object="ticket"),
        "invalid_envelope",
        "object: Input should be 'conversationevent'",
    ),
    (
        "bad nested attribute",
        webhook("ticket.new", {"agent": {"email": 5}}),
        "invalid_envelope",
        "props.agent.email: Input should be a valid string",
    ),
    (
        "latitude out of range",
        webhook("geo.ansAllowed", {"geoloc": {"lat": 91, "lng": 0}}),
        "invalid_envelope",
        "props.geoloc.lat: Input should be less than or equal to 90",
    ),
    (
        "priority beyond Avro int",
        webhook("ticket.priorityChanged", {"oldPriority": 2**31}),
        "invalid_envelope",
        "props.oldPriority: Input should be less than or equal to 2147483647",
    ),
]


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [case[1:] for case in BAD_WEBHOOKS],
    ids=[case[0] for case in BAD_WEBHOOKS],
)
def test_bad_webhooks_name_the_field_and_the_reason(
    body: bytes | dict[str, Any], kind: str, message: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        normalize_body(body)
    assert caught.value.kind == kind
    assert message in caught.value.reason


def test_bad_rest_items_name_the_field() -> None:
    with pytest.raises(InvalidEventError, match=r"data: Input should be a valid dictionary"):
        parse_rest_item(
            {"id": 1, "eventType": "a.b", "timestamp": 1, "conversationId": 1, "data": 3}
        )
    with pytest.raises(InvalidEventError, match=r"id: Field required"):
        parse_rest_item({"eventType": "a.b", "timestamp": 1, "conversationId": 1})
    item = parse_rest_item(
        {
            "id": 1,
            "eventType": "ticket.new",
            "timestamp": 1,
            "conversationId": 1,
            "data": {"agent": 1},
        }
    )
    with pytest.raises(InvalidEventError, match=r"data\.agent: Input should be"):
        from_rest(item, 1, RECEIVED)


def test_error_messages_do_not_echo_the_input() -> None:
    secret_like = "do-not-echo-" + "x" * 50
    with pytest.raises(InvalidEventError) as caught:
        normalize_body(webhook("ticket.new", {"agent": {"email": [secret_like]}}))
    assert secret_like not in caught.value.reason


@given(webhook_bodies())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_valid_webhook_normalizes_without_losing_anything(body: dict[str, Any]) -> None:
    event = normalize_body(body)
    props = body["props"]
    spec = EVENTS[props["eventType"]]
    assert event.event_id == body["objectId"]
    assert event.ticket_id == props["ticketId"]
    assert event.event_code == props.get("eventCode")
    assert event.occurred_at_ms == round(body["time"] * 1000)
    unknown = {k: v for k, v in props.items() if k not in COMMON_PROPS and k not in spec.attributes}
    attributes_extra, envelope_extra = split_extra(event.extra)
    assert {k: attributes_extra[k] for k in unknown} == unknown
    assert envelope_extra == {k: v for k, v in body.items() if k not in ENVELOPE_FIELDS}
    for name in spec.attributes:
        if name in props and isinstance(props[name], dict):
            # Every key Apizee sent is either a typed field or kept in extra.
            kept = set(attributes_extra.get(name, {}))
            assert set(props[name]) <= set(event.attributes[name]) | kept


@given(rest_items())
@settings(max_examples=100)
def test_any_valid_rest_item_normalizes(item: dict[str, Any]) -> None:
    event = from_rest(parse_rest_item(item), 5, RECEIVED)
    assert (event.event_id, event.event_type, event.ticket_id) == (item["id"], item["eventType"], 5)


FIELD_PATHS = [
    ("event",),
    ("time",),
    ("object",),
    ("objectId",),
    ("props",),
    ("props", "eventType"),
    ("props", "eventCode"),
    ("props", "conversationId"),
    ("props", "ticketId"),
    ("props", "agent"),
    ("props", "agent", "email"),
    ("props", "geoloc"),
    ("props", "geoloc", "lat"),
    ("props", "mediaId"),
    ("props", "text"),
    ("props", "surveyAnswer"),
    ("props", "surveyAnswer", "questions"),
]
REQUIRED_INTEGER_PATHS = {("objectId",), ("props", "ticketId"), ("props", "conversationId")}


@given(
    st.sampled_from(sorted(EVENTS)),
    st.sampled_from(FIELD_PATHS),
    json_values,
)
@settings(max_examples=500)
def test_any_json_value_in_any_field_is_valid_or_a_validation_error(
    event_type: str, path: tuple[str, ...], value: Any
) -> None:
    body = webhook(
        event_type,
        {"agent": {"email": "e"}, "geoloc": {"lat": 1, "lng": 2}, "surveyAnswer": {}},
    )
    target = body
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value
    try:
        event = normalize_body(body)
    except InvalidEventError as exc:
        assert exc.reason
        return
    # Accepted: it must be encodable (bounds are checked at the edge, not in the encoder)...
    _CODEC.encode(event)
    # ...and a required id can only be accepted when it is a non-negative integer.
    if path in REQUIRED_INTEGER_PATHS:
        assert type(value) is int
        assert value >= 0


# -- strict JSON, lossless numbers, reserved keys (issue 10) ---------------------------------

_ENVELOPE = (
    b'{"event":"create","time":1749581447,"object":"conversationevent","objectId":7,'
    b'"props":{"eventType":"ticket.new","conversationId":1,"ticketId":2,@PROPS@}@ENV@}'
)


def _body(props: str, envelope: str = "") -> bytes:
    return _ENVELOPE.replace(b"@PROPS@", props.encode()).replace(b"@ENV@", envelope.encode())


@pytest.mark.parametrize(
    ("props", "envelope"),
    [
        ('"a":NaN', ""),
        ('"a":Infinity', ""),
        ('"a":-Infinity', ""),
        ('"a":[1,{"b":NaN}]', ""),
        ('"agent":{"email":"x","zz":NaN}', ""),
        ('"a":1', ',"deliveryId":NaN'),
        ('"a":1', ',"d":{"e":[Infinity]}'),
    ],
)
def test_nan_and_infinity_are_not_json_and_are_refused(props: str, envelope: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        normalize_body(_body(props, envelope))
    assert caught.value.kind == "invalid_json"
    assert "is not a JSON number (RFC 8259)" in caught.value.reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_time_that_is_not_a_finite_number_says_so(literal: str) -> None:
    body = _body('"a":1').replace(b'"time":1749581447', f'"time":{literal}'.encode())
    with pytest.raises(InvalidEventError) as caught:
        normalize_body(body)
    assert caught.value.reason == "time: Input should be a finite number"


def test_a_typed_double_beyond_range_is_refused_not_stored_as_infinity() -> None:
    body = _body('"geoloc":{"lat":1e400,"lng":0}').replace(b"ticket.new", b"geo.ansAllowed")
    with pytest.raises(InvalidEventError, match=r"geoloc\.lat: Input should be a finite number"):
        normalize_body(body)


def test_unknown_numbers_keep_their_text_exactly() -> None:
    numbers = "1e15,1E+2,2.50,-0.0,1e400,-1e-400,0.1,99999999999999999999999,-12,5e-324"
    event = normalize_body(_body(f'"x":[{numbers}],"y":{{"z":1.0}}', ',"w":3.14159265358979323846'))
    text = json_text(event.extra)
    assert text == (
        f'{{"_envelope":{{"w":3.14159265358979323846}},"x":[{numbers}],"y":{{"z":1.0}}}}'
    )
    # And still numbers of the right value for Python code holding the event.
    assert event.extra["x"][0] == 1e15
    assert event.extra["x"][7] == 99999999999999999999999


@pytest.mark.parametrize("name", ["_envelope", "__envelope", "_", "__", "_x", "___"])
def test_attributes_named_like_reserved_keys_never_collide_with_the_envelope(name: str) -> None:
    body = json.dumps(
        {
            **webhook("ticket.new", {name: {"from": "props"}, "plain": 1}),
            "foo": 1,
            ENVELOPE_EXTRA_KEY: "envelope field named like the key",
        }
    ).encode()
    event = normalize_body(body)
    attributes, envelope = split_extra(event.extra)
    assert attributes == {name: {"from": "props"}, "plain": 1}
    assert envelope == {"foo": 1, ENVELOPE_EXTRA_KEY: "envelope field named like the key"}
    assert event.extra[ENVELOPE_EXTRA_KEY] == envelope
    assert event.extra["_" + name] == {"from": "props"}


def test_reserved_names_in_rest_items_are_escaped_the_same_way() -> None:
    item = parse_rest_item(
        {
            "id": 1,
            "eventType": "whiteboard.drawn",
            "timestamp": 1,
            "conversationId": 2,
            "data": {ENVELOPE_EXTRA_KEY: 1},
            "other": True,
        }
    )
    event = from_rest(item, 3, RECEIVED)
    assert split_extra(event.extra) == ({ENVELOPE_EXTRA_KEY: 1}, {"other": True})


def test_rest_numbers_beyond_a_double_are_refused_not_written_as_null() -> None:
    item = parse_rest_item(
        {
            "id": 1,
            "eventType": "ticket.new",
            "timestamp": 1,
            "conversationId": 2,
            "data": {"x": [float("inf")]},
        }
    )
    with pytest.raises(InvalidEventError, match=r"data\.x\.0: inf is not a JSON number"):
        from_rest(item, 3, RECEIVED)
