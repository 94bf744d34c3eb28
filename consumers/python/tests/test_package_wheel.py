"""The built wheel: its schemas are the repository's, and installed into a clean venv (no
system site-packages, nothing of the repository importable) it decodes every vector with
fastavro as its only dependency; `[kafka]` adds confluent-kafka and nothing else."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
REPO = PACKAGE.parents[1]
SCHEMAS = REPO / "schemas"
VECTORS = REPO / "tests" / "vectors"
DISTRIBUTION = "apizee-session-events"
# What a consumer must never be made to install: the bridge's own stack.
BRIDGE_STACK = {"aiohttp", "aiokafka", "pydantic", "prometheus-client", "apizee-kafka-bridge"}
INSTALL_TIMEOUT = 300.0  # pip from its cache takes a few seconds; from an index, longer

needs_venv = pytest.mark.skipif(
    importlib.util.find_spec("venv") is None or importlib.util.find_spec("ensurepip") is None,
    reason="`python -m venv` is unavailable here (no venv/ensurepip module; on Debian: apt"
    " install python3-venv)",
)


def run(*args: str | Path, cwd: Path, timeout: float = INSTALL_TIMEOUT) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps consumers/python`, as a consumer builds it."""
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, PACKAGE, cwd=out)
    (built,) = out.glob("apizee_session_events-*.whl")
    return built


def test_the_wheel_bundles_the_repository_schemas_byte_for_byte(wheel: Path) -> None:
    prefix = "apizee_session_events/schemas/"
    with zipfile.ZipFile(wheel) as archive:
        bundled = {
            name.removeprefix(prefix): archive.read(name)
            for name in archive.namelist()
            if name.startswith(prefix) and not name.endswith("/")
        }
    repository = {
        path.relative_to(SCHEMAS).as_posix(): path.read_bytes()
        for path in SCHEMAS.rglob("*")
        if path.is_file()
    }
    assert sorted(bundled) == sorted(repository)
    assert "released/v1/fingerprints.json" in bundled
    for name, data in repository.items():
        assert bundled[name] == data, f"the wheel's {name} differs from schemas/{name}"


@dataclass(frozen=True, slots=True)
class Venv:
    python: Path
    workdir: Path
    before: frozenset[str]
    """The distributions the venv held before the wheel was installed (pip, setuptools)."""

    def distributions(self) -> dict[str, list[str]]:
        """Every installed distribution (canonical name) -> its Requires-Dist lines."""
        script = (
            "import importlib.metadata as m, json, sys\n"
            "json.dump({d.metadata['Name']: d.requires or [] for d in m.distributions()},"
            " sys.stdout)"
        )
        found: dict[str, list[str]] = json.loads(
            run(self.python, "-I", "-c", script, cwd=self.workdir)
        )
        return {canonicalize_name(name): requires for name, requires in found.items()}

    def closure(self, extras: set[str]) -> set[str]:
        """The distributions the package's requirements (with `extras`) reach, markers
        evaluated for this Python, found through what the venv has installed."""
        installed = self.distributions()
        wanted, seen = [(DISTRIBUTION, extras)], set()
        while wanted:
            name, active = wanted.pop()
            if name in seen:
                continue
            seen.add(name)
            for line in installed[name]:
                requirement = Requirement(line)
                environments = [{**default_environment(), "extra": e} for e in active or {""}]
                if requirement.marker is None or any(
                    requirement.marker.evaluate(env) for env in environments
                ):
                    wanted.append((canonicalize_name(requirement.name), set(requirement.extras)))
        return seen


def _venv(root: Path, wheel: Path, extras: str) -> Iterator[Venv]:
    run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    python = root / "venv" / "bin" / "python"
    workdir = root / "work"  # outside the repository: nothing of it on the path
    workdir.mkdir()
    before = Venv(python, workdir, frozenset()).distributions()
    run(python, "-m", "pip", "install", "-q", f"{wheel}{extras}", cwd=workdir)
    yield Venv(python, workdir, frozenset(before))


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Venv]:
    """A venv without system site-packages holding the wheel and what pip installs for it."""
    yield from _venv(tmp_path_factory.mktemp("venv"), wheel, "")


@pytest.fixture(scope="module")
def kafka_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Venv]:
    """The same with the extra `[kafka]`."""
    yield from _venv(tmp_path_factory.mktemp("venv-kafka"), wheel, "[kafka]")


@needs_venv
def test_the_wheel_in_a_clean_venv_decodes_every_vector(clean_venv: Venv) -> None:
    script = clean_venv.workdir / "vector_decoding.py"
    script.write_text((HERE / "vector_decoding.py").read_text(encoding="utf-8"))
    where = run(
        clean_venv.python,
        "-I",
        "-c",
        "import apizee_session_events as p, fastavro; print(p.__file__); print(fastavro.__file__)",
        cwd=clean_venv.workdir,
    )
    venv_root = clean_venv.python.parent.parent
    assert all(Path(line).is_relative_to(venv_root) for line in where.splitlines()), where

    decoded = json.loads(run(clean_venv.python, "-I", script, VECTORS, cwd=clean_venv.workdir))

    expected = {}
    for path in sorted(VECTORS.rglob("*.bin")):
        spec = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        expected[path.relative_to(VECTORS).as_posix()] = {
            k: spec[k] for k in ("framing", "fingerprint", "schema", "record")
        }
    assert len(expected) == 41
    assert decoded == expected


@needs_venv
def test_the_clean_venv_holds_the_package_and_fastavro_only(clean_venv: Venv) -> None:
    installed = set(clean_venv.distributions())
    closure = clean_venv.closure(set())
    assert closure == {DISTRIBUTION, "fastavro"}
    # Nothing else came with it: what pip added is exactly the closure.
    assert installed - clean_venv.before == closure
    assert not installed & BRIDGE_STACK


@needs_venv
def test_without_the_kafka_extra_importing_the_reader_says_how_to_get_it(
    clean_venv: Venv,
) -> None:
    done = subprocess.run(
        [str(clean_venv.python), "-I", "-c", "import apizee_session_events.kafka"],
        cwd=clean_venv.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "ImportError: apizee_session_events.kafka needs confluent-kafka:"
        " pip install 'apizee-session-events[kafka]'"
    )


@needs_venv
def test_the_kafka_extra_adds_confluent_kafka_only(kafka_venv: Venv) -> None:
    installed = set(kafka_venv.distributions())
    closure = kafka_venv.closure({"kafka"})
    assert closure == {DISTRIBUTION, "fastavro", "confluent-kafka"}
    assert installed - kafka_venv.before == closure
    assert not installed & BRIDGE_STACK
    run(
        kafka_venv.python,
        "-I",
        "-c",
        "from apizee_session_events.kafka import read_events",
        cwd=kafka_venv.workdir,
    )
