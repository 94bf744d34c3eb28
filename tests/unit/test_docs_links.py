"""Every relative link of the docs resolves: to a file (or folder) of the repository, and an
`#anchor` to a heading of the file it names, by the slugs GitHub gives headings."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.unit.conftest import REPO

# The pages a reader follows links from: the front page, docs/, the consumers' and the chart's.
PAGES = sorted(
    {
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        *(p for p in [REPO / "consumers" / "python" / "README.md"] if p.exists()),
        *(p for p in [REPO / "consumers" / "java" / "README.md"] if p.exists()),
        REPO / "deploy" / "helm" / "apizee-kafka-bridge" / "README.md",
    }
)

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def prose(markdown: str) -> str:
    """`markdown` without its fenced blocks and code spans, where no link or heading lives."""
    return _CODE_SPAN.sub("", _FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lower-cased, markup and punctuation dropped but
    '-' and '_', each space a '-'."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of every heading; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for match in _HEADING.finditer(_FENCE.sub("", markdown)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(markdown: str) -> list[str]:
    return _LINK.findall(prose(markdown))


def _is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None


def test_the_slug_rules_are_githubs() -> None:
    assert slug("HTTP contract (public port, default 8080, `POST /webhooks/apizee`)") == (
        "http-contract-public-port-default-8080-post-webhooksapizee"
    )
    assert slug("`apizee-bridge check`: before Apizee's traffic arrives") == (
        "apizee-bridge-check-before-apizees-traffic-arrives"
    )
    assert slug("Dead letters (`{prefix}.dlq`)") == "dead-letters-prefixdlq"
    assert slug("snake_case and A - B") == "snake_case-and-a---b"
    assert anchors("# A\n\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_links_inside_code_are_not_links() -> None:
    text = "[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n[d](w.md#top)\n"
    assert links(text) == ["x.md", "w.md#top"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if _is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
            continue
        if not destination.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
            continue
        if anchor:
            if destination.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not markdown")
            elif anchor not in anchors(destination.read_text(encoding="utf-8")):
                broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_pages_link_each_other() -> None:
    # The front page sends each reader to their page: a page no link reaches is lost.
    readme = links((REPO / "README.md").read_text(encoding="utf-8"))
    for page in (REPO / "docs").glob("*.md"):
        assert any(t.split("#")[0] == f"docs/{page.name}" for t in readme), page.name
