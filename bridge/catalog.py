"""The 32 Apizee session event types: category, attributes, Avro names and docs.

Single source for routing (category topic), validation (attribute types), the Avro
schemas in schemas/ and the event table of docs/consumers.md. Source: the Session Events API
seed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

NAMESPACE: Final = "com.apizee.sessionevents"

# Avro's int is 32-bit and long 64-bit; bounds keep out-of-range JSON numbers out of the
# encoder (they become a 400 with a clear reason instead of an OverflowError).
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1


class _Record(BaseModel):
    # strict: Apizee sends JSON numbers for ids and numbers; a string "42" is a defect to
    # report, not to guess at. Unknown keys are ignored here and kept by models.residual().
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)


class Person(_Record):
    """An agent or a requestor; Apizee sends empty strings for unknown values."""

    email: str | None = None
    phone: str | None = None
    firstname: str | None = None
    lastname: str | None = None


class GeoLocation(_Record):
    """Coordinates shared by the end user when geolocation is allowed."""

    lat: float = Field(ge=-90.0, le=90.0)
    lng: float = Field(ge=-180.0, le=180.0)


class SurveyQuestion(_Record):
    """One answered question of a satisfaction survey."""

    id: int = Field(ge=0, le=INT64_MAX)
    label: dict[str, str] = Field(default_factory=dict)
    answer: str | None = None


class SurveyAnswer(_Record):
    """The answers and the free-text feedback of a survey."""

    questions: list[SurveyQuestion] = Field(default_factory=list)
    feedback: str | None = None


@dataclass(frozen=True, slots=True)
class Attribute:
    """An event-specific attribute: its Python type for validation, its Avro type."""

    name: str
    python_type: Any
    avro_type: str
    doc: str


def _person_doc(role: str) -> str:
    return f"The {role} (email, phone, firstname, lastname; Apizee may send empty strings)."


ATTRIBUTES: Final[Mapping[str, Attribute]] = MappingProxyType(
    {
        a.name: a
        for a in (
            Attribute("agent", Person, f"{NAMESPACE}.Person", _person_doc("agent")),
            Attribute("requestor", Person, f"{NAMESPACE}.Person", _person_doc("requestor")),
            Attribute(
                "geoloc", GeoLocation, f"{NAMESPACE}.GeoLocation", "Geolocation of the user."
            ),
            Attribute(
                "mediaId",
                int,
                "long",
                "Id of the picture in Apizee's media store.",
            ),
            Attribute("text", str, "string", "Text recognised by the OCR scan."),
            Attribute("oldPriority", int, "int", "Ticket priority before the change."),
            Attribute("newPriority", int, "int", "Ticket priority after the change."),
            Attribute(
                "surveyAnswer",
                SurveyAnswer,
                f"{NAMESPACE}.SurveyAnswer",
                "Answers to the satisfaction survey.",
            ),
        )
    }
)

# Pydantic constraints per attribute name beyond the bare type (the Avro range).
ATTRIBUTE_BOUNDS: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {
        "mediaId": (0, INT64_MAX),
        "oldPriority": (INT32_MIN, INT32_MAX),
        "newPriority": (INT32_MIN, INT32_MAX),
    }
)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One eventType: where it goes and what it carries."""

    event_type: str
    attributes: tuple[str, ...]
    doc: str

    @property
    def category(self) -> str:
        return category_of(self.event_type)

    @property
    def record_name(self) -> str:
        return record_name_of(self.event_type)

    @property
    def full_name(self) -> str:
        return f"{NAMESPACE}.{self.record_name}"


def category_of(event_type: str) -> str:
    """Category = the part of the eventType before the first dot (ARCHITECTURE.md)."""
    return event_type.split(".", 1)[0]


def record_name_of(event_type: str) -> str:
    """`ticket.priorityChanged` -> `TicketPriorityChanged`, `media.OCRDone` -> `MediaOCRDone`."""
    parts = re.split(r"[^A-Za-z0-9]+", event_type)
    return "".join(p[:1].upper() + p[1:] for p in parts if p)


_AGENT = ("agent",)
_REQUESTOR = ("requestor",)

# Order and attributes as in the seed's "Event-specific payload attributes" table.
_EVENTS: Final[tuple[EventSpec, ...]] = (
    EventSpec("consent.accepted", (), "The end user accepted the consent form."),
    EventSpec("ticket.sessionStarted", (), "The video session of the ticket started."),
    EventSpec("geo.ansAllowed", ("geoloc",), "The end user allowed geolocation."),
    EventSpec("geo.ansDisallowed", (), "The end user refused geolocation."),
    EventSpec("ticket.approved", _AGENT, "The ticket was approved."),
    EventSpec("ticket.new", _AGENT, "The ticket was created."),
    EventSpec("ticket.assigned", _AGENT, "The ticket was assigned to an agent."),
    EventSpec("ticket.completed", _AGENT, "The ticket was completed (terminal)."),
    EventSpec("ticket.cancelled", _AGENT, "The ticket was cancelled (terminal)."),
    EventSpec("ticket.closed", _AGENT, "The ticket was closed (terminal)."),
    EventSpec("mediaDevice.allowed", _REQUESTOR, "Camera and microphone allowed."),
    EventSpec("mediaDevice.disallowed", _REQUESTOR, "Camera and microphone refused."),
    EventSpec("mediaDevice.cameraAllowed", _REQUESTOR, "Camera allowed."),
    EventSpec("mediaDevice.cameraDisallowed", _REQUESTOR, "Camera refused."),
    EventSpec("mediaDevice.micAllowed", _REQUESTOR, "Microphone allowed."),
    EventSpec("mediaDevice.micDisallowed", _REQUESTOR, "Microphone refused."),
    EventSpec("session.established", _REQUESTOR, "The video session was established."),
    EventSpec(
        "ticket.priorityChanged",
        ("agent", "oldPriority", "newPriority"),
        "An agent changed the ticket priority.",
    ),
    EventSpec("ticket.invitationSent", _REQUESTOR, "An invitation was sent to the user."),
    EventSpec("ticket.invitationResent", _REQUESTOR, "The invitation was sent again."),
    EventSpec("ticket.invitationAccepted", _REQUESTOR, "The user accepted the invitation."),
    EventSpec("ticket.invitationDeclined", _REQUESTOR, "The user declined the invitation."),
    EventSpec("ticket.invitationExpired", (), "The invitation expired."),
    EventSpec("ticket.invitationClicked", _REQUESTOR, "The user clicked the invitation."),
    EventSpec("ticket.invitationNotclicked", _REQUESTOR, "The user did not click the invitation."),
    EventSpec("session.agentContacted", _AGENT, "An agent was contacted."),
    EventSpec("media.pictureTaken", ("mediaId",), "A picture was taken."),
    EventSpec("media.pictureSent", ("mediaId",), "A picture was sent."),
    EventSpec("survey.answered", ("requestor", "surveyAnswer"), "The user answered the survey."),
    EventSpec("session.agentLeft", _AGENT, "The agent left the session."),
    EventSpec("session.userLeft", _REQUESTOR, "The user left the session."),
    EventSpec("media.OCRDone", ("text",), "An OCR scan finished."),
)

EVENTS: Final[Mapping[str, EventSpec]] = MappingProxyType({e.event_type: e for e in _EVENTS})
CATEGORIES: Final[tuple[str, ...]] = tuple(dict.fromkeys(e.category for e in _EVENTS))

# Events after which a ticket is done (the poller polls once more, then retires it).
TERMINAL_EVENT_TYPES: Final = frozenset({"ticket.closed", "ticket.completed", "ticket.cancelled"})

# Events whose eventType the catalog does not know go to `{prefix}.unknown` with this record.
UNKNOWN_CATEGORY: Final = "unknown"
UNKNOWN_RECORD_NAME: Final = "UnknownEvent"


def lookup(event_type: str) -> EventSpec | None:
    return EVENTS.get(event_type)


def markdown_table() -> str:
    """The event table of docs/consumers.md, generated so that the docs cannot drift from code."""
    rows = ["| eventType | category | attributes | meaning |", "|---|---|---|---|"]
    for spec in EVENTS.values():
        attrs = ", ".join(f"`{a}`" for a in spec.attributes) or "none"
        rows.append(f"| `{spec.event_type}` | {spec.category} | {attrs} | {spec.doc} |")
    return "\n".join(rows)
