"""Records the Java kit writes (Avro's BinaryMessageEncoder) decode equal with bridge.codec.

`make consumer-kit` (a dependency of `make test`) runs the kit's `mvn verify`, whose
JavaVectorsWriterTest writes consumers/java/target/java-vectors/. Run alone, this module
builds them first when Maven is there; it skips only when Maven is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.catalog import EVENTS
from bridge.codec import Codec
from tests.vectors.generate import REPO, stable

KIT = REPO / "consumers" / "java"
JAVA_VECTORS = KIT / "target" / "java-vectors"
CODEC = Codec()


@pytest.fixture(scope="module")
def java_vectors() -> list[Path]:
    if not any(JAVA_VECTORS.glob("*.bin")):
        mvn = shutil.which("mvn")
        if mvn is None:
            pytest.skip("Maven (mvn) is not installed: the Java kit cannot write its records")
        # The writer test alone; the whole kit runs in `make consumer-kit`.
        subprocess.run(
            [mvn, "-q", "-B", "test", "-Dtest=JavaVectorsWriterTest"], cwd=KIT, check=True
        )
    return sorted(JAVA_VECTORS.glob("*.bin"))


def test_java_wrote_one_record_per_event_type_and_the_unknown_type(
    java_vectors: list[Path],
) -> None:
    names = {p.stem for p in java_vectors}
    assert names == set(EVENTS) | {"unknown.whiteboard.erased"}


def test_every_java_record_decodes_equal_in_python(java_vectors: list[Path]) -> None:
    for path in java_vectors:
        expected = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        data = path.read_bytes()
        writer, _ = CODEC.writer_of(data)
        # Java computed the same fingerprint of the same schema as fastavro.
        assert writer.fingerprint_hex == expected["fingerprint"], path.name
        assert writer.full_name == expected["schema"], path.name
        assert stable(CODEC.decode_record(data)) == expected["record"], path.name


def test_the_bridge_re_encodes_java_records_byte_for_byte(java_vectors: list[Path]) -> None:
    # Through the canonical event and back: both encoders write the same Avro bytes.
    for path in java_vectors:
        data = path.read_bytes()
        assert CODEC.encode(CODEC.decode(data)) == data, path.name
