"""The package layout by audience (bridge/, bridge/commands/, bridge/devtools/) and the
import-linter contracts that keep it: the service imports neither the operator commands nor
the dev tools, and the commands do not import the dev tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.unit.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# The command line's dispatcher: the one module that names all three audiences.
DISPATCHER = "bridge.cli"


def _contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _service_modules() -> set[str]:
    return {
        f"bridge.{path.stem}"
        for path in (REPO / "bridge").glob("*.py")
        if path.stem != "__init__" and f"bridge.{path.stem}" != DISPATCHER
    }


def test_every_service_module_is_under_the_contract() -> None:
    # A module added to bridge/ is the service's unless it goes to commands/ or devtools/:
    # the contract must name it, or it could import them unnoticed.
    service = next(c for c in _contracts() if "bridge.devtools" in c["forbidden_modules"])
    assert set(service["source_modules"]) == _service_modules()
    assert set(service["forbidden_modules"]) == {"bridge.commands", "bridge.devtools"}


def test_the_audiences_have_their_packages() -> None:
    for module in ("check", "replay", "tail", "console", "cluster"):
        assert (REPO / "bridge" / "commands" / f"{module}.py").is_file(), module
    for module in ("dev.py", "simulator.py", "devregistry.py", "docs.py", "devbroker"):
        assert (REPO / "bridge" / "devtools" / module).exists(), module
    assert not (REPO / "bridge" / "consumer.py").exists()


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "bridge", tmp_path / "bridge", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="lint-imports is not installed")
def test_the_contracts_hold_on_the_tree(tree_copy: Path) -> None:
    result = _lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="lint-imports is not installed")
@pytest.mark.parametrize(
    ("importer", "imported", "contract"),
    [
        ("dedupe", "bridge.commands.tail", "The service imports neither"),
        ("codec", "bridge.devtools.simulator", "The service imports neither"),
        ("commands/tail", "bridge.devtools.dev", "The operator commands do not import"),
    ],
)
def test_make_lint_fails_when_the_direction_is_broken(
    tree_copy: Path, importer: str, imported: str, contract: str
) -> None:
    module = tree_copy / "bridge" / f"{importer}.py"
    module.write_text(
        module.read_text(encoding="utf-8") + f"\n\ndef _late() -> None:\n    import {imported}\n",
        encoding="utf-8",
    )
    result = _lint_imports(tree_copy)
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout
    assert "BROKEN" in result.stdout
    assert imported in result.stdout
