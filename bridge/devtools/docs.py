"""Generated doc blocks (config variables, event catalog), so docs cannot drift from code.

`python -m bridge.devtools.docs` rewrites the blocks between their markers wherever they live
in README.md and docs/*.md (each block exactly once); a unit test fails when a committed file
differs from what this module renders.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from bridge.catalog import markdown_table
from bridge.config import env_table

BLOCKS: dict[str, Callable[[], str]] = {"config": env_table, "catalog": markdown_table}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED {name} -->\n).*?(<!-- END GENERATED {name} -->)", re.DOTALL
    )


def doc_files(root: Path) -> list[Path]:
    """The files that may hold generated blocks: the front page and every page of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render(text: str, names: Iterable[str] | None = None) -> str:
    """`text` with its generated blocks (`names`, default all) replaced by their rendering;
    every named block must be in `text`."""
    for name in BLOCKS if names is None else names:
        pattern = _pattern(name)
        match = pattern.search(text)
        if match is None:
            raise ValueError(f"no generated block {name!r}")
        text = text[: match.end(1)] + BLOCKS[name]() + "\n" + text[match.start(2) :]
    return text


def locate(texts: dict[Path, str]) -> dict[str, Path]:
    """Which file holds each block; ValueError when one is missing or in two places (two
    copies would be two things to keep current)."""
    where: dict[str, Path] = {}
    for name in BLOCKS:
        begin = f"<!-- BEGIN GENERATED {name} -->"
        holders = [path for path, text in texts.items() for _ in range(text.count(begin))]
        if len(holders) != 1:
            found = ", ".join(str(p) for p in holders) or "none"
            raise ValueError(f"generated block {name!r} must be in exactly one file: {found}")
        where[name] = holders[0]
    return where


def render_files(paths: Iterable[Path]) -> dict[Path, str]:
    """Every file of `paths` as it should read, with the blocks it holds rendered."""
    texts = {path: path.read_text(encoding="utf-8") for path in paths}
    where = locate(texts)
    return {
        path: render(text, [name for name, holder in where.items() if holder == path])
        for path, text in texts.items()
    }


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] if argv else doc_files(Path.cwd())
    for path, text in render_files(paths).items():
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"docs: rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
