"""The committed vectors are what the Python side writes today, and decode to their JSON."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

from fastavro import parse_schema, schemaless_reader

from bridge.catalog import EVENTS
from bridge.codec import Codec
from bridge.schemas import schema_fingerprint
from tests.vectors.generate import GENERATED_DIRS, HERE, REPO, all_files, stable, write

CODEC = Codec()


def _committed() -> dict[str, bytes]:
    return {
        str(p.relative_to(HERE)): p.read_bytes()
        for sub in GENERATED_DIRS
        for p in (HERE / sub).rglob("*")
        if p.is_file()
    }


def test_committed_vectors_are_what_the_codec_writes_today() -> None:
    generated = all_files()
    committed = _committed()
    assert sorted(committed) == sorted(generated), "run `make vectors`"
    for rel, data in generated.items():
        assert committed[rel] == data, f"{rel} differs: run `make vectors` (and say why)"


def test_write_replaces_stale_files(tmp_path: Path) -> None:
    stale = tmp_path / "events" / "ticket.renamed.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write(tmp_path)
    assert not stale.exists()
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == set(
        all_files()
    )


def test_one_vector_per_event_type_and_the_unknown_type() -> None:
    names = {p.stem for p in (HERE / "events").glob("*.bin")}
    assert names == set(EVENTS)
    assert len(list((HERE / "unknown").glob("*.bin"))) == 1


def test_every_codec_vector_decodes_to_its_json() -> None:
    codec_written = [p for sub in ("events", "unknown", "rest") for p in (HERE / sub).glob("*.bin")]
    assert len(codec_written) == len(EVENTS) + 1 + 3
    for bin_path in sorted(codec_written):
        expected = json.loads(bin_path.with_suffix(".json").read_text(encoding="utf-8"))
        data = bin_path.read_bytes()
        writer, _ = CODEC.writer_of(data)
        assert writer.fingerprint_hex == expected["fingerprint"], bin_path
        assert writer.full_name == expected["schema"], bin_path
        assert stable(CODEC.decode_record(data)) == expected["record"], bin_path
        # And the bridge's own inverse gives the same bytes back.
        assert CODEC.encode(CODEC.decode(data)) == data, bin_path


def test_evolution_vectors_resolve_into_the_current_schema() -> None:
    for bin_path in sorted((HERE / "evolution").glob("*.bin")):
        expected = json.loads(bin_path.with_suffix(".json").read_text(encoding="utf-8"))
        writer = json.loads((REPO / expected["writerSchema"]).read_text(encoding="utf-8"))
        reader = json.loads((REPO / expected["readerSchema"]).read_text(encoding="utf-8"))
        data = bin_path.read_bytes()
        assert data[2:10] == schema_fingerprint(writer), bin_path
        assert data[2:10].hex() not in json.loads((REPO / "schemas/fingerprints.json").read_text())
        record = schemaless_reader(BytesIO(data[10:]), parse_schema(writer), parse_schema(reader))
        assert stable(record) == expected["record"], bin_path
