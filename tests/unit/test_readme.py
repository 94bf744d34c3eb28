"""The docs stay true: generated blocks current (each in one file), every metric, webhook reason
and make target documented, the README a front page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bridge import metrics
from bridge.devtools.docs import BLOCKS, doc_files, locate, render_files
from tests.unit.conftest import REPO

DOCS = REPO / "docs"


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next heading of that level)."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_generated_blocks_are_current() -> None:
    for path, rendered in render_files(doc_files(REPO)).items():
        assert rendered == _read(path), f"{path.relative_to(REPO)}: run `make docs`"


def test_every_generated_block_lives_in_exactly_one_doc_file() -> None:
    where = locate({path: _read(path) for path in doc_files(REPO)})
    assert set(where) == set(BLOCKS)
    assert where["config"] == DOCS / "configuration.md"
    assert where["catalog"] == DOCS / "consumers.md"


def test_a_block_missing_or_in_two_files_is_refused(tmp_path: Path) -> None:
    block = "<!-- BEGIN GENERATED config -->\nOLD TABLE\n<!-- END GENERATED config -->\n"
    catalog = "<!-- BEGIN GENERATED catalog -->\n<!-- END GENERATED catalog -->\n"
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(block, encoding="utf-8")
    (tmp_path / "docs" / "a.md").write_text(catalog, encoding="utf-8")
    rendered = render_files(doc_files(tmp_path))
    assert "OLD TABLE" not in rendered[tmp_path / "README.md"]
    assert "| Variable |" in rendered[tmp_path / "README.md"]
    assert "| eventType |" in rendered[tmp_path / "docs" / "a.md"]
    (tmp_path / "docs" / "b.md").write_text(block, encoding="utf-8")
    with pytest.raises(ValueError, match="'config' must be in exactly one file"):
        render_files(doc_files(tmp_path))
    (tmp_path / "docs" / "b.md").unlink()
    (tmp_path / "docs" / "a.md").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="'catalog' must be in exactly one file: none"):
        render_files(doc_files(tmp_path))


def test_every_metric_is_in_the_metrics_table() -> None:
    names = {m.name for m in REGISTRY.collect() if m.name.startswith(metrics.PREFIX)}
    assert names, "no bridge metric registered"
    table = _section(_read(DOCS / "operations.md"), "Metrics")
    documented = set(re.findall(r"`(apizee_bridge_[a-z_]+)`", table))
    # prometheus-client reports counters without their _total suffix.
    exposed = {n if n in documented else f"{n}_total" for n in names}
    assert exposed == documented


def test_every_reason_label_is_documented() -> None:
    table = _section(_read(DOCS / "operations.md"), "Metrics")
    row = next(line for line in table.splitlines() if "webhook_requests_total" in line)
    for reason in metrics.REASONS:
        assert reason in row, reason


def test_every_make_target_is_in_the_development_table_once() -> None:
    makefile = _read(REPO / "Makefile")
    targets = re.search(r"^\.PHONY: (.+)$", makefile, re.MULTILINE)
    assert targets is not None
    table = _section(_read(DOCS / "development.md"), "Make targets")
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `make ")]
    documented = [t for row in rows for t in re.findall(r"`make ([\w-]+)`", row)]
    assert sorted(documented) == sorted(targets.group(1).split())


def test_the_readme_is_a_front_page() -> None:
    readme = _read(REPO / "README.md")
    assert len(readme.splitlines()) <= 350
    assert "```mermaid\n" in readme
    for command in ("`make run`", "`make test`"):
        assert command in readme, command
