"""The package README's examples are true: the Kafka example is examples/print_events.py word
for word, and the decoding example prints what the README shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parents[1]
README = PACKAGE / "README.md"


def block(marker: str) -> str:
    """The fenced block that follows `<!-- example: {marker} -->`."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"<!-- example: {marker} -->\n")
    start = text.index("\n", text.index("```", start)) + 1
    return text[start : text.index("\n```\n", start) + 1]


def output_after(marker: str) -> str:
    """The plain fenced block that follows the example's block: what it prints."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"<!-- example: {marker} -->\n")
    start = text.index("\n```\n", start) + len("\n```\n")
    start = text.index("```\n", start) + len("```\n")
    return text[start : text.index("```\n", start)]


def test_the_kafka_example_is_the_example_file() -> None:
    example = PACKAGE / "examples" / "print_events.py"
    assert block("print_events.py") == example.read_text(encoding="utf-8")


def test_the_decode_example_prints_what_the_readme_shows() -> None:
    done = subprocess.run(
        [sys.executable, "-c", block("decode")],
        cwd=REPO,  # as the README says: from the repository root
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == output_after("decode")
