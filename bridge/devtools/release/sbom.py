"""The release's CycloneDX SBOMs, from CycloneDX's own generators wherever one fits.

* Python packages: `cyclonedx-py environment` over a fresh virtualenv holding the built wheel
  and its dependencies as constraints.txt pins them (what a `pip install` of the wheel gets).
* The image: `cyclonedx-py` run inside a working container of the image over its /opt/venv
  (the image's interpreter reports its own environment), plus the image's Debian packages read
  from its dpkg database, added with CycloneDX's Python library.
* The chart: written with that library (the chart and the image it deploys by default).
* The Java kit: cyclonedx-maven-plugin (consumers/java/pom.xml, profile `release`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from bridge.devtools.release import image as images

REPO: Final = Path(__file__).resolve().parents[3]
CONSTRAINTS: Final = REPO / "constraints.txt"
SPEC: Final = SchemaVersion.V1_6
_OPTIONS: Final = ("--sv", "1.6", "--output-reproducible")
# Where the image's SBOM tools go in its throwaway working container.
_TOOLS: Final = "/opt/apizee-sbom"


class SbomError(Exception):
    """An SBOM could not be generated: the message says which step and why."""


def _run(args: list[str], what: str) -> str:
    result = subprocess.run(  # noqa: S603 - argv built here, no shell
        [shutil.which(args[0]) or args[0], *args[1:]],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise SbomError(f"{what} failed:\n{tail}")
    return result.stdout


def _cyclonedx_py() -> str:
    found = shutil.which("cyclonedx-py", path=str(Path(sys.executable).parent))
    if found is None:
        raise SbomError("cyclonedx-py not found beside this Python: make install-test")
    return found


def write(bom: Bom, out: Path) -> None:
    """Serialize as CycloneDX 1.6 JSON, refusing what the schema refuses."""
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    errors = JsonStrictValidator(SPEC).validate_str(text)
    if errors is not None:
        raise SbomError(f"{out.name}: not valid CycloneDX {SPEC.to_version()}: {errors}")
    out.write_text(text + "\n", encoding="utf-8")


def validate(path: Path) -> str | None:
    """Why `path` is not a valid CycloneDX 1.6 JSON document; None when it is."""
    errors = JsonStrictValidator(SPEC).validate_str(path.read_text(encoding="utf-8"))
    return None if errors is None else str(errors)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def python_package(
    name: str, version: str, pyproject: Path, wheel: Path, find_links: Path, out: Path
) -> None:
    """The SBOM of a Python distribution: it and every dependency a pinned install brings."""
    with tempfile.TemporaryDirectory(prefix="sbom-") as tmp:
        venv = Path(tmp) / "venv"
        # No pip or setuptools of its own: only what installing the wheel brings is listed.
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
        pins = ["-c", str(CONSTRAINTS), "--find-links", str(find_links)]
        _run([*pip, "install", "--quiet", *pins, str(wheel)], f"pip install {wheel.name}")
        raw = Path(tmp) / "raw.cdx.json"
        generate = [_cyclonedx_py(), "environment", "--pyproject", str(pyproject), *_OPTIONS]
        _run([*generate, "-o", str(raw), str(venv)], f"cyclonedx-py environment ({name})")
        bom = Bom.from_json(json.loads(raw.read_text(encoding="utf-8")))  # type: ignore[attr-defined]
    root = bom.metadata.component
    if root is None:
        raise SbomError(f"cyclonedx-py gave {name}'s SBOM no root component")
    # The version is dynamic (VERSION), which cyclonedx-py does not read from pyproject.toml.
    root.version = version
    root.purl = PackageURL(type="pypi", name=name, version=version)
    root.hashes = [HashType(alg=HashAlgorithm.SHA_256, content=sha256(wheel))]
    write(bom, out)


# -- the image -------------------------------------------------------------------------------


def dpkg_packages(status: str) -> Iterator[dict[str, str]]:
    """The installed packages of a dpkg status file (deb822 paragraphs)."""
    for paragraph in status.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                continue  # a continuation line (descriptions, conffiles): not needed here
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            yield fields


def _os_release(rootfs: Path) -> dict[str, str]:
    path = rootfs / "etc" / "os-release"
    if not path.exists():
        path = rootfs / "usr" / "lib" / "os-release"
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value.strip().strip('"')
    return out


def image(tag: str, version: str, digest: str, out: Path) -> None:
    """The image's SBOM: its Python environment (cyclonedx-py inside a working container of
    the image) and its Debian packages; the image as the root, named by its manifest digest."""
    container = f"apizee-sbom-{uuid.uuid4().hex[:8]}"
    _run(["buildah", "from", "--pull-never", "--name", container, tag], "buildah from")
    try:
        # In the working container only (removed below): the image itself is not changed.
        pins = f"{_TOOLS}/constraints.txt"
        _run(["buildah", "copy", container, str(CONSTRAINTS), pins], "buildah copy")
        inside = ["buildah", "run", "--isolation", "chroot", "--user", "0:0"]
        inside += [*images.host_trust(), "--env", "PIP_NO_CACHE_DIR=1", container, "--"]
        venv = f"{_TOOLS}/venv"
        _run([*inside, "python", "-m", "venv", venv], "python -m venv (in the image)")
        install = [f"{venv}/bin/pip", "install", "--quiet", "-c", pins, "cyclonedx-bom"]
        _run([*inside, *install], "pip install cyclonedx-bom (in the image)")
        generate = [f"{venv}/bin/cyclonedx-py", "environment", *_OPTIONS, "/opt/venv"]
        raw = _run([*inside, *generate], "cyclonedx-py environment (in the image)")
        rootfs = Path(_run(["buildah", "mount", container], "buildah mount").strip())
        try:
            status = (rootfs / "var" / "lib" / "dpkg" / "status").read_text(encoding="utf-8")
            release = _os_release(rootfs)
        finally:
            _run(["buildah", "umount", container], "buildah umount")
    finally:
        subprocess.run(  # noqa: S603 - argv built here, no shell
            [shutil.which("buildah") or "buildah", "rm", container],
            capture_output=True,
            check=False,
        )

    bom = Bom.from_json(json.loads(raw))  # type: ignore[attr-defined]
    python = list(bom.components)
    distro = f"{release.get('ID', 'debian')}-{release.get('VERSION_ID', '')}".rstrip("-")
    system = Component(
        type=ComponentType.OPERATING_SYSTEM,
        name=release.get("ID", "debian"),
        version=release.get("VERSION_ID"),
        description=release.get("PRETTY_NAME"),
        bom_ref=f"os:{distro}",
    )
    debs = []
    for package in dpkg_packages(status):
        purl = PackageURL(
            type="deb",
            namespace=release.get("ID", "debian"),
            name=package["Package"],
            version=package["Version"],
            qualifiers={"arch": package.get("Architecture", ""), "distro": distro},
        )
        debs.append(
            Component(
                type=ComponentType.LIBRARY,
                name=package["Package"],
                version=package["Version"],
                purl=purl,
                bom_ref=purl.to_string(),
            )
        )
    bom.components.update([system, *debs])
    root = Component(
        type=ComponentType.CONTAINER,
        name=images.IMAGE_NAME,
        version=version,
        purl=PackageURL(
            type="oci", name=images.IMAGE_NAME, version=digest, qualifiers={"tag": version}
        ),
        bom_ref=f"image:{images.IMAGE_NAME}@{digest}",
    )
    bom.metadata.component = root
    bom.register_dependency(root, [system, *python])
    bom.register_dependency(system, debs)
    write(bom, out)


# -- the chart -------------------------------------------------------------------------------


def chart(name: str, version: str, app_version: str, archive: Path, digest: str, out: Path) -> None:
    """The chart's SBOM: the chart (its archive's hash) and the image it deploys by default."""
    runs = Component(
        type=ComponentType.CONTAINER,
        name=images.IMAGE_NAME,
        version=app_version,
        purl=PackageURL(
            type="oci", name=images.IMAGE_NAME, version=digest, qualifiers={"tag": app_version}
        ),
        bom_ref=f"image:{images.IMAGE_NAME}@{digest}",
    )
    root = Component(
        type=ComponentType.APPLICATION,
        name=name,
        version=version,
        description="Helm chart",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256(archive))],
        bom_ref=f"chart:{name}@{version}",
    )
    bom = Bom(components=[runs])
    bom.metadata.component = root
    bom.register_dependency(root, [runs])
    write(bom, out)
