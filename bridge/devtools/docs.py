"""Generated README blocks (config variables, event catalog), so docs cannot drift from code.

`python -m bridge.devtools.docs README.md` rewrites the blocks between their markers; a unit test
fails when the committed README differs from what this module renders.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from bridge.catalog import markdown_table
from bridge.config import env_table

BLOCKS: dict[str, Callable[[], str]] = {"config": env_table, "catalog": markdown_table}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED {name} -->\n).*?(<!-- END GENERATED {name} -->)", re.DOTALL
    )


def render(text: str) -> str:
    """`text` with every generated block replaced by its current rendering."""
    for name, build in BLOCKS.items():
        pattern = _pattern(name)
        match = pattern.search(text)
        if match is None:
            raise ValueError(f"README has no generated block {name!r}")
        text = text[: match.end(1)] + build() + "\n" + text[match.start(2) :]
    return text


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "README.md")
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
