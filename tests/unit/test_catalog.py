"""The catalog against Apizee's own document (the seed), the source of truth."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bridge.catalog import (
    ATTRIBUTES,
    CATEGORIES,
    EVENTS,
    TERMINAL_EVENT_TYPES,
    category_of,
    record_name_of,
)
from tests.unit.conftest import FIXTURES, REPO

# A copy of Apizee's document lives with the fixtures so the suite runs anywhere; the
# original sits in shared/seeds/ beside the repository when the project's tree is there.
SEED = FIXTURES / "apizee-session-events-api.txt"
ORIGINAL = REPO.parent / "shared" / "seeds" / "apizee-session-events-api.txt"


def _seed_event_types() -> list[str]:
    """Event types as the seed's attribute table lists them: a line that is only `x.y`."""
    text = SEED.read_text(encoding="utf-8")
    table = text.split("Event type", 1)[1].split("HTTP REST API", 1)[0]
    return re.findall(r"^([a-z][A-Za-z]*\.[A-Za-z]+)\s*$", table, flags=re.MULTILINE)


@pytest.mark.skipif(not ORIGINAL.is_file(), reason="shared/seeds is not beside the repo")
def test_fixture_copy_of_the_seed_is_current() -> None:
    assert SEED.read_bytes() == ORIGINAL.read_bytes()


def test_catalog_holds_exactly_the_seed_event_types() -> None:
    seed_types = _seed_event_types()
    assert len(seed_types) == 32
    assert list(EVENTS) == seed_types


def test_attributes_match_the_seed_examples(seed_props: dict[str, dict[str, Any]]) -> None:
    for event_type, spec in EVENTS.items():
        assert set(spec.attributes) == set(seed_props[event_type]), event_type


def test_categories_are_the_part_before_the_first_dot() -> None:
    assert CATEGORIES == ("consent", "ticket", "geo", "mediaDevice", "session", "media", "survey")
    assert category_of("a.b.c") == "a"
    for event_type, spec in EVENTS.items():
        assert spec.category == event_type.split(".")[0]


def test_record_names_are_unique_valid_avro_names() -> None:
    names = [spec.record_name for spec in EVENTS.values()]
    assert len(set(names)) == 32
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names)
    assert record_name_of("media.OCRDone") == "MediaOCRDone"
    assert record_name_of("ticket.priorityChanged") == "TicketPriorityChanged"


def test_every_attribute_is_used_and_terminal_types_exist() -> None:
    used = {a for spec in EVENTS.values() for a in spec.attributes}
    assert used == set(ATTRIBUTES)
    assert set(EVENTS) >= TERMINAL_EVENT_TYPES
