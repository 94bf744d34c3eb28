"""Decode every record of a tests/vectors folder with apizee_session_events alone.

Imported by the tests, and run as a script by the python of a clean venv:
`python -I vector_decoding.py VECTORS_DIR` prints one JSON object, `{relative path of the .bin:
{"framing", "fingerprint", "schema", "record"}}`, `record` in the vectors' stable JSON form
(timestamps as epoch milliseconds). Standard library and the package only: nothing of the
repository may be importable where it runs.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apizee_session_events import Decoder

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLI = timedelta(milliseconds=1)
# Writer schemas that are no release of the bridge (derived for the evolution vectors): the
# package learns them the way a consumer learns a newer release before upgrading.
EVOLUTION_SCHEMAS = Path("evolution") / "schemas"


def stable(value: Any) -> Any:
    """The vectors' stable JSON form: datetimes as epoch milliseconds, the rest as it is."""
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MILLI
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def decode_all(vectors: Path) -> dict[str, dict[str, Any]]:
    decoder = Decoder(writer_schemas=[vectors / EVOLUTION_SCHEMAS])
    decoded = {}
    for path in sorted(vectors.rglob("*.bin")):
        record = decoder.decode_record(path.read_bytes())
        decoded[path.relative_to(vectors).as_posix()] = {
            "framing": record.framing,
            "fingerprint": record.writer,
            "schema": record.schema_name,
            "record": stable(record.fields),
        }
    return decoded


if __name__ == "__main__":
    json.dump(decode_all(Path(sys.argv[1])), sys.stdout, ensure_ascii=False)
