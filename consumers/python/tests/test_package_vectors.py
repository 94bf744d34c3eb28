"""Every record of tests/vectors decodes, with the package alone, to the fields its JSON holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apizee_session_events import Decoder, UnknownSchemaError
from vector_decoding import EVOLUTION_SCHEMAS, decode_all

REPO = Path(__file__).resolve().parents[3]
VECTORS = REPO / "tests" / "vectors"


def expected_vectors() -> dict[str, dict[str, object]]:
    """What each vector must decode to, from its JSON (the fields the tests compare)."""
    expected = {}
    for path in sorted(VECTORS.rglob("*.bin")):
        spec = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        expected[path.relative_to(VECTORS).as_posix()] = {
            key: spec[key] for key in ("framing", "fingerprint", "schema", "record")
        }
    return expected


def test_every_vector_decodes_to_its_json() -> None:
    expected = expected_vectors()
    # The folders of tests/vectors/README.md: 32 event types, 1 unknown, 3 REST, 5 evolution.
    folders = sorted(name.split("/")[0] for name in expected)
    assert {f: folders.count(f) for f in set(folders)} == {
        "events": 32,
        "unknown": 1,
        "rest": 3,
        "evolution": 5,
    }
    assert decode_all(VECTORS) == expected


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (VECTORS / "evolution").glob("*.bin")), ids=str
)
def test_a_writer_schema_not_bundled_is_named_until_it_is_given(name: str) -> None:
    value = (VECTORS / "evolution" / name).read_bytes()
    with pytest.raises(UnknownSchemaError, match=f"no schema with fingerprint {value[2:10].hex()}"):
        Decoder().decode(value)
    one_file = sorted((VECTORS / EVOLUTION_SCHEMAS).glob(f"{name.removesuffix('.bin')}.avsc"))
    assert Decoder(writer_schemas=one_file).decode(value)["eventId"] > 0


def test_writer_schemas_that_are_not_avro_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "x", "fields": [{"name": "a"}]}')
    with pytest.raises(ValueError, match=r"bad\.avsc is not an Avro schema"):
        Decoder(writer_schemas=[tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.avsc file in"):
        Decoder(writer_schemas=[tmp_path / "empty"])
