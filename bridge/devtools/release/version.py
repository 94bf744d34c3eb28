"""One release version: the repository's VERSION file, and the copies that cannot read it.

The two Python distributions read VERSION at build time (setuptools' dynamic version; the
consumers' package through its VERSION link). Files that must stay literal for their own tools
(the chart for `helm install` from a checkout, the Java kit's pom for Maven, the bridge's pin on
the consumers' package, the Dockerfile's label default, the changelog) are copies:
`set_version` writes all of them, and `mismatches` (a unit test) names any that disagree.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

VERSION_FILE: Final = "VERSION"
# Release versions are plain MAJOR.MINOR.PATCH: valid for PEP 440, Maven, SemVer (Helm) and
# OCI tags alike, so no artefact has to spell it differently.
_VERSION: Final = re.compile(r"\d+\.\d+\.\d+")
_UNRELEASED: Final = "## [Unreleased]"


@dataclass(frozen=True, slots=True)
class Place:
    """One literal copy of the version: the file and a pattern whose group 1 is the version."""

    name: str
    path: str
    pattern: re.Pattern[str]


PLACES: Final = (
    Place(
        "the bridge's pin on the consumers' package",
        "pyproject.toml",
        re.compile(r'"apizee-session-events==([^"]+)"'),
    ),
    Place(
        "the [dev] extra's pin on the consumers' package",
        "pyproject.toml",
        re.compile(r'"apizee-session-events\[kafka\]==([^"]+)"'),
    ),
    Place(
        "the Java kit's pom version",
        "consumers/java/pom.xml",
        re.compile(
            r"<artifactId>apizee-session-events-consumer</artifactId>\s*<version>([^<]+)</version>"
        ),
    ),
    Place(
        "the chart's version",
        "deploy/helm/apizee-kafka-bridge/Chart.yaml",
        re.compile(r"^version: (\S+)$", re.MULTILINE),
    ),
    Place(
        "the chart's appVersion",
        "deploy/helm/apizee-kafka-bridge/Chart.yaml",
        re.compile(r'^appVersion: "([^"]+)"$', re.MULTILINE),
    ),
    Place(
        "the image label's default (Dockerfile ARG VERSION)",
        "Dockerfile",
        re.compile(r"^ARG VERSION=(\S+)$", re.MULTILINE),
    ),
    Place(
        "the changelog's latest release",
        "CHANGELOG.md",
        re.compile(r"^## \[(\d[^\]]*)\]", re.MULTILINE),
    ),
)


def read_version(root: Path) -> str:
    """The release version, as VERSION sets it."""
    text = (root / VERSION_FILE).read_text(encoding="utf-8").strip()
    if not _VERSION.fullmatch(text):
        raise ValueError(f"{VERSION_FILE} holds {text!r}: expected MAJOR.MINOR.PATCH")
    return text


def copies(root: Path) -> dict[str, str | None]:
    """Each place's name -> the version written there (None: the pattern is not found)."""
    found: dict[str, str | None] = {}
    for place in PLACES:
        match = place.pattern.search((root / place.path).read_text(encoding="utf-8"))
        found[place.name] = match[1] if match else None
    return found


def mismatches(root: Path) -> list[str]:
    """One line per copy that disagrees with VERSION; empty when they all agree."""
    version = read_version(root)
    return [
        f"{name} is {found!r}, VERSION is {version!r}"
        for name, found in copies(root).items()
        if found != version
    ]


def _changelog_release(text: str, version: str, today: dt.date) -> str:
    """The Unreleased section becomes `version`, under a new empty Unreleased section."""
    if f"## [{version}]" in text:
        return text
    if _UNRELEASED not in text:
        raise ValueError(f"CHANGELOG.md has no '{_UNRELEASED}' section to release as {version}")
    return text.replace(_UNRELEASED, f"{_UNRELEASED}\n\n## [{version}] - {today.isoformat()}", 1)


def set_version(root: Path, version: str, *, today: dt.date | None = None) -> None:
    """Write `version` to VERSION and to every copy (the changelog's Unreleased is released)."""
    if not _VERSION.fullmatch(version):
        raise ValueError(f"{version!r}: expected MAJOR.MINOR.PATCH")
    texts: dict[str, str] = {}
    for place in PLACES:
        text = texts.get(place.path) or (root / place.path).read_text(encoding="utf-8")
        if place.path == "CHANGELOG.md":
            text = _changelog_release(text, version, today or dt.date.today())
        else:
            match = place.pattern.search(text)
            if match is None:
                raise ValueError(f"{place.path}: {place.name} not found")
            text = text[: match.start(1)] + version + text[match.end(1) :]
        texts[place.path] = text
    for path, text in texts.items():
        (root / path).write_text(text, encoding="utf-8")
    (root / VERSION_FILE).write_text(version + "\n", encoding="utf-8")
