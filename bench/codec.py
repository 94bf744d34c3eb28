"""Codec benchmark: microseconds per event for the bridge's hot path against baselines.

Prints the median of several runs (microseconds per event) for, on a typical event:
the whole path the ingress runs (parse + validate + normalize + encode), its stages, and
the baselines it is compared to (fastavro encode alone, orjson parse alone).
Ratios are against the fastavro-encode baseline measured in the same process.
"""

from __future__ import annotations

import json
import statistics
import sys
import timeit
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import orjson
from fastavro import schemaless_writer

from bridge.codec import Codec
from bridge.models import from_webhook, parse_webhook

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7
RECEIVED_AT_MS = 1_749_581_448_123


def typical_body() -> bytes:
    """A ticket.priorityChanged webhook: a person, two ints, the common fields."""
    props = json.loads((ROOT / "tests/fixtures/seed_props_examples.json").read_text())
    body = {
        "event": "create",
        "time": 1749581447,
        "object": "conversationevent",
        "objectId": 1266,
        "props": {
            "eventType": "ticket.priorityChanged",
            "eventCode": 12,
            "conversationId": 548,
            "ticketId": 361,
            **props["ticket.priorityChanged"],
        },
    }
    return json.dumps(body, ensure_ascii=False).encode()


def median_us(fn: Callable[[], object], number: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=RUNS)
    return statistics.median(times) / number * 1e6


def main() -> int:
    codec = Codec()
    body = typical_body()
    envelope = parse_webhook(body)
    event = from_webhook(envelope, RECEIVED_AT_MS)
    writer = codec.writer_for(event.event_type)
    record = codec.decode_record(codec.encode(event))

    def full_path() -> bytes:
        return codec.encode(from_webhook(parse_webhook(body), RECEIVED_AT_MS))

    def fastavro_only() -> bytes:
        buf = BytesIO()
        schemaless_writer(buf, writer.parsed, record)
        return buf.getvalue()

    assert codec.decode(full_path()) == event
    number = 20_000
    rows = [
        ("parse+validate+normalize+encode (bridge path)", median_us(full_path, number)),
        ("  parse+validate (pydantic, one pass)", median_us(lambda: parse_webhook(body), number)),
        (
            "  normalize (attributes, extra)",
            median_us(lambda: from_webhook(envelope, RECEIVED_AT_MS), number),
        ),
        ("  encode (framing + fastavro)", median_us(lambda: codec.encode(event), number)),
        ("baseline: fastavro schemaless_writer alone", median_us(fastavro_only, number)),
        ("reference: orjson.loads alone", median_us(lambda: orjson.loads(body), number)),
    ]
    baseline = rows[4][1]
    print(f"codec benchmark: {len(body)}-byte ticket.priorityChanged webhook, median of {RUNS}")
    print(f"{'stage':<50} {'us/event':>9} {'x fastavro':>11}")
    for name, us in rows:
        print(f"{name:<50} {us:>9.2f} {us / baseline:>11.2f}")
    print(f"bridge path throughput on one core: {1e6 / rows[0][1]:,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
