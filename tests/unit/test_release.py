"""One release version: VERSION and every copy of it agree (bridge/devtools/release/version.py)."""

from __future__ import annotations

import datetime as dt
import shutil
from importlib.metadata import version
from pathlib import Path

import apizee_session_events
import pytest

import bridge
from bridge.devtools.release.version import PLACES, copies, mismatches, read_version, set_version

REPO = Path(__file__).resolve().parents[2]


def test_every_copy_agrees_with_version_file() -> None:
    assert mismatches(REPO) == []
    assert set(copies(REPO)) == {place.name for place in PLACES}


def test_the_python_distributions_read_version_file() -> None:
    # Installed (editable) metadata: `make install` reinstalls when VERSION changes.
    expected = read_version(REPO)
    assert version("apizee-kafka-bridge") == expected
    assert version("apizee-session-events") == expected
    assert bridge.__version__ == expected
    assert apizee_session_events.__version__ == expected
    # The consumers' package reads the same file, through its link (the sdist carries a copy).
    assert (REPO / "consumers" / "python" / "VERSION").resolve() == (REPO / "VERSION").resolve()


def _copy_tree(tmp_path: Path) -> Path:
    for relative in {"VERSION", *(place.path for place in PLACES)}:
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / relative, target)
    return tmp_path


def test_set_version_writes_every_copy(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    before = read_version(root)
    set_version(root, "7.8.9", today=dt.date(2031, 2, 3))
    assert read_version(root) == "7.8.9"
    assert mismatches(root) == []
    changelog = (root / "CHANGELOG.md").read_text(encoding="utf-8")
    # Keep a Changelog: what was Unreleased is now 7.8.9, under a new empty Unreleased section.
    assert "## [Unreleased]\n\n## [7.8.9] - 2031-02-03\n" in changelog
    assert f"## [{before}]" in changelog
    set_version(root, "7.8.9")  # idempotent: the changelog gets no second 7.8.9 section
    assert (root / "CHANGELOG.md").read_text(encoding="utf-8") == changelog


def test_a_disagreeing_copy_is_named(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    chart = root / "deploy" / "helm" / "apizee-kafka-bridge" / "Chart.yaml"
    text = chart.read_text(encoding="utf-8")
    chart.write_text(text.replace('appVersion: "', 'appVersion: "9', 1), encoding="utf-8")
    (problem,) = mismatches(root)
    assert problem.startswith("the chart's appVersion is '9")
    (root / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    assert any(p.startswith("the image label's default") for p in mismatches(root))


@pytest.mark.parametrize("bad", ["1.2", "v1.2.3", "1.2.3rc1", "1.2.3\n4"])
def test_set_version_refuses_what_some_artefact_could_not_carry(tmp_path: Path, bad: str) -> None:
    root = _copy_tree(tmp_path)
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR\.PATCH"):
        set_version(root, bad)
    assert mismatches(root) == []
