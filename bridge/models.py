"""Validate Apizee's payloads at the edge and normalize them into one canonical event.

Webhook envelopes and REST list items both become a `CanonicalEvent`; whatever the catalog
does not know is kept in `extra` so that nothing Apizee sends is dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from bridge.catalog import (
    ATTRIBUTE_BOUNDS,
    ATTRIBUTES,
    EVENTS,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    UNKNOWN_CATEGORY,
    EventSpec,
)
from bridge.errors import InvalidEventError, Problem

# Latest instant an Avro timestamp-millis of ours may hold: 9999-12-31T23:59:59Z.
MAX_EPOCH_SECONDS: Final = 253_402_300_799

# Key in `extra` that holds unknown fields found around the event (envelope or REST item)
# rather than among its attributes.
ENVELOPE_EXTRA_KEY: Final = "_envelope"
# Top-level keys of `extra` that start with this are the bridge's own (ENVELOPE_EXTRA_KEY);
# an attribute whose name starts with it is stored with one more in front ("_x" as "__x"),
# so that no attribute Apizee sends can take a reserved key's place.
RESERVED_PREFIX: Final = "_"

Id = Annotated[int, Field(ge=0, le=INT64_MAX)]
Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
# A float field: strict mode still takes JSON integers, and one type gives one clear error.
EpochSeconds = Annotated[float, Field(ge=0, le=MAX_EPOCH_SECONDS)]
EventType = Annotated[str, Field(min_length=1, max_length=255)]

# allow_inf_nan=False: NaN and Infinity are not JSON (RFC 8259); a float field refuses them
# with "Input should be a finite number", as it does 1e400 (which parses as infinity).
_EDGE = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)


class JsonFloat(float):
    """A JSON number with a fraction or exponent, as a float that keeps its text as sent.

    `extra` holds these instead of plain floats, so that re-serialising it writes each number
    as Apizee wrote it: `1e15` stays 5 characters (not `1000000000000000.0`), and `1e400` or
    `1e-400`, beyond a double, stay exact instead of becoming null or 0.
    """

    __slots__ = ("text",)

    text: str

    def __new__(cls, text: str) -> JsonFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value


class WebhookProps(BaseModel):
    """`props` of a conversationevent: the common fields; attributes land in model_extra."""

    model_config = _EDGE

    eventType: EventType
    eventCode: Int32 | None = None
    conversationId: Id
    ticketId: Id


class WebhookEnvelope(BaseModel):
    """The body of Apizee's `conversationevent.create` webhook POST."""

    model_config = _EDGE

    event: Literal["create"]
    time: EpochSeconds
    object: Literal["conversationevent"]
    objectId: Id
    props: WebhookProps

    # The bytes this envelope was parsed from (set by parse_webhook): `extra` is read from
    # them again, with numbers kept as their text, when the event has unknown fields.
    _body: bytes | None = PrivateAttr(default=None)


class RestEvent(BaseModel):
    """One item of `GET /api/v3/tickets/{ticketId}/events`."""

    model_config = _EDGE

    id: Id
    eventType: EventType
    timestamp: EpochSeconds
    conversationId: Id
    data: dict[str, Any] | None = None


class Source(StrEnum):
    """Which path brought an event into the bridge."""

    WEBHOOK = "WEBHOOK"
    POLLER = "POLLER"


@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    """One Apizee event, whichever way it came; what the codec encodes."""

    event_id: int
    event_type: str
    event_code: int | None
    ticket_id: int
    conversation_id: int
    occurred_at_ms: int
    source: Source
    received_at_ms: int
    # The catalog attributes of this eventType, every one present (None when absent), as
    # plain JSON-like values ready for the Avro encoder.
    attributes: dict[str, Any] = field(default_factory=dict)
    # Everything the catalog does not know. Top-level keys are unknown attributes; a key
    # that names a catalog attribute holds the parts of it the schema has no field for;
    # `_envelope` holds unknown fields of the envelope / REST item.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> EventSpec | None:
        return EVENTS.get(self.event_type)

    @property
    def category(self) -> str:
        spec = EVENTS.get(self.event_type)
        return spec.category if spec is not None else UNKNOWN_CATEGORY


def _attributes_model(spec: EventSpec) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name in spec.attributes:
        attr = ATTRIBUTES[name]
        lo, hi = ATTRIBUTE_BOUNDS.get(name, (None, None))
        fields[name] = (attr.python_type | None, Field(default=None, ge=lo, le=hi))
    model: type[BaseModel] = create_model(
        f"{spec.record_name}Attributes",
        __config__=ConfigDict(strict=True, extra="ignore", allow_inf_nan=False),
        **fields,
    )
    return model


_ATTRIBUTE_MODELS: Final[Mapping[str, type[BaseModel]]] = {
    t: _attributes_model(spec) for t, spec in EVENTS.items()
}


class _Nothing:
    """Marks 'no residual' (None is a legitimate JSON value)."""


_NOTHING: Final = _Nothing()


def residual(raw: Any, typed: Any) -> Any:
    """What of the raw JSON value `raw` the typed (dumped) value `typed` did not capture.

    Returns `_NOTHING` when everything was captured. Strict validation means that captured
    scalars are equal, so only unknown dict keys (at any depth) can remain.
    """
    if isinstance(raw, dict) and isinstance(typed, dict):
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in typed:
                out[key] = value
            else:
                sub = residual(value, typed[key])
                if sub is not _NOTHING:
                    out[key] = sub
        return out if out else _NOTHING
    if isinstance(raw, list) and isinstance(typed, list) and len(raw) == len(typed):
        items = [residual(r, t) for r, t in zip(raw, typed, strict=True)]
        if all(i is _NOTHING for i in items):
            return _NOTHING
        # Position matters for lists: keep an empty object where an item had nothing.
        return [{} if i is _NOTHING else i for i in items]
    return _NOTHING


def _problems(exc: ValidationError, prefix: str) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        problems.append(Problem(loc or "body", err["msg"]))
    return problems


def _kind(exc: ValidationError) -> str:
    json_error = any(e["type"] == "json_invalid" for e in exc.errors(include_url=False))
    return "invalid_json" if json_error else "invalid_envelope"


def parse_webhook(body: bytes) -> WebhookEnvelope:
    """Parse and validate a webhook body in one pass; InvalidEventError names every problem."""
    try:
        envelope = WebhookEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidEventError(_kind(exc), _problems(exc, "")) from None
    envelope._body = body
    return envelope


def _not_a_number(literal: str) -> Any:
    raise ValueError(f"{literal} is not a JSON number (RFC 8259)")


def json_values(body: bytes) -> Any:
    """`body` parsed again for `extra`: every non-integer number a JsonFloat with its text.

    Strict RFC 8259: NaN, Infinity and -Infinity (which pydantic's parser lets through into
    untyped fields) are refused with InvalidEventError. Only bodies with unknown fields pay
    for this second parse; it accepts what pydantic's accepted, being given only those.
    """
    try:
        return json.loads(body, parse_float=JsonFloat, parse_constant=_not_a_number)
    except (ValueError, RecursionError) as exc:
        # ValueError: a NaN, or an integer of more digits than Python converts (4300).
        raise InvalidEventError("invalid_json", [Problem("body", f"Invalid JSON: {exc}")]) from None


def parse_rest_item(item: Any) -> RestEvent:
    """Validate one already-parsed REST list item."""
    try:
        return RestEvent.model_validate(item)
    except ValidationError as exc:
        raise InvalidEventError("invalid_envelope", _problems(exc, "")) from None


def _split_attributes(
    event_type: str, raw: dict[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the attributes the catalog knows; return (attributes, extra)."""
    model = _ATTRIBUTE_MODELS.get(event_type)
    if model is None:
        # Unknown eventType: nothing is typed, everything is kept as it came.
        return {}, dict(raw)
    try:
        typed = model.model_validate(raw).model_dump()
    except ValidationError as exc:
        raise InvalidEventError("invalid_envelope", _problems(exc, where)) from None
    if raw.items() <= typed.items():
        # Every raw attribute came back equal (the usual case): nothing residual, at C speed.
        return typed, {}
    extra = residual(raw, typed)
    return typed, ({} if extra is _NOTHING else extra)


def _extra(
    attributes_extra: Mapping[str, Any], envelope_extra: Mapping[str, Any]
) -> dict[str, Any]:
    """`extra` from the unknown parts of the attributes and of the envelope (see
    RESERVED_PREFIX): no attribute can overwrite the envelope's key, whatever its name."""
    extra = {
        RESERVED_PREFIX + key if key.startswith(RESERVED_PREFIX) else key: value
        for key, value in attributes_extra.items()
    }
    if envelope_extra:
        extra[ENVELOPE_EXTRA_KEY] = dict(envelope_extra)
    return extra


def split_extra(extra: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inverse of how `extra` is built: (unknown attribute parts by the names Apizee sent,
    unknown envelope fields). For consumers and tests."""
    attributes = {
        key[len(RESERVED_PREFIX) :] if key.startswith(RESERVED_PREFIX) else key: value
        for key, value in extra.items()
        if key != ENVELOPE_EXTRA_KEY
    }
    return attributes, dict(extra.get(ENVELOPE_EXTRA_KEY, {}))


def _unknown(values: Mapping[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in model.model_fields}


def _finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities (a float out of a double's range) where they would be lost."""
    if isinstance(value, float) and not math.isfinite(value):
        problem = Problem(where, f"{value} is not a JSON number (RFC 8259)")
        raise InvalidEventError("invalid_envelope", [problem])
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite(item, f"{where}.{index}")


def _millis(seconds: float) -> int:
    # Exact for whole seconds: MAX_EPOCH_SECONDS * 1000 < 2**53.
    return round(seconds * 1000)


def from_webhook(envelope: WebhookEnvelope, received_at_ms: int) -> CanonicalEvent:
    props = envelope.props
    attributes, unknown = _split_attributes(props.eventType, props.model_extra or {}, "props")
    envelope_extra = envelope.model_extra or {}
    if unknown or envelope_extra:
        body = envelope._body
        if body is None:
            # Built in code, not parsed from bytes: its values are what they are.
            _finite(unknown, "props")
            _finite(envelope_extra, "body")
        else:
            # Unknown fields are kept as Apizee wrote them: parsed again from the bytes,
            # numbers with their text (no NaN, no growth, no precision lost).
            values = json_values(body)
            envelope_extra = _unknown(values, WebhookEnvelope)
            raw = _unknown(values["props"], WebhookProps)
            found = residual(raw, attributes) if attributes else raw
            unknown = {} if found is _NOTHING else found
    extra = _extra(unknown, envelope_extra)
    return CanonicalEvent(
        event_id=envelope.objectId,
        event_type=props.eventType,
        event_code=props.eventCode,
        ticket_id=props.ticketId,
        conversation_id=props.conversationId,
        occurred_at_ms=_millis(envelope.time),
        source=Source.WEBHOOK,
        received_at_ms=received_at_ms,
        attributes=attributes,
        extra=extra,
    )


def from_rest(
    item: RestEvent, ticket_id: int, received_at_ms: int, source: Source = Source.POLLER
) -> CanonicalEvent:
    attributes, unknown = _split_attributes(item.eventType, item.data or {}, "data")
    # REST bodies are parsed without NaN, but a number beyond a double is infinity by then.
    _finite(unknown, "data")
    _finite(item.model_extra or {}, "body")
    extra = _extra(unknown, item.model_extra or {})
    return CanonicalEvent(
        event_id=item.id,
        event_type=item.eventType,
        event_code=None,
        ticket_id=ticket_id,
        conversation_id=item.conversationId,
        occurred_at_ms=_millis(item.timestamp),
        source=source,
        received_at_ms=received_at_ms,
        attributes=attributes,
        extra=extra,
    )
