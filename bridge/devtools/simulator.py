"""A fake Apizee for development and tests: tickets with realistic timelines over the 32 event
types, the documented REST list behind a Bearer token, signed webhooks sent to a bridge, and
the failure modes of both sides (drops, duplicates, reordering, 429, 5xx, slow, malformed).

Not a production code path: `apizee-bridge simulate`, `make run` and the test suites use it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import math
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Literal, TextIO, get_args

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from bridge.auth import SignatureEncoding, sign
from bridge.catalog import EVENTS

REST_PATH: Final = "/api/v3/tickets/{ticketId}/events"

# A stable small eventCode per eventType. Apizee does not publish its table; the seed's one
# example gives media.OCRDone = 41, the others are made up around it, grouped by category.
EVENT_CODES: Final[dict[str, int]] = {
    "consent.accepted": 1,
    "ticket.new": 10,
    "ticket.assigned": 11,
    "ticket.approved": 12,
    "ticket.priorityChanged": 13,
    "ticket.invitationSent": 14,
    "ticket.invitationResent": 15,
    "ticket.invitationClicked": 16,
    "ticket.invitationNotclicked": 17,
    "ticket.invitationAccepted": 18,
    "ticket.invitationDeclined": 19,
    "ticket.invitationExpired": 20,
    "ticket.sessionStarted": 21,
    "ticket.completed": 22,
    "ticket.cancelled": 23,
    "ticket.closed": 24,
    "geo.ansAllowed": 30,
    "geo.ansDisallowed": 31,
    "media.pictureTaken": 40,
    "media.OCRDone": 41,
    "media.pictureSent": 42,
    "mediaDevice.allowed": 50,
    "mediaDevice.disallowed": 51,
    "mediaDevice.cameraAllowed": 52,
    "mediaDevice.cameraDisallowed": 53,
    "mediaDevice.micAllowed": 54,
    "mediaDevice.micDisallowed": 55,
    "session.established": 60,
    "session.agentContacted": 61,
    "session.agentLeft": 62,
    "session.userLeft": 63,
    "survey.answered": 70,
}
assert set(EVENT_CODES) == set(EVENTS), "EVENT_CODES must cover exactly the catalog"

# eventTypes the catalog does not know, for the bridge's `unknown` topic (off by default).
UNKNOWN_EVENT_CODES: Final[dict[str, int]] = {
    "whiteboard.drawn": 90,
    "chat.messageSent": 91,
    "screen.shareStarted": 92,
}

# From this many tickets on, every one of the 32 eventTypes occurs (_COVER_PLANS).
COVERAGE_MIN_TICKETS: Final = 4

# Ids of the extra item the `unknown_type` malformed mode adds: base + ticketId, far above
# the simulated ids so that they never collide, and stable across polls of a ticket.
INJECTED_ID_BASE: Final = 9_000_000_000_000

MalformedMode = Literal["not_json", "truncated", "not_list", "wrong_shape", "unknown_type"]
MALFORMED_MODES: Final[tuple[MalformedMode, ...]] = get_args(MalformedMode)
FaultKind = Literal["outage", "429", "500", "502", "503", "slow", "malformed"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
RetryAfterForm = Literal["delta", "date", "mixed"]


# --------------------------------------------------------------------------------------------
# Events and tickets


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One event of the simulated Apizee; `at` is when Apizee records it (epoch seconds)."""

    event_id: int
    event_type: str
    event_code: int
    ticket_id: int
    conversation_id: int
    at: float
    attributes: dict[str, Any] = field(hash=False)

    @property
    def timestamp(self) -> int:
        return int(self.at)

    @property
    def known(self) -> bool:
        """Whether the bridge's catalog knows the eventType."""
        return self.event_type in EVENTS

    def webhook_body(self) -> dict[str, Any]:
        """The `conversationevent.create` envelope, as in the seed's example payload."""
        return {
            "event": "create",
            "time": self.timestamp,
            "object": "conversationevent",
            "objectId": self.event_id,
            "props": {
                "eventType": self.event_type,
                "eventCode": self.event_code,
                "conversationId": self.conversation_id,
                "ticketId": self.ticket_id,
                **self.attributes,
            },
        }

    def rest_item(self) -> dict[str, Any]:
        """One item of `GET /api/v3/tickets/{ticketId}/events`, as in the seed's example."""
        return {
            "id": self.event_id,
            "eventType": self.event_type,
            "timestamp": self.timestamp,
            "conversationId": self.conversation_id,
            "data": dict(self.attributes),
        }


@dataclass(frozen=True, slots=True)
class Ticket:
    ticket_id: int
    conversation_id: int
    events: tuple[SimEvent, ...]

    @property
    def event_ids(self) -> list[int]:
        return [e.event_id for e in self.events]


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultWindow:
    """Every REST request during [start, start + duration) seconds after the server started
    gets this fault (`outage`: 503 before authentication, as when the whole API is down)."""

    kind: FaultKind
    start: float = 0.0
    duration: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RestFaults:
    """Failure injection of the REST endpoint: probabilities per request, plus windows."""

    p_429: float = 0.0
    retry_after_seconds: float = 1.0
    # delta-seconds ("2") or HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT"), RFC 9110 10.2.3.
    retry_after_form: RetryAfterForm = "mixed"
    p_500: float = 0.0
    p_502: float = 0.0
    p_503: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 2.0
    p_malformed: float = 0.0
    malformed_modes: tuple[MalformedMode, ...] = MALFORMED_MODES
    windows: tuple[FaultWindow, ...] = ()

    def __post_init__(self) -> None:
        total = self.p_429 + self.p_500 + self.p_502 + self.p_503 + self.p_malformed
        for name in ("p_429", "p_500", "p_502", "p_503", "p_slow", "p_malformed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if total > 1.0:
            raise ValueError("p_429 + p_500 + p_502 + p_503 + p_malformed must not exceed 1")
        if not self.malformed_modes:
            raise ValueError("malformed_modes must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """What the simulated Apizee holds and how its REST endpoint behaves."""

    tickets: int = 20
    seed: int = 1
    # Events recorded per second overall; None records each event at its realistic time,
    # all of them in the past unless start_time says otherwise (i.e. all at once).
    rate: float | None = None
    # Epoch seconds of the first ticket; None = now (paced) or so that the last event is
    # just past (all at once). Fix it for byte-identical output across runs.
    start_time: float | None = None
    # Nothing is recorded until Simulator.record() is called (tests of the REST view).
    manual: bool = False
    first_event_id: int = 56_000
    first_ticket_id: int = 361
    first_conversation_id: int = 1_345_000
    # Probability, after each event, of an extra event of an eventType the catalog lacks.
    unknown_rate: float = 0.0
    rest_host: str = "127.0.0.1"
    rest_port: int = 0
    rest_token: str = "simulator-token"  # noqa: S105 - a dev tool's default, printed
    faults: RestFaults = field(default_factory=RestFaults)

    def __post_init__(self) -> None:
        if self.tickets < 0:
            raise ValueError("tickets must be >= 0")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0 (or None for all at once)")
        if not 0.0 <= self.unknown_rate <= 1.0:
            raise ValueError("unknown_rate must be within [0, 1]")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """Where and how webhooks are sent, and how the network between mangles them."""

    url: str
    token: str | None = None
    token_header: str = "X-Webhook-Token"  # noqa: S105 - a header name
    hmac_secret: str | None = None
    hmac_header: str = "X-Apizee-Signature"
    hmac_encoding: SignatureEncoding = "hex"
    hmac_prefix: str = ""
    # When set, the signature covers "{timestamp}.{body}" and the timestamp goes here.
    timestamp_header: str | None = None
    basic: tuple[str, str] | None = None
    drop: float = 0.0
    duplicate: float = 0.0
    # Events are shuffled within a sliding window of this many (1 keeps the order).
    reorder_window: int = 1
    latency: float = 0.0
    jitter: float = 0.0
    concurrency: int = 8
    retry: bool = True
    max_retries: int = 5
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    timeout: float = 10.0
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.reorder_window < 1 or self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("reorder_window and concurrency must be >= 1, max_retries >= 0")


# --------------------------------------------------------------------------------------------
# Generation


def _email(local: str) -> str:
    return f"{local}@example.com"


# The seed's addresses went through its publisher's e-mail obfuscation; one agent keeps that
# literal text (not an address at all, which Apizee's strings may well be), the others are
# plausible addresses.
_SEED_EMAIL: Final = "[email protected]"
_AGENTS: Final = (
    (_SEED_EMAIL, "+3316565454", "John", "Doe"),
    (_email("f.legoff"), "", "François", "Le Goff"),
    (_email("zoe.orsted"), "+4533123456", "Zoë", "Ørsted"),
    (_email("lukasz.wojcik"), "+48221234567", "Łukasz", "Wójcik"),
    (_email("ana.garcia"), "+34911234567", "Ana", "García Núñez"),
    (_email("taro.yamada"), "+81312345678", "太郎", "山田"),
    (_email("siobhan.obrien"), "+35312345678", "Siobhán", "O'Brien"),
)
_REQUESTORS: Final = (
    (_email("jane.doe"), "0605040302", "Jane", "Doe"),
    (_email("emilie.dubois"), "+33612345678", "Émilie", "Dubois"),
    (_email("juergen.mueller"), "+4915112345678", "Jürgen", "Müller"),
    ("", "", "", "contact Flegoff"),
    (_email("maria.ivanova"), "+79161234567", "Мария", "Иванова"),
    (_email("noe.lefevre"), "0701020304", "Noé", "Lefèvre"),
    (_email("chloe.martin"), "", "Chloé", "Martin"),
)
_SURVEY_QUESTIONS: Final = (
    (12, {"fr": "Première question ?", "en": "Question one?"}),
    (14, {"fr": "Deuxième question ?", "en": "Question two?"}),
    (
        15,
        {
            "fr": "Recommanderiez-vous ce service ?",
            "en": "Would you recommend us?",
            "de": "Würden Sie uns weiterempfehlen?",
        },
    ),
    (
        16,
        {
            "fr": "L'agent était-il aimable ?",
            "en": "Was the agent friendly?",
            "es": "¿Fue amable el agente?",
        },
    ),
)
_ANSWERS: Final = ("Not satisfied", "Satisfied", "Very satisfied")
_FEEDBACKS: Final = (
    "Ceci est un feedback",
    "",
    "Très bien, merci !\nÀ bientôt 👍",
    "Connexion instable…\r\nImage floue",
    "非常に満足しています",
)
_OCR_TEXTS: Final = (
    "Lorem\nipsum",
    "N° de série : 4F-22-ÆB\nModèle X200",
    "IBAN FR76 3000 6000 0112 3456 7890 189\nBIC AGRIFRPP",
    "電圧 230V\n50Hz",
    '⚠️ Ne pas ouvrir\r\nDanger "haute tension"',
    "",
)
_UNKNOWN_TEXTS: Final = ("Bonjour !", "Can you show me the label?", "Ça marche 👌\nmerci")

Invitation = Literal["accepted", "clicked", "resent", "expired_resent", "declined", "expired"]
Devices = Literal["allowed", "granular", "disallowed_then_allowed"]
_SESSION_INVITATIONS: Final = frozenset({"accepted", "clicked", "resent", "expired_resent"})


@dataclass(frozen=True, slots=True)
class _Plan:
    """The path one ticket takes; drawn at random, or fixed to force coverage."""

    approved: bool
    invitation: Invitation
    devices: Devices
    camera: bool
    mic: bool
    geo: bool
    # Per picture: (sent after being taken, number of OCR scans on it).
    pictures: tuple[tuple[bool, int], ...]
    agent_contacted: bool
    early_priority_change: bool
    priority_changes: int
    survey: bool
    agent_leaves_first: bool
    terminal: str


# Four tickets that together go through all 32 eventTypes (see COVERAGE_MIN_TICKETS).
_COVER_PLANS: Final = (
    _Plan(
        approved=True,
        invitation="clicked",
        devices="granular",
        camera=True,
        mic=True,
        geo=True,
        pictures=((True, 1), (True, 0)),
        agent_contacted=True,
        early_priority_change=False,
        priority_changes=1,
        survey=True,
        agent_leaves_first=True,
        terminal="ticket.completed",
    ),
    _Plan(
        approved=False,
        invitation="resent",
        devices="granular",
        camera=False,
        mic=False,
        geo=False,
        pictures=(),
        agent_contacted=False,
        early_priority_change=False,
        priority_changes=0,
        survey=False,
        agent_leaves_first=False,
        terminal="ticket.closed",
    ),
    _Plan(
        approved=False,
        invitation="expired_resent",
        devices="disallowed_then_allowed",
        camera=True,
        mic=True,
        geo=True,
        pictures=((False, 0),),
        agent_contacted=False,
        early_priority_change=True,
        priority_changes=0,
        survey=False,
        agent_leaves_first=True,
        terminal="ticket.closed",
    ),
    _Plan(
        approved=False,
        invitation="declined",
        devices="allowed",
        camera=True,
        mic=True,
        geo=False,
        pictures=(),
        agent_contacted=False,
        early_priority_change=False,
        priority_changes=0,
        survey=False,
        agent_leaves_first=True,
        terminal="ticket.cancelled",
    ),
)


def _random_plan(rng: random.Random) -> _Plan:
    invitation: Invitation = rng.choices(
        ("accepted", "clicked", "resent", "expired_resent", "declined", "expired"),
        weights=(20, 45, 10, 8, 10, 7),
    )[0]
    devices: Devices = rng.choices(
        ("allowed", "granular", "disallowed_then_allowed"), weights=(60, 30, 10)
    )[0]
    pictures = tuple(
        (rng.random() < 0.9, rng.choices((0, 1, 2), weights=(60, 35, 5))[0])
        for _ in range(rng.choices((0, 1, 2, 3, 4), weights=(15, 30, 25, 20, 10))[0])
    )
    if invitation in _SESSION_INVITATIONS:
        terminal = rng.choices(
            ("ticket.completed", "ticket.closed", "ticket.cancelled"), weights=(50, 40, 10)
        )[0]
    else:
        terminal = rng.choices(("ticket.cancelled", "ticket.closed"), weights=(70, 30))[0]
    return _Plan(
        approved=rng.random() < 0.3,
        invitation=invitation,
        devices=devices,
        camera=rng.random() < 0.85,
        mic=rng.random() < 0.85,
        geo=rng.random() < 0.7,
        pictures=pictures,
        agent_contacted=rng.random() < 0.4,
        early_priority_change=rng.random() < 0.2,
        priority_changes=rng.choices((0, 1, 2), weights=(60, 30, 10))[0],
        survey=rng.random() < 0.5,
        agent_leaves_first=rng.random() < 0.5,
        terminal=terminal,
    )


def _person(values: tuple[str, str, str, str]) -> dict[str, str]:
    email, phone, firstname, lastname = values
    return {"email": email, "phone": phone, "firstname": firstname, "lastname": lastname}


class _TicketBuilder:
    """Lays out one ticket's events as (offset seconds, eventType, attributes)."""

    def __init__(
        self, rng: random.Random, start: float, unknown_rate: float, media_ids: list[int]
    ) -> None:
        self._rng = rng
        self._t = start
        self._unknown_rate = unknown_rate
        self._media_ids = media_ids
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self._agent = rng.choice(_AGENTS)
        requestor = rng.choice(_REQUESTORS)
        # Apizee sends empty strings for what it does not know (seed: survey.answered).
        if rng.random() < 0.15:
            requestor = (requestor[0], "", requestor[2], requestor[3])
        self._requestor = requestor
        self._priority = rng.choice((0, 1, 1, 2))

    def agent(self) -> dict[str, Any]:
        return {"agent": _person(self._agent)}

    def requestor(self) -> dict[str, Any]:
        return {"requestor": _person(self._requestor)}

    def add(self, event_type: str, attributes: dict[str, Any], lo: float, hi: float) -> None:
        self._t += self._rng.uniform(lo, hi)
        self.items.append((self._t, event_type, attributes))
        if self._unknown_rate and self._rng.random() < self._unknown_rate:
            self._add_unknown()

    def _add_unknown(self) -> None:
        rng = self._rng
        event_type = rng.choice(tuple(UNKNOWN_EVENT_CODES))
        attributes: dict[str, Any]
        if event_type == "whiteboard.drawn":
            attributes = {"strokes": rng.randint(1, 40), "color": f"#{rng.randrange(16**6):06x}"}
        elif event_type == "chat.messageSent":
            attributes = {**self.requestor(), "message": rng.choice(_UNKNOWN_TEXTS)}
        else:
            attributes = {**self.agent(), "screen": {"width": 1920, "height": 1080}}
        self._t += rng.uniform(0.5, 5.0)
        self.items.append((self._t, event_type, attributes))

    def priority_change(self) -> None:
        new = self._rng.choice([p for p in range(4) if p != self._priority])
        agent = self._agent
        if self._rng.random() < 0.3:  # a supervisor, often with fields left empty
            agent = _AGENTS[1]
        attrs = {"agent": _person(agent), "oldPriority": self._priority, "newPriority": new}
        self._priority = new
        self.add("ticket.priorityChanged", attrs, 5, 120)

    def media_id(self) -> int:
        self._media_ids[0] += self._rng.randint(1, 50)
        return self._media_ids[0]

    def survey(self) -> dict[str, Any]:
        rng = self._rng
        questions = [
            {"id": qid, "label": dict(label), "answer": rng.choice(_ANSWERS)}
            for qid, label in rng.sample(_SURVEY_QUESTIONS, rng.randint(1, 3))
        ]
        requestor = _person(self._requestor)
        if rng.random() < 0.4:  # as in the seed: an anonymous survey contact
            requestor.update(phone="", firstname="")
        return {
            "requestor": requestor,
            "surveyAnswer": {"questions": questions, "feedback": rng.choice(_FEEDBACKS)},
        }

    def geoloc(self) -> dict[str, Any]:
        # Unrounded floats, like the seed's 48.650032799999998.
        return {
            "geoloc": {"lat": self._rng.uniform(42.3, 51.1), "lng": self._rng.uniform(-4.8, 8.2)}
        }


def _build_ticket(b: _TicketBuilder, plan: _Plan, rng: random.Random) -> None:
    b.add("ticket.new", b.agent(), 0, 0)
    if plan.approved:
        b.add("ticket.approved", b.agent(), 5, 600)
    b.add("ticket.assigned", b.agent(), 1, 120)
    if plan.early_priority_change:
        b.priority_change()
    b.add("ticket.invitationSent", b.requestor(), 1, 30)
    inv = plan.invitation
    if inv == "clicked":
        b.add("ticket.invitationClicked", b.requestor(), 5, 300)
    elif inv == "resent":
        b.add("ticket.invitationNotclicked", b.requestor(), 300, 900)
        b.add("ticket.invitationResent", b.requestor(), 5, 60)
        b.add("ticket.invitationClicked", b.requestor(), 5, 300)
    elif inv == "expired_resent":
        b.add("ticket.invitationExpired", {}, 900, 1800)
        b.add("ticket.invitationResent", b.requestor(), 5, 120)
    elif inv == "declined":
        if rng.random() < 0.5:
            b.add("ticket.invitationClicked", b.requestor(), 5, 300)
        b.add("ticket.invitationDeclined", b.requestor(), 5, 120)
    elif inv == "expired":
        b.add("ticket.invitationNotclicked", b.requestor(), 300, 900)
        b.add("ticket.invitationExpired", {}, 600, 1800)
    if inv not in _SESSION_INVITATIONS:
        b.add(plan.terminal, b.agent(), 10, 600)
        return

    b.add("ticket.invitationAccepted", b.requestor(), 2, 60)
    b.add("consent.accepted", {}, 1, 20)
    b.add("ticket.sessionStarted", {}, 1, 10)
    if plan.devices == "allowed":
        b.add("mediaDevice.allowed", b.requestor(), 1, 10)
    elif plan.devices == "disallowed_then_allowed":
        b.add("mediaDevice.disallowed", b.requestor(), 1, 10)
        b.add("mediaDevice.allowed", b.requestor(), 5, 60)
    else:
        granular = [
            "mediaDevice.cameraAllowed" if plan.camera else "mediaDevice.cameraDisallowed",
            "mediaDevice.micAllowed" if plan.mic else "mediaDevice.micDisallowed",
        ]
        rng.shuffle(granular)
        for event_type in granular:
            b.add(event_type, b.requestor(), 1, 10)
    b.add("session.established", b.requestor(), 1, 15)
    b.add(
        "geo.ansAllowed" if plan.geo else "geo.ansDisallowed", b.geoloc() if plan.geo else {}, 1, 30
    )
    for sent, scans in plan.pictures:
        media_id = b.media_id()
        b.add("media.pictureTaken", {"mediaId": media_id}, 10, 120)
        if sent:
            b.add("media.pictureSent", {"mediaId": media_id}, 1, 15)
        for _ in range(scans):
            b.add("media.OCRDone", {"text": rng.choice(_OCR_TEXTS)}, 1, 20)
    if plan.agent_contacted:
        b.add("session.agentContacted", b.agent(), 5, 120)
    for _ in range(plan.priority_changes):
        b.priority_change()
    if plan.survey:
        b.add("survey.answered", b.survey(), 5, 90)
    leaves = [("session.agentLeft", b.agent()), ("session.userLeft", b.requestor())]
    if not plan.agent_leaves_first:
        leaves.reverse()
    for event_type, attributes in leaves:
        b.add(event_type, attributes, 1, 30)
    b.add(plan.terminal, b.agent(), 5, 900)


def generate_tickets(config: SimulatorConfig, now: float | None = None) -> list[Ticket]:
    """The tickets of `config`, deterministic for a seed (timestamps too when start_time is
    fixed). Event ids grow with recording time across tickets, with gaps, like a shared
    sequence of a multi-tenant service."""
    rng = random.Random(config.seed)  # noqa: S311 - a simulation, not secrets
    n = config.tickets
    # Forced plans spread over the range so that coverage does not hinge on the first ones.
    forced = {k * n // len(_COVER_PLANS): p for k, p in enumerate(_COVER_PLANS)} if n >= 4 else {}
    media_ids = [342_000]
    raw: list[tuple[float, int, int, str, dict[str, Any]]] = []
    ticket_ids: list[int] = []
    conversation_ids: list[int] = []
    ticket_id, conversation_id, start = config.first_ticket_id, config.first_conversation_id, 0.0
    for index in range(n):
        plan = forced.get(index) or _random_plan(rng)
        builder = _TicketBuilder(rng, start, config.unknown_rate, media_ids)
        _build_ticket(builder, plan, rng)
        raw.extend((t, index, seq, et, a) for seq, (t, et, a) in enumerate(builder.items))
        ticket_ids.append(ticket_id)
        conversation_ids.append(conversation_id)
        ticket_id += rng.randint(1, 4)
        conversation_id += rng.randint(1, 40)
        start += rng.expovariate(1 / 15)
    raw.sort(key=lambda r: (r[0], r[1], r[2]))

    wall = time.time() if now is None else now
    if config.rate is not None:
        base = wall if config.start_time is None else config.start_time
        times = [base + i / config.rate for i in range(len(raw))]
    else:
        span = raw[-1][0] if raw else 0.0
        base = wall - span - 1.0 if config.start_time is None else config.start_time
        times = [base + r[0] for r in raw]

    per_ticket: list[list[SimEvent]] = [[] for _ in range(n)]
    event_id = config.first_event_id
    for at, (_, index, _, event_type, attributes) in zip(times, raw, strict=True):
        code = EVENT_CODES.get(event_type) or UNKNOWN_EVENT_CODES[event_type]
        per_ticket[index].append(
            SimEvent(
                event_id,
                event_type,
                code,
                ticket_ids[index],
                conversation_ids[index],
                at,
                attributes,
            )
        )
        event_id += rng.randint(1, 3)
    return [Ticket(ticket_ids[i], conversation_ids[i], tuple(per_ticket[i])) for i in range(n)]


# --------------------------------------------------------------------------------------------
# REST endpoint


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the REST endpoint answered."""

    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    path: str
    ticket_id: int | None
    status: int
    fault: str | None  # the injected fault, if any: a FaultKind or "malformed:<mode>"
    duration: float


@dataclass(frozen=True, slots=True)
class RestStats:
    total: int
    by_status: dict[int, int]
    by_fault: dict[str, int]
    by_ticket: dict[int, int]
    # Most requests seen within any 1-second window, and the mean rate over the whole span.
    max_per_second: int
    mean_per_second: float


def _max_in_window(times: Sequence[float], window: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


_FAULT_KEY: Final = web.RequestKey("fault", str)
_MALFORMED_KEY: Final[web.RequestKey[MalformedMode]] = web.RequestKey("malformed")


def _ticket_id(request: web.Request) -> int | None:
    raw = request.match_info.get("ticketId", "")
    # ASCII digits only, and few: int() takes other Unicode digits and refuses huge strings.
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


class ApizeeRestServer:
    """`GET /api/v3/tickets/{ticketId}/events` over what `listing` says is recorded."""

    def __init__(
        self,
        listing: Callable[[int], Sequence[SimEvent] | None],
        *,
        token: str,
        faults: RestFaults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 1,
    ) -> None:
        self._listing = listing
        self._token = f"Bearer {token}".encode()
        self.faults = faults or RestFaults()
        self._host = host
        self._port = port
        self._rng = random.Random(f"{seed}/rest")  # noqa: S311 - a simulation
        self._windows: list[tuple[FaultKind, float, float]] = []
        self._runner: web.AppRunner | None = None
        self._started_at = time.monotonic()
        self.requests: list[RequestRecord] = []
        self.port = port
        self.app = self._build_app()

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._started_at = time.monotonic()
        self._windows = [
            (w.kind, self._started_at + w.start, self._started_at + w.start + w.duration)
            for w in self.faults.windows
        ]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """The base URL (what the bridge's BRIDGE_APIZEE_BASE_URL takes)."""
        return f"http://{self._host}:{self.port}"

    # fault control and measurements ---------------------------------------------------------

    def inject(self, kind: FaultKind, duration: float, start_in: float = 0.0) -> None:
        """Schedule a fault window from now (e.g. a 429 storm or an outage) while running."""
        start = time.monotonic() + start_in
        self._windows.append((kind, start, start + duration))

    def clear_faults(self) -> None:
        """End every window and every per-request probability."""
        self._windows.clear()
        self.faults = RestFaults()

    def reset_requests(self) -> None:
        self.requests.clear()

    def max_in_window(self, window: float = 1.0, statuses: Iterable[int] | None = None) -> int:
        """Most requests (with one of `statuses`, if given) that arrived within `window` s."""
        wanted = None if statuses is None else frozenset(statuses)
        times = sorted(r.at for r in self.requests if wanted is None or r.status in wanted)
        return _max_in_window(times, window)

    def stats(self) -> RestStats:
        records = list(self.requests)
        times = sorted(r.at for r in records)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return RestStats(
            total=len(records),
            by_status=dict(Counter(r.status for r in records)),
            by_fault=dict(Counter(r.fault for r in records if r.fault is not None)),
            by_ticket=dict(Counter(r.ticket_id for r in records if r.ticket_id is not None)),
            max_per_second=_max_in_window(times, 1.0),
            mean_per_second=len(records) / span if span > 0 else float(len(records)),
        )

    # the app ------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record, self._outage, self._auth, self._inject])
        app.router.add_get(REST_PATH, self._list_events)
        return app

    def _window(self, now: float) -> FaultKind | None:
        for kind, start, end in self._windows:
            if start <= now < end:
                return kind
        return None

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        at, wall = time.monotonic(), time.time()
        ticket_id = _ticket_id(request)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            fault: str | None = request.get(_FAULT_KEY)
            self.requests.append(
                RequestRecord(
                    at, wall, request.path, ticket_id, status, fault, time.monotonic() - at
                )
            )

    @web.middleware
    async def _outage(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._window(time.monotonic()) == "outage":
            request[_FAULT_KEY] = "outage"
            return _json(503, {"error": "service_unavailable", "message": "Maintenance"})
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        presented = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(presented, self._token):
            return _json(
                401,
                {"error": "unauthorized", "message": "A valid Bearer token is required"},
                {"WWW-Authenticate": 'Bearer realm="apizee"'},
            )
        return await handler(request)

    def _retry_after(self) -> str:
        seconds = self.faults.retry_after_seconds
        form = self.faults.retry_after_form
        if form == "mixed":
            form = self._rng.choice(("delta", "date"))
        if form == "date":
            # HTTP-date has 1 s resolution: round up so the client never comes back early.
            return formatdate(math.ceil(time.time() + seconds), usegmt=True)
        return str(math.ceil(seconds))

    @web.middleware
    async def _inject(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        faults = self.faults
        kind: str | None = self._window(time.monotonic())
        slow = kind == "slow"
        if kind is None:
            r, cumulative = self._rng.random(), 0.0
            for name, p in (
                ("429", faults.p_429),
                ("500", faults.p_500),
                ("502", faults.p_502),
                ("503", faults.p_503),
                ("malformed", faults.p_malformed),
            ):
                cumulative += p
                if r < cumulative:
                    kind = name
                    break
            slow = faults.p_slow > 0 and self._rng.random() < faults.p_slow
        if slow:
            await asyncio.sleep(faults.slow_seconds)
        if kind is not None and kind != "slow":
            request[_FAULT_KEY] = kind
        elif slow:
            request[_FAULT_KEY] = "slow"
        if kind == "429":
            return _json(
                429,
                {"error": "too_many_requests", "message": "Rate limit exceeded"},
                {"Retry-After": self._retry_after()},
            )
        if kind == "500":
            return _json(500, {"error": "internal_error"})
        if kind == "502":
            # What a gateway in front of the API answers: HTML, not JSON.
            return web.Response(
                status=502,
                text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        if kind == "503":
            return _json(503, {"error": "service_unavailable"})
        if kind == "malformed":
            mode = self._rng.choice(faults.malformed_modes)
            request[_MALFORMED_KEY] = mode
            request[_FAULT_KEY] = f"malformed:{mode}"
        return await handler(request)

    async def _list_events(self, request: web.Request) -> web.StreamResponse:
        ticket_id = _ticket_id(request)
        events = None if ticket_id is None else self._listing(ticket_id)
        if ticket_id is None or events is None:
            return _json(404, {"error": "not_found", "message": "Ticket not found"})
        items = [e.rest_item() for e in events]
        mode: MalformedMode | None = request.get(_MALFORMED_KEY)
        if mode is None:
            return _json(200, items)
        return self._malformed(mode, ticket_id, items)

    def _malformed(
        self, mode: MalformedMode, ticket_id: int, items: list[dict[str, Any]]
    ) -> web.Response:
        if mode == "not_json":
            body = b"<html><body>Service temporarily unavailable</body></html>"
            return web.Response(status=200, body=body, content_type="application/json")
        if mode == "truncated":
            full = orjson.dumps(items)
            return web.Response(
                status=200, body=full[: max(1, len(full) // 2)], content_type="application/json"
            )
        if mode == "not_list":
            return _json(200, {"status": "ok", "events": items})
        if mode == "wrong_shape":
            index = self._rng.randrange(len(items))
            items[index] = self._corrupt(items[index])
            return _json(200, items)
        # unknown_type: a well-formed item of an eventType the catalog does not know.
        at = max((i["timestamp"] for i in items), default=int(time.time()))
        items.append(
            {
                "id": INJECTED_ID_BASE + ticket_id,
                "eventType": "whiteboard.drawn",
                "timestamp": at,
                "conversationId": items[0]["conversationId"] if items else 0,
                "data": {"strokes": 3, "color": "#ff8800"},
            }
        )
        return _json(200, items)

    def _corrupt(self, item: dict[str, Any]) -> dict[str, Any]:
        """An item that a strict reader must refuse (parse_rest_item raises)."""
        variant = self._rng.randrange(5)
        bad = dict(item)
        if variant == 0:
            bad["id"] = str(item["id"])
        elif variant == 1:
            del bad["conversationId"]
        elif variant == 2:
            bad["timestamp"] = "2025-03-10T15:45:30Z"
        elif variant == 3:
            bad["data"] = [item["data"]]
        else:
            del bad["eventType"]
        return bad


# --------------------------------------------------------------------------------------------
# Webhook sender


class Outcome(StrEnum):
    """What became of one event's webhook (per delivery, and the best per event id)."""

    ACCEPTED = "accepted"  # 200 {"status": "accepted"} (or any other 2xx but 202)
    ACCEPTED_UNKNOWN = "accepted_unknown"  # 202: unknown eventType, kept on the unknown topic
    DUPLICATE = "duplicate"  # 200 {"status": "duplicate"}
    REFUSED = "refused"  # a 4xx other than 429: the bridge will never take it
    FAILED = "failed"  # 429/5xx/connection errors until retries ran out
    DROPPED = "dropped"  # never sent, by design (the drop rate)


ACKED_OUTCOMES: Final = frozenset({Outcome.ACCEPTED, Outcome.ACCEPTED_UNKNOWN, Outcome.DUPLICATE})
_RANK: Final = {
    Outcome.ACCEPTED: 0,
    Outcome.ACCEPTED_UNKNOWN: 1,
    Outcome.DUPLICATE: 2,
    Outcome.REFUSED: 3,
    Outcome.FAILED: 4,
    Outcome.DROPPED: 5,
}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook POST of one event (copy 0 the original, 1 a duplicate) after retries."""

    event_id: int
    copy: int
    outcome: Outcome
    status: int | None  # the last HTTP status, None if the last attempt got none
    attempts: int
    error: str | None = None


@dataclass(slots=True)
class SendReport:
    """Ground truth of one sending run; filled while the run goes on."""

    events: int = 0
    dropped: set[int] = field(default_factory=set)
    duplicated: set[int] = field(default_factory=set)
    deliveries: list[Delivery] = field(default_factory=list)

    def outcomes(self) -> dict[int, Outcome]:
        """Per event id, the best outcome among its deliveries (or DROPPED)."""
        best: dict[int, Outcome] = dict.fromkeys(self.dropped, Outcome.DROPPED)
        for d in self.deliveries:
            current = best.get(d.event_id)
            if current is None or _RANK[d.outcome] < _RANK[current]:
                best[d.event_id] = d.outcome
        return best

    def ids_with(self, *outcomes: Outcome) -> set[int]:
        wanted = frozenset(outcomes)
        return {event_id for event_id, o in self.outcomes().items() if o in wanted}

    def acked_ids(self) -> set[int]:
        """Ids the bridge acknowledged (200 or 202) at least once."""
        return self.ids_with(*ACKED_OUTCOMES)

    def failed_ids(self) -> set[int]:
        return self.ids_with(Outcome.FAILED)

    def refused_ids(self) -> set[int]:
        return self.ids_with(Outcome.REFUSED)

    def summary(self) -> dict[str, int]:
        outcomes = Counter(self.outcomes().values())
        return {
            "events": self.events,
            "sent": self.events - len(self.dropped),
            "dropped": len(self.dropped),
            "duplicated": len(self.duplicated),
            "deliveries": len(self.deliveries),
            "retries": sum(d.attempts - 1 for d in self.deliveries if d.attempts > 0),
            "acked": sum(outcomes[o] for o in ACKED_OUTCOMES),
            "accepted": outcomes[Outcome.ACCEPTED],
            "accepted_unknown": outcomes[Outcome.ACCEPTED_UNKNOWN],
            "duplicate": outcomes[Outcome.DUPLICATE],
            "refused": outcomes[Outcome.REFUSED],
            "failed": outcomes[Outcome.FAILED],
        }


class _RetryableError(Exception):
    """A delivery attempt a webhook platform tries again: 429, 5xx, no answer."""

    def __init__(self, status: int | None, reason: str, retry_after: float | None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


class WebhookSender:
    """Posts events as Apizee's webhook, like a webhook platform: signed, concurrent, retried
    on 429/5xx/connection errors with exponential backoff, through a lossy network."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._rng = random.Random(f"{config.seed}/webhook")  # noqa: S311 - a simulation
        self._backoff = wait_exponential(
            multiplier=config.backoff_initial, max=config.backoff_max
        ) + wait_random(0, config.backoff_initial)
        self.report = SendReport()

    async def send(self, events: Iterable[SimEvent] | AsyncIterable[SimEvent]) -> SendReport:
        """Send every event (minus drops, plus duplicates); return when all are settled."""
        cfg = self.config
        report = self.report
        queue: asyncio.Queue[tuple[SimEvent, int] | None] = asyncio.Queue(cfg.concurrency * 2)
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        connector = aiohttp.TCPConnector(limit=cfg.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            workers = [
                asyncio.create_task(self._worker(session, queue)) for _ in range(cfg.concurrency)
            ]
            try:
                window: list[tuple[SimEvent, int]] = []
                async for event in _aiter(events):
                    report.events += 1
                    if self._rng.random() < cfg.drop:
                        report.dropped.add(event.event_id)
                        continue
                    window.append((event, 0))
                    if self._rng.random() < cfg.duplicate:
                        report.duplicated.add(event.event_id)
                        window.append((event, 1))
                    while len(window) >= cfg.reorder_window:
                        await queue.put(window.pop(self._rng.randrange(len(window))))
                while window:
                    await queue.put(window.pop(self._rng.randrange(len(window))))
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        return report

    async def _worker(
        self, session: aiohttp.ClientSession, queue: asyncio.Queue[tuple[SimEvent, int] | None]
    ) -> None:
        cfg = self.config
        while (item := await queue.get()) is not None:
            event, copy = item
            delay = cfg.latency + (self._rng.uniform(0, cfg.jitter) if cfg.jitter else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            self.report.deliveries.append(await self.deliver(session, event, copy))

    async def deliver(
        self, session: aiohttp.ClientSession, event: SimEvent, copy: int = 0
    ) -> Delivery:
        """POST one event, retrying as configured; never raises for HTTP or network errors."""
        cfg = self.config
        body = orjson.dumps(event.webhook_body())
        attempts = 0
        status: int | None = None
        payload = b""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 + cfg.max_retries if cfg.retry else 1),
            wait=self._wait,
            retry=retry_if_exception_type(_RetryableError),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    status, payload = await self._post(session, body)
        except _RetryableError as exc:
            return Delivery(event.event_id, copy, Outcome.FAILED, exc.status, attempts, exc.reason)
        assert status is not None
        return Delivery(event.event_id, copy, _classify(status, payload), status, attempts)

    def _wait(self, state: RetryCallState) -> float:
        delay = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _RetryableError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return min(delay, self.config.backoff_max)

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> tuple[int, bytes]:
        try:
            async with session.post(
                self.config.url, data=body, headers=self.headers(body)
            ) as response:
                payload = await response.read()
                if response.status == 429 or response.status >= 500:
                    raise _RetryableError(
                        response.status,
                        f"HTTP {response.status}",
                        _parse_retry_after(response.headers.get("Retry-After")),
                    )
                return response.status, payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _RetryableError(None, type(exc).__name__, None) from exc

    def headers(self, body: bytes) -> dict[str, str]:
        """Content type and credentials for `body`; signed afresh on every attempt."""
        cfg = self.config
        headers = {"Content-Type": "application/json", "User-Agent": "apizee-simulator"}
        if cfg.token is not None:
            headers[cfg.token_header] = cfg.token
        if cfg.hmac_secret is not None:
            timestamp = int(time.time()) if cfg.timestamp_header else None
            signature = sign(cfg.hmac_secret.encode(), body, timestamp, cfg.hmac_encoding)
            headers[cfg.hmac_header] = cfg.hmac_prefix + signature
            if cfg.timestamp_header is not None:
                headers[cfg.timestamp_header] = str(timestamp)
        if cfg.basic is not None:
            headers["Authorization"] = aiohttp.BasicAuth(*cfg.basic).encode()
        return headers


def _classify(status: int, payload: bytes) -> Outcome:
    if status == 202:
        return Outcome.ACCEPTED_UNKNOWN
    if 200 <= status < 300:
        with contextlib.suppress(orjson.JSONDecodeError):
            answer = orjson.loads(payload)
            if isinstance(answer, dict) and answer.get("status") == "duplicate":
                return Outcome.DUPLICATE
        return Outcome.ACCEPTED
    return Outcome.REFUSED


async def _aiter(events: Iterable[SimEvent] | AsyncIterable[SimEvent]) -> AsyncIterator[SimEvent]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event


# --------------------------------------------------------------------------------------------
# The simulator


class Simulator:
    """The fake Apizee: its tickets, what it has recorded so far, its REST endpoint and its
    webhooks. `async with Simulator(config) as sim: await sim.send_all(bridge_url, ...)`."""

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config, **overrides) if config else SimulatorConfig(**overrides)
        self.tickets: tuple[Ticket, ...] = tuple(generate_tickets(self.config))
        self.events: tuple[SimEvent, ...] = tuple(
            sorted((e for t in self.tickets for e in t.events), key=lambda e: e.event_id)
        )
        self._by_id = {e.event_id: e for e in self.events}
        self._recorded = 0
        self._recorded_by_ticket: dict[int, list[SimEvent]] = {}
        self._progress = asyncio.Event()
        self._recorder: asyncio.Task[None] | None = None
        self.rest = ApizeeRestServer(
            self._recorded_events_of,
            token=self.config.rest_token,
            faults=self.config.faults,
            host=self.config.rest_host,
            port=self.config.rest_port,
            seed=self.config.seed,
        )
        self.reports: list[SendReport] = []

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.rest.start()
        if not self.config.manual:
            self._record_due(time.time())
            if self._recorded < len(self.events):
                self._recorder = asyncio.create_task(self._record_on_time())

    async def stop(self) -> None:
        if self._recorder is not None:
            self._recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recorder
            self._recorder = None
        await self.rest.stop()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """The REST base URL for the bridge (BRIDGE_APIZEE_BASE_URL)."""
        return self.rest.url

    # recording ------------------------------------------------------------------------------

    def _recorded_events_of(self, ticket_id: int) -> Sequence[SimEvent] | None:
        # A ticket exists for the API once its first event is recorded.
        return self._recorded_by_ticket.get(ticket_id)

    def _advance(self, upto: int) -> list[SimEvent]:
        newly = list(self.events[self._recorded : upto])
        for event in newly:
            self._recorded_by_ticket.setdefault(event.ticket_id, []).append(event)
        self._recorded = max(self._recorded, upto)
        if newly:
            self._progress.set()
            self._progress = asyncio.Event()
        return newly

    def _record_due(self, now: float) -> None:
        upto = self._recorded
        while upto < len(self.events) and self.events[upto].at <= now:
            upto += 1
        self._advance(upto)

    async def _record_on_time(self) -> None:
        while self._recorded < len(self.events):
            await asyncio.sleep(max(0.0, self.events[self._recorded].at - time.time()))
            self._record_due(time.time())

    def record(self, n: int = 1) -> list[SimEvent]:
        """Record the next `n` events now, whatever their time (manual mode)."""
        return self._advance(min(len(self.events), self._recorded + n))

    def record_all(self) -> list[SimEvent]:
        return self._advance(len(self.events))

    @property
    def recorded_count(self) -> int:
        return self._recorded

    @property
    def all_recorded(self) -> bool:
        return self._recorded == len(self.events)

    async def wait_all_recorded(self) -> None:
        while not self.all_recorded:
            await self._progress.wait()

    async def recorded_events(self) -> AsyncIterator[SimEvent]:
        """Every event in recording order, waiting for those not recorded yet."""
        index = 0
        while index < len(self.events):
            progress = self._progress
            if index < self._recorded:
                upto = self._recorded
                for event in self.events[index:upto]:
                    yield event
                index = upto
            else:
                await progress.wait()

    # webhooks -------------------------------------------------------------------------------

    async def send_all(self, bridge: str | WebhookConfig, **options: Any) -> SendReport:
        """Send each event's webhook as it gets recorded; return once every one is settled.
        `options` are WebhookConfig fields (token=, hmac_secret=, drop=, duplicate=, ...)."""
        if isinstance(bridge, str):
            config = WebhookConfig(url=bridge, **{"seed": self.config.seed, **options})
        else:
            config = replace(bridge, **options)
        sender = WebhookSender(config)
        self.reports.append(sender.report)
        return await sender.send(self.recorded_events())

    # ground truth ---------------------------------------------------------------------------

    def event(self, event_id: int) -> SimEvent:
        return self._by_id[event_id]

    def event_ids(self, *, known_only: bool = False) -> list[int]:
        """Every event id, in order (what the bridge must eventually publish)."""
        return [e.event_id for e in self.events if e.known or not known_only]

    def ticket_ids(self) -> list[int]:
        return [t.ticket_id for t in self.tickets]

    def ids_by_ticket(self) -> dict[int, list[int]]:
        return {t.ticket_id: t.event_ids for t in self.tickets}

    def recorded_ids(self) -> list[int]:
        return [e.event_id for e in self.events[: self._recorded]]

    def event_types(self) -> set[str]:
        return {e.event_type for e in self.events}

    def dropped_ids(self) -> set[int]:
        """Ids whose webhook was dropped by design, over every send_all run."""
        return set().union(*(r.dropped for r in self.reports))

    def acked_ids(self) -> set[int]:
        """Ids the bridge answered 200/202 for, over every send_all run."""
        return set().union(*(r.acked_ids() for r in self.reports))

    def tickets_without_webhook(self) -> list[int]:
        """Tickets none of whose webhooks was acked: a poller that learns tickets from
        webhooks never hears of them (a test backfills them, or picks another seed)."""
        acked = self.acked_ids()
        return [t.ticket_id for t in self.tickets if not acked.intersection(t.event_ids)]


# --------------------------------------------------------------------------------------------
# `apizee-bridge simulate`


def parse_window(text: str, kind: str | None = None) -> FaultWindow:
    """`KIND:START:DURATION` (or `START:DURATION` with `kind` given), seconds after start."""
    parts = text.split(":")
    if kind is None:
        kind, *parts = parts
    if kind not in FAULT_KINDS or len(parts) != 2:
        raise ValueError(
            f"bad fault window {text!r}: want KIND:START:DURATION, KIND one of "
            + ", ".join(FAULT_KINDS)
        )
    return FaultWindow(kind=kind, start=float(parts[0]), duration=float(parts[1]))


def configs_from_args(args: argparse.Namespace) -> tuple[SimulatorConfig, WebhookConfig | None]:
    """The simulator and sender configuration the `simulate` subcommand's flags describe."""
    windows = tuple(parse_window(w, "outage") for w in args.outage or ()) + tuple(
        parse_window(w) for w in args.window or ()
    )
    faults = RestFaults(
        p_429=args.fail_429,
        retry_after_seconds=args.retry_after,
        retry_after_form=args.retry_after_form,
        p_500=args.fail_500,
        p_502=args.fail_502,
        p_503=args.fail_503,
        p_slow=args.slow,
        slow_seconds=args.slow_seconds,
        p_malformed=args.malformed,
        windows=windows,
    )
    config = SimulatorConfig(
        tickets=args.tickets,
        seed=args.seed,
        rate=args.rate,
        unknown_rate=args.unknown_rate,
        rest_host=args.rest_host,
        rest_port=args.rest_port,
        rest_token=args.rest_token,
        faults=faults,
    )
    if args.bridge_url is None:
        return config, None
    webhook = WebhookConfig(
        url=args.bridge_url,
        token=args.token,
        token_header=args.token_header,
        hmac_secret=args.hmac_secret,
        hmac_header=args.hmac_header,
        hmac_encoding=args.hmac_encoding,
        hmac_prefix=args.hmac_prefix,
        timestamp_header=args.timestamp_header,
        drop=args.drop,
        duplicate=args.duplicate,
        reorder_window=args.reorder_window,
        latency=args.latency,
        jitter=args.jitter,
        concurrency=args.concurrency,
        retry=not args.no_retry,
        max_retries=args.max_retries,
        seed=args.seed,
    )
    return config, webhook


def format_summary(summary: dict[str, int]) -> str:
    return " ".join(f"{key}={value}" for key, value in summary.items())


async def run_simulation(
    config: SimulatorConfig,
    webhook: WebhookConfig | None,
    *,
    exit_when_done: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Serve REST, send the webhooks, print a summary, keep serving until SIGINT/SIGTERM.

    With `exit_when_done`, return once every webhook is settled: 1 if any failed or was
    refused, else 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Simulator(config) as sim:
            print(
                f"apizee simulator: {len(sim.tickets)} tickets, {len(sim.events)} events;"
                f" REST on {sim.base_url}{REST_PATH} (Authorization: Bearer"
                f" {config.rest_token})",
                file=out,
                flush=True,
            )
            if webhook is not None:
                print(f"sending webhooks to {webhook.url}", file=out, flush=True)
                sending = asyncio.create_task(sim.send_all(webhook))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({sending, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not sending.done():
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sending
                    print("interrupted: " + format_summary(sim.reports[-1].summary()), file=out)
                    return 130
                summary = sending.result().summary()
                print("done: " + format_summary(summary), file=out, flush=True)
                if exit_when_done:
                    return 1 if summary["failed"] or summary["refused"] else 0
            if exit_when_done:
                await sim.wait_all_recorded()
                return 0
            print("serving REST until Ctrl-C", file=out, flush=True)
            await stop.wait()
            return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def simulate_command(args: argparse.Namespace) -> int:
    try:
        config, webhook = configs_from_args(args)
    except ValueError as exc:
        print(f"apizee-bridge simulate: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_simulation(config, webhook, exit_when_done=args.exit_when_done))
