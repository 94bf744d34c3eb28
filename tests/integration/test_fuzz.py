"""Fuzz of the webhook ingress against a real broker: thousands of generated requests (bodies,
content types, credentials, sizes, framing) through one in-process bridge.

Every request is classified independently of the bridge's code by the generator (401 when no
presented credential is valid, before anything else unless an HMAC signature must be checked
against the body; 415 when the content type is not JSON, 413 when the body is over the limit,
then 200 / 202 / 400 by how the body was built; a few mutations are allowed either way).
Then Kafka is read back with confluent-kafka: every 400 is on the DLQ with its raw bytes, every
accepted event id is on its topic once, and nothing else was written.

`FUZZ_EXAMPLES` (default 10 000) sets the number of requests, `FUZZ_SEED` the seed; a failure
prints the seed and the cases that went wrong, so it can be replayed.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import pytest
from multidict import CIMultiDict

from bridge.auth import sign
from bridge.catalog import EVENTS, INT32_MAX, INT64_MAX
from bridge.codec import Codec
from bridge.config import BridgeSettings
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import (
    HMAC_HEADER,
    TOKEN_HEADER,
    InProcessBridge,
    Reply,
    bridge_settings,
    running_bridge,
)
from tests.integration.readback import Record, consume_async
from tests.unit.conftest import load_fixture

pytestmark = pytest.mark.integration

EXAMPLES: Final = int(os.environ.get("FUZZ_EXAMPLES", "10000"))
SEED: Final = int(os.environ.get("FUZZ_SEED", "20261125"))
CONCURRENCY: Final = 48
MAX_BODY: Final = 8192
REPLAYS: Final = 200

TOKEN: Final = "fuzz-token-6f1d2c"
HMAC_SECRET: Final = "fuzz-hmac-secret-9a8b"
HMAC_PREFIX: Final = "sha256="
TIMESTAMP_HEADER: Final = "X-Apizee-Timestamp"
TOLERANCE: Final = 300
BASIC_USER: Final = "apizee"
BASIC_PASSWORD: Final = "fuzz-basic-pw-42"

CODEC: Final = Codec()
SEED_PROPS: Final[dict[str, dict[str, Any]]] = load_fixture("seed_props_examples.json")
KNOWN_TYPES: Final = sorted(SEED_PROPS)
JSON_TYPES: Final = ("application/json", "application/json; charset=utf-8")
# Media types are case-insensitive (RFC 9110 8.3.1).
JSON_TYPES_ODD: Final = ("Application/JSON", "application/json;charset=UTF-8")
NOT_JSON_TYPES: Final = (
    None,  # no Content-Type at all
    "text/plain",
    "text/json",
    "application/jsonx",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "application/problem+json",
    "json",
)

OK, UNKNOWN, INVALID = frozenset({200}), frozenset({202}), frozenset({400})
EITHER = frozenset({200, 202, 400})
ALLOWED = frozenset({200, 202, 400, 401, 408, 413, 415})


@dataclass
class Case:
    n: int
    kind: str  # what the generator did, for the failure report
    body: bytes
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    expect: frozenset[int] = OK
    # For bodies built valid: the event id and type the answer and Kafka must show.
    event_id: int | None = None
    event_type: str | None = None
    ticket_id: int | None = None
    extra_check: tuple[str, Any] | None = None  # (attribute, value) kept verbatim in `extra`


@dataclass
class Outcome:
    case: Case
    reply: Reply | None
    error: str | None = None


def _dumps(value: Any) -> bytes:
    # The stdlib, so that integers beyond 64 bits are written as they are.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Generator:
    """Seeded requests with their expected status, built from the seed's examples."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_id = 10_000_000 + self.rng.randrange(1_000_000)

    def fresh_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # -- bodies ---------------------------------------------------------------------------

    def envelope(self, event_type: str | None = None) -> dict[str, Any]:
        rng = self.rng
        event_type = event_type or rng.choice(KNOWN_TYPES)
        props: dict[str, Any] = {
            "eventType": event_type,
            "conversationId": rng.randrange(1, 10_000),
            "ticketId": rng.randrange(1, 64),
            **json.loads(json.dumps(SEED_PROPS.get(event_type, {}))),
        }
        code = rng.random()
        if code < 0.6:
            props["eventCode"] = rng.randrange(0, 100)
        elif code < 0.7:
            props["eventCode"] = None
        return {
            "event": "create",
            "time": rng.choice([1749581447, 1749581447.25, rng.randrange(0, 2_000_000_000)]),
            "object": "conversationevent",
            "objectId": self.fresh_id(),
            "props": props,
        }

    def unknown_type(self) -> str:
        rng = self.rng
        while True:
            category = rng.choice(["whiteboard", "media", "ticket", "x", "Ω", "cobrowse"])
            name = f"{category}.{rng.choice(['drawn', 'hologram', 'new2', 'é', 'a' * 40])}"
            if name not in EVENTS:
                return name

    def tricky_value(self) -> Any:
        rng = self.rng
        return rng.choice(
            [
                2**70,
                -(2**80),
                INT64_MAX + 1,
                1e-300,
                -0.0,
                "emoji 🎥 and RTL \u202e text",
                'nul \u0000 and escapes \\ " \n',
                "x" * rng.randrange(100, 2000),
                {},
                [],
                [None, True, False, 0],
                {"k": {"k": {"k": {"k": [1, {"z": None}]}}}},
                self.nested(rng.randrange(2, 40)),
            ]
        )

    def nested(self, depth: int) -> Any:
        value: Any = self.rng.randrange(10)
        for level in range(depth):
            value = [value] if level % 2 else {"d": value}
        return value

    def body_case(self) -> tuple[str, bytes, frozenset[int], dict[str, Any] | None, Any]:
        """(kind, body, expected statuses if authenticated, the envelope if it is valid...)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.30:
            env = self.envelope()
            return "valid", _dumps(env), OK, env, None
        if roll < 0.38:
            env = self.envelope(self.unknown_type())
            return "unknown_type", _dumps(env), UNKNOWN, env, None
        if roll < 0.50:
            env = self.envelope(rng.choice([None, self.unknown_type()]))
            name = rng.choice(["zzExtra", "pad", "weird", "données"])
            value = self.tricky_value()
            env["props"][name] = value
            expect = OK if env["props"]["eventType"] in EVENTS else UNKNOWN
            return "tricky_attribute", _dumps(env), expect, env, (name, value)
        if roll < 0.72:
            return self.wrong_type()
        if roll < 0.87:
            return self.not_json()
        if roll < 0.92:
            env = self.envelope()
            env["props"]["deep"] = "@@DEEP@@"
            depth = rng.choice([1000, 1000, rng.randrange(2, 300)])
            deep = b"[" * depth + b"]" * depth
            body = _dumps(env).replace(b'"@@DEEP@@"', deep)
            # 1000 levels is past any sane parser limit; a few hundred may pass or not.
            return f"deep_{depth}", body, INVALID if depth >= 1000 else EITHER, None, None
        if roll < 0.96:
            env = self.envelope()
            text = _dumps(env).decode()
            other = self.fresh_id()
            text = text.replace('"objectId":', f'"objectId":{other},"objectId":', 1)
            return "duplicate_key", text.encode(), frozenset({200, 400}), None, None
        env = self.envelope()
        literal = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e-400", "1E+2"])
        env["props"]["lossy"] = "@@L@@"
        body = _dumps(env).replace(b'"@@L@@"', literal.encode())
        # Not JSON (RFC 8259): refused. Numbers beyond a double: kept as written.
        expect = INVALID if literal.lstrip("-") in ("NaN", "Infinity") else OK
        return f"literal_{literal}", body, expect, None, None

    def wrong_type(self) -> tuple[str, bytes, frozenset[int], None, None]:
        rng = self.rng
        env = self.envelope()
        bad_ids = ["1266", -1, 2**63, 2**64, 2**80, 1.5, 1.0, True, None, [], {}]
        choices: dict[tuple[str, ...], list[Any]] = {
            ("objectId",): bad_ids,
            ("time",): ["1749581447", -1, 1e20, 2**70, True, None, "NaN", [], {}],
            ("event",): ["update", "", 1, None, "Create", ["create"]],
            ("object",): ["ticket", "", None, 5, "Conversationevent"],
            ("props",): [[], "x", None, 1, True],
            ("props", "eventType"): ["", "x" * 256, 5, None, [], {"a": 1}],
            ("props", "ticketId"): bad_ids,
            ("props", "conversationId"): bad_ids,
            ("props", "eventCode"): ["41", INT32_MAX + 1, -(2**31) - 1, 1.5, True, []],
        }
        roll = rng.random()
        if roll < 0.15:
            path = rng.choice(
                [("objectId",), ("time",), ("event",), ("object",), ("props",)]
                + [("props", k) for k in ("eventType", "ticketId", "conversationId")]
            )
            target = env if len(path) == 1 else env["props"]
            del target[path[-1]]
            return f"missing_{'.'.join(path)}", _dumps(env), INVALID, None, None
        if roll < 0.30:
            # A known attribute of the wrong JSON type.
            typed = {
                "media.pictureTaken": ("mediaId", ["342432", 1.5, [], {}]),
                "media.OCRDone": ("text", [5, [], {}, True]),
                "geo.ansAllowed": ("geoloc", ["48.6,-3.3", 5, []]),
                "ticket.approved": ("agent", ["john", 5, [1]]),
                "session.userLeft": ("requestor", ["jane", 5, [1]]),
                "ticket.priorityChanged": ("oldPriority", ["1", 1.5, INT32_MAX + 1]),
            }
            event_type = rng.choice(sorted(typed))
            env = self.envelope(event_type)
            name, values = typed[event_type]
            env["props"][name] = rng.choice(values)
            return f"attribute_{name}", _dumps(env), INVALID, None, None
        path = rng.choice(sorted(choices))
        target = env if len(path) == 1 else env["props"]
        target[path[-1]] = rng.choice(choices[path])
        return f"wrong_{'.'.join(path)}", _dumps(env), INVALID, None, None

    def not_json(self) -> tuple[str, bytes, frozenset[int], None, None]:
        rng = self.rng
        valid = _dumps(self.envelope())
        variants: list[tuple[str, bytes]] = [
            ("empty", b""),
            ("whitespace", b" \r\n\t "),
            ("truncated", valid[: rng.randrange(1, len(valid))]),
            ("scalar", rng.choice([b"null", b"1", b'"create"', b"true", b"[]", b"{}"])),
            ("trailing_garbage", valid + rng.choice([b" x", b",", b"}", b"{}"])),
            ("two_objects", valid + valid),
            ("single_quotes", valid.replace(b'"', b"'")),
            ("trailing_comma", valid[:-1] + b",}"),
            ("comment", b"/* c */" + valid),
            ("random_bytes", rng.randbytes(rng.randrange(1, 200))),
            ("bom", b"\xef\xbb\xbf" + valid),
        ]
        # Invalid UTF-8 inside a string value: the eventType's.
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"])
        at = valid.index(b'"eventType":"') + len(b'"eventType":"')
        variants.append(("invalid_utf8", valid[:at] + bad + valid[at:]))
        kind, body = rng.choice(variants)
        if kind == "random_bytes":
            try:
                json.loads(body)
            except ValueError:
                pass
            else:  # pragma: no cover - a random JSON document that is an envelope: no
                body = b"\xff" + body
        # A BOM before JSON: RFC 8259 lets a parser ignore it or refuse it.
        expect = frozenset({200, 400}) if kind == "bom" else INVALID
        return kind, body, expect, None, None

    # -- credentials ----------------------------------------------------------------------

    def credentials(
        self, body: bytes, now: float
    ) -> tuple[str, bool, dict[str, str], dict[str, str]]:
        """(label, whether any presented credential is valid, headers, query)."""
        rng = self.rng
        headers: dict[str, str] = {}
        params: dict[str, str] = {}
        labels: list[str] = []
        valid = False
        if rng.random() < 0.12:
            return "none", False, headers, params
        methods = rng.sample(["hmac", "token", "query", "basic"], rng.choice([1, 1, 1, 2, 3]))
        if "token" in methods and "query" in methods:
            methods.remove("query")  # the header wins when both are there
        for method in methods:
            ok = rng.random() < 0.65
            label = getattr(self, f"_{method}")(ok, body, now, headers, params)
            labels.append(f"{method}:{label}")
            valid = valid or ok
        return ",".join(labels), valid, headers, params

    def _hmac(
        self, ok: bool, body: bytes, now: float, headers: dict[str, str], _: dict[str, str]
    ) -> str:
        rng = self.rng
        secret = HMAC_SECRET.encode()
        ts = int(now) + rng.randrange(-60, 60)
        if ok:
            variant = rng.choice(["plain", "upper_prefix", "upper_hex"])
            digest = sign(secret, body, ts, "hex")
            prefix = HMAC_PREFIX.upper() if variant == "upper_prefix" else HMAC_PREFIX
            headers[HMAC_HEADER] = prefix + (digest.upper() if variant == "upper_hex" else digest)
            headers[TIMESTAMP_HEADER] = str(ts)
            return variant
        variant = rng.choice(
            [
                "replayed",
                "future",
                "no_timestamp",
                "timestamp_not_digits",
                "other_body",
                "flipped",
                "truncated",
                "base64",
                "no_prefix",
                "wrong_secret",
                "empty",
                "huge_timestamp",
            ]
        )
        digest = sign(secret, body, ts, "hex")
        stamp = str(ts)
        if variant == "replayed":
            stamp = str(int(now) - TOLERANCE - 100 - rng.randrange(100_000))
            digest = sign(secret, body, int(stamp), "hex")
        elif variant == "future":
            stamp = str(int(now) + TOLERANCE + 100 + rng.randrange(100_000))
            digest = sign(secret, body, int(stamp), "hex")
        elif variant == "timestamp_not_digits":
            stamp = rng.choice(["-5", "1e9", "12a", "0x10", "١٢٣", "+1749581447", "1.5"])
            digest = hex_of(secret, stamp.encode() + b"." + body)
        elif variant == "huge_timestamp":
            stamp = "9" * rng.choice([21, 40, 400])
            digest = hex_of(secret, stamp.encode() + b"." + body)
        elif variant == "other_body":
            digest = sign(secret, body + b" ", ts, "hex")
        elif variant == "flipped":
            at = rng.randrange(len(digest))
            digest = digest[:at] + ("0" if digest[at] != "0" else "1") + digest[at + 1 :]
        elif variant == "truncated":
            digest = digest[: rng.randrange(0, len(digest))]
        elif variant == "base64":
            digest = base64.b64encode(bytes.fromhex(digest)).decode()
        elif variant == "wrong_secret":
            digest = sign(b"not-the-secret", body, ts, "hex")
        elif variant == "empty":
            digest = ""
        prefix = "" if variant in ("no_prefix", "empty") else HMAC_PREFIX
        headers[HMAC_HEADER] = prefix + digest
        if variant != "no_timestamp":
            headers[TIMESTAMP_HEADER] = stamp
        return variant

    def _token(self, ok: bool, _b: bytes, _n: float, headers: dict[str, str], _: Any) -> str:
        if ok:
            headers[TOKEN_HEADER] = TOKEN
            return "ok"
        variant, value = self.rng.choice(self._bad_tokens())
        headers[TOKEN_HEADER] = value
        return variant

    def _query(self, ok: bool, _b: bytes, _n: float, _h: Any, params: dict[str, str]) -> str:
        if ok:
            params["token"] = TOKEN
            return "ok"
        variant, value = self.rng.choice(self._bad_tokens())
        params["token"] = value
        return variant

    def _bad_tokens(self) -> list[tuple[str, str]]:
        return [
            ("wrong", "nope"),
            ("empty", ""),
            ("suffix", TOKEN + "x"),
            ("prefix_of", TOKEN[:-1]),
            ("upper", TOKEN.upper()),
            ("non_ascii", TOKEN[:-1] + "é"),
            ("long", "t" * 4000),
        ]

    def _basic(self, ok: bool, _b: bytes, _n: float, headers: dict[str, str], _: Any) -> str:
        rng = self.rng
        if ok:
            scheme = rng.choice(["Basic", "basic", "BASIC"])
            pair = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
            headers["Authorization"] = f"{scheme} {pair}"
            return scheme
        variant, value = rng.choice(
            [
                ("wrong_password", f"{BASIC_USER}:{BASIC_PASSWORD}x"),
                ("wrong_user", f"root:{BASIC_PASSWORD}"),
                ("no_colon", f"{BASIC_USER}{BASIC_PASSWORD}"),
                ("empty", ""),
                ("not_base64", "!!not base64!!"),
                ("bearer", "bearer"),
            ]
        )
        if variant == "not_base64":
            headers["Authorization"] = f"Basic {value}"
        elif variant == "bearer":
            headers["Authorization"] = f"Bearer {TOKEN}"
        else:
            headers["Authorization"] = "Basic " + base64.b64encode(value.encode()).decode()
        return variant

    # -- whole requests -------------------------------------------------------------------

    def case(self, n: int, now: float) -> Case:
        rng = self.rng
        kind, body, expect, env, extra = self.body_case()
        if rng.random() < 0.04:
            # Over the limit: a valid envelope padded past it (or a huge garbage body).
            size = rng.choice([MAX_BODY + 1, MAX_BODY + rng.randrange(2, 4 * MAX_BODY)])
            if rng.random() < 0.5:
                env = self.envelope()
                env["props"]["pad"] = ""
                body = _dumps(env)
                env["props"]["pad"] = "x" * (size - len(body))
                body = _dumps(env)
            else:
                body = rng.randbytes(size)
            kind, expect, env, extra = f"oversize_{len(body)}", frozenset({413}), None, None
        elif rng.random() < 0.01:
            env = self.envelope(rng.choice(KNOWN_TYPES))
            env["props"]["pad"] = ""
            body = _dumps(env)
            env["props"]["pad"] = "y" * (MAX_BODY - len(body))
            body = _dumps(env)
            assert len(body) == MAX_BODY
            kind, expect, extra = "at_limit", OK, None
        auth_label, authed, headers, params = self.credentials(body, now)
        roll = rng.random()
        if roll < 0.08:
            content_type = rng.choice(NOT_JSON_TYPES)
            json_type = False
        else:
            content_type = rng.choice(JSON_TYPES_ODD if roll < 0.12 else JSON_TYPES)
            json_type = True
        if content_type is not None:
            headers["Content-Type"] = content_type
        if rng.random() < 0.1:
            headers["X-Request-Id"] = f"fz-{n}"
        elif rng.random() < 0.05:
            headers["X-Request-Id"] = rng.choice(["a b", "x" * 65, "Ω", "../../etc", "{}"])
        if rng.random() < 0.05:
            headers["X-Forwarded-For"] = "' OR 1=1 --"
        chunked = rng.random() < 0.1
        # Credentials come first: a token, a Basic pair or no credential at all is decided
        # from the headers, so a stranger gets 401 whatever its media type or size. Only an
        # HMAC signature may need the body to be refused, so media type and size can come
        # before its 401 (whether a malformed one is refused from the headers is the
        # bridge's business: either answer is right).
        hmac_presented = any(part.startswith("hmac:") for part in auth_label.split(","))
        refused_by_headers = not authed and not hmac_presented
        if refused_by_headers:
            expect, env, extra = frozenset({401}), None, None
        elif not json_type:
            expect, env, extra = frozenset({415} if authed else {401, 415}), None, None
        elif len(body) > MAX_BODY:
            expect, env, extra = frozenset({413} if authed else {401, 413}), None, None
        elif not authed:
            expect, env, extra = frozenset({401}), None, None
        valid = env is not None and expect in (OK, UNKNOWN)
        return Case(
            n=n,
            kind=f"{kind} ct={content_type} auth={auth_label}",
            body=body,
            headers=headers,
            params=params,
            chunked=chunked,
            expect=expect,
            event_id=env["objectId"] if valid and env else None,
            event_type=env["props"]["eventType"] if valid and env else None,
            ticket_id=env["props"]["ticketId"] if valid and env else None,
            extra_check=extra if valid else None,
        )


def strict_json(text: str) -> Any:
    """Parse as RFC 8259 says: Python's json also takes NaN and Infinity unless told not to
    (its other extensions, none, are refused anyway)."""

    def refuse(literal: str) -> Any:
        raise ValueError(f"{literal} is not JSON")

    return json.loads(text, parse_constant=refuse)


def hex_of(secret: bytes, message: bytes) -> str:
    import hmac

    return hmac.digest(secret, message, "sha256").hex()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1500):
        yield data[start : start + 1500]


async def send(session: aiohttp.ClientSession, url: str, case: Case) -> Outcome:
    data: Any = _chunks(case.body) if case.chunked else case.body
    try:
        async with session.post(
            url,
            data=data,
            headers=case.headers,
            params=case.params or None,
            skip_auto_headers=["Content-Type"],
        ) as response:
            body = await response.read()
            return Outcome(case, Reply(response.status, CIMultiDict(response.headers), body))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(case, None, f"{type(exc).__name__}: {exc}")


async def send_all(bridge: InProcessBridge, cases: Iterator[Case]) -> list[Outcome]:
    outcomes: list[Outcome] = []

    async def worker() -> None:
        for case in cases:  # one shared iterator: the workers pull in turn
            outcome = await send(bridge.session, bridge.webhook_url, case)
            outcomes.append(outcome)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return outcomes


def _report(bad: list[str], what: str) -> str:
    shown = "\n  ".join(bad[:25])
    return f"{len(bad)} {what} (FUZZ_SEED={SEED}, FUZZ_EXAMPLES={EXAMPLES}):\n  {shown}"


def fuzz_settings(bootstrap: str, prefix: str) -> BridgeSettings:
    """A bridge with every authentication method on, as the generator's requests expect."""
    return bridge_settings(
        bootstrap,
        prefix,
        ingress={"max_body_bytes": MAX_BODY},
        auth={
            "token": TOKEN,
            "hmac_secret": HMAC_SECRET,
            "hmac_prefix": HMAC_PREFIX,
            "timestamp_header": TIMESTAMP_HEADER,
            "timestamp_tolerance_seconds": TOLERANCE,
            "basic_username": BASIC_USER,
            "basic_password": BASIC_PASSWORD,
        },
    )


async def test_fuzzed_requests_are_each_classified_and_what_kafka_holds_matches(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = fuzz_settings(kafka_bootstrap, topic_prefix)
    generator = Generator(SEED)
    started = time.monotonic()
    async with running_bridge(settings) as bridge:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            bridge.session = session
            cases = (generator.case(n, time.time()) for n in range(EXAMPLES))
            outcomes = await send_all(bridge, cases)

            # Replays of accepted events: a stale signed timestamp is refused; a fresh
            # signature of the same body is a duplicate, not a second record.
            accepted = [
                o.case
                for o in outcomes
                if o.reply is not None and o.reply.status == 200 and o.case.event_id is not None
            ][:REPLAYS]
            replays = []
            for case in accepted:
                stale = int(time.time()) - TOLERANCE - 1000
                replays.append(
                    Case(
                        n=-case.n,
                        kind=f"replay_stale of {case.n}",
                        body=case.body,
                        headers={
                            "Content-Type": "application/json",
                            HMAC_HEADER: HMAC_PREFIX
                            + sign(HMAC_SECRET.encode(), case.body, stale, "hex"),
                            TIMESTAMP_HEADER: str(stale),
                        },
                        expect=frozenset({401}),
                    )
                )
                now = int(time.time())
                replays.append(
                    Case(
                        n=-case.n,
                        kind=f"replay_fresh of {case.n}",
                        body=case.body,
                        headers={
                            "Content-Type": "application/json",
                            HMAC_HEADER: HMAC_PREFIX
                            + sign(HMAC_SECRET.encode(), case.body, now, "hex"),
                            TIMESTAMP_HEADER: str(now),
                        },
                        expect=OK,
                    )
                )
            replayed = await send_all(bridge, iter(replays))
            health = await bridge.admin("/healthz")
            ready = await bridge.admin("/readyz")
            # Still serving an ordinary event after all that.
            last = generator.envelope("consent.accepted")
            final = await send(
                session,
                bridge.webhook_url,
                Case(
                    -1,
                    "final",
                    _dumps(last),
                    {"Content-Type": "application/json", TOKEN_HEADER: TOKEN},
                ),
            )
    sent_for = time.monotonic() - started

    assert len(outcomes) == EXAMPLES
    assert len(accepted) >= min(REPLAYS, EXAMPLES // 10), "too few accepted: generator broken?"
    errors = [f"#{o.case.n} {o.case.kind}: {o.error}" for o in outcomes + replayed if o.error]
    assert not errors, _report(errors, "requests got no HTTP answer")
    statuses = Counter(o.reply.status for o in outcomes if o.reply)
    # Each class is exercised, not only some (the generator must keep producing them all).
    for status in (200, 202, 400, 401, 413, 415):
        assert statuses[status] >= EXAMPLES // 200, statuses
    wrong = [
        f"#{o.case.n} {o.case.kind}: got {o.reply} expected {sorted(o.case.expect)}"
        for o in outcomes + replayed
        if o.reply is not None
        and (o.reply.status not in o.case.expect or o.reply.status not in ALLOWED)
    ]
    assert not wrong, _report(wrong, "answers not as classified")
    for o in replayed:
        if o.reply is not None and o.reply.status == 200:
            assert o.reply.json() == {
                "status": "duplicate",
                "eventId": json.loads(o.case.body)["objectId"],
            }
    assert health.status == 200, health
    assert ready.status == 200, ready
    assert final.reply is not None, final
    assert final.reply.status == 200, final

    # -- what Kafka holds ------------------------------------------------------------------
    by_request: dict[str, Outcome] = {}
    published: dict[int, Outcome] = {}
    for o in outcomes:
        assert o.reply is not None
        if o.reply.status == 400:
            rid = o.reply.headers["X-Request-Id"]
            assert rid not in by_request, f"request id {rid} answered twice"
            by_request[rid] = o
        elif o.reply.status in (200, 202):
            answer = o.reply.json()
            expected_status = "accepted" if o.reply.status == 200 else "unknown_event_type"
            assert answer["status"] == expected_status, (o.case.kind, answer)
            if o.case.event_id is not None:
                assert answer["eventId"] == o.case.event_id, (o.case.kind, answer)
            published[answer["eventId"]] = o
    published[last["objectId"]] = final

    topics = TopicNames(topic_prefix)
    records = await consume_async(
        kafka_bootstrap,
        topics.events(),
        min_count=len(by_request) + len(published),
        timeout=60,
        drain=2.0,
    )
    dlq = [r for r in records if r.topic == topics.dlq]
    events = [r for r in records if r.topic != topics.dlq]

    dead: dict[str, Record] = {}
    for record in dlq:
        rid = record.headers.get("request-id", b"").decode()
        assert rid not in dead, f"request {rid} dead-lettered twice"
        dead[rid] = record
    missing = sorted(set(by_request) - set(dead))
    assert not missing, _report(
        [f"{rid} {by_request[rid].case.kind}" for rid in missing], "400s not on the DLQ"
    )
    assert set(dead) == set(by_request), "DLQ records no 400 answer accounts for"
    for rid, record in dead.items():
        assert record.value == by_request[rid].case.body or (
            record.value is None and by_request[rid].case.body == b""
        ), by_request[rid].case.kind
        assert record.headers["dlq-kind"] in (b"invalid_json", b"invalid_envelope")

    seen: Counter[int] = Counter()
    for record in events:
        event_id = int(record.headers["event-id"])
        seen[event_id] += 1
        outcome = published.get(event_id)
        assert outcome is not None, f"event {event_id} on {record.topic} was never accepted"
        event = CODEC.decode(record.value or b"")
        assert event.event_id == event_id
        # Every `extra` the bridge writes is JSON to the letter of RFC 8259.
        extra = CODEC.decode_record(record.value or b"")["extra"]
        if extra is not None:
            assert isinstance(strict_json(extra), dict), extra[:200]
        category = event.event_type.split(".", 1)[0] if event.event_type in EVENTS else "unknown"
        assert record.topic == topics.category(category), (record.topic, event.event_type)
        assert record.key == str(event.ticket_id).encode()
        case = outcome.case
        if case.event_type is not None:
            assert event.event_type == case.event_type
            assert event.ticket_id == case.ticket_id
        if case.extra_check is not None:
            name, value = case.extra_check
            assert event.extra.get(name) == value, (case.kind, name)
    assert not [i for i, c in seen.items() if c > 1], "events written more than once"
    assert set(seen) == set(published), _report(
        [str(i) for i in sorted(set(published) - set(seen))], "accepted events not in Kafka"
    )
    print(
        f"fuzz: {EXAMPLES} + {len(replays)} requests in {sent_for:.1f}s; statuses {dict(statuses)};"
        f" {len(dead)} dead letters, {len(seen)} events"
    )


# -- compressed bodies -------------------------------------------------------------------


async def test_bodies_with_a_content_encoding_are_refused_without_5xx(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = bridge_settings(kafka_bootstrap, topic_prefix)
    valid = _dumps(Generator(SEED).envelope("consent.accepted"))
    bodies = {
        "gzip": b"not gzip at all",
        "deflate": b"not deflate",
        "br": b"not brotli",
        "zstd": b"not zstd",
        "x-unknown": valid,
    }
    async with running_bridge(settings) as bridge:
        replies: dict[str, Reply | str] = {}
        for encoding, body in bodies.items():
            try:
                replies[encoding] = await bridge.post(body, headers={"Content-Encoding": encoding})
            except aiohttp.ClientError as exc:
                replies[encoding] = type(exc).__name__
        # A well-formed gzip body is fine either way: decoded and accepted, or refused.
        try:
            replies["gzip-valid"] = await bridge.post(
                gzip.compress(_dumps(Generator(SEED + 1).envelope())),
                headers={"Content-Encoding": "gzip"},
            )
        except aiohttp.ClientError as exc:
            replies["gzip-valid"] = type(exc).__name__

    shown = {k: str(v) for k, v in replies.items()}
    for encoding, reply in replies.items():
        assert isinstance(reply, Reply), shown
        # Refused as an unsupported coding (415) or as an undecodable body (400), in JSON.
        assert reply.status in ({200, 400, 415} if encoding == "gzip-valid" else {400, 415}), shown
        assert reply.headers["Content-Type"].startswith("application/json"), shown
