"""Validate Apizee's payloads at the edge and normalize them into one canonical event.

Webhook envelopes and REST list items both become a `CanonicalEvent`; whatever the catalog
does not know is kept in `extra` so that nothing Apizee sends is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

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

Id = Annotated[int, Field(ge=0, le=INT64_MAX)]
Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
# A float field: strict mode still takes JSON integers, and one type gives one clear error.
EpochSeconds = Annotated[float, Field(ge=0, le=MAX_EPOCH_SECONDS)]
EventType = Annotated[str, Field(min_length=1, max_length=255)]

_EDGE = ConfigDict(strict=True, extra="allow", frozen=True)


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
        __config__=ConfigDict(strict=True, extra="ignore"),
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
        return WebhookEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidEventError(_kind(exc), _problems(exc, "")) from None


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


def _millis(seconds: float) -> int:
    # Exact for whole seconds: MAX_EPOCH_SECONDS * 1000 < 2**53.
    return round(seconds * 1000)


def from_webhook(envelope: WebhookEnvelope, received_at_ms: int) -> CanonicalEvent:
    props = envelope.props
    attributes, extra = _split_attributes(props.eventType, props.model_extra or {}, "props")
    if envelope.model_extra:
        extra[ENVELOPE_EXTRA_KEY] = dict(envelope.model_extra)
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
    attributes, extra = _split_attributes(item.eventType, item.data or {}, "data")
    if item.model_extra:
        extra[ENVELOPE_EXTRA_KEY] = dict(item.model_extra)
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
