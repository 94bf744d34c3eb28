"""The image tooling's pure parts (bridge/devtools/release/image.py, sbom.py): the Dockerfile's
base, the base cache's key, an OCI archive's image id, a dpkg database's installed packages."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from bridge.devtools.release import image, sbom


def test_the_default_base_is_the_dockerfiles() -> None:
    assert image.default_base() == "python:3.11-slim-bookworm"


def test_the_base_cache_is_keyed_by_the_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = image.base_key()
    assert key == hashlib.sha256(image.RECIPE.read_bytes()).hexdigest()[:16]
    changed = tmp_path / "debian-base.sh"
    changed.write_bytes(image.RECIPE.read_bytes() + b"# one more package\n")
    monkeypatch.setattr(image, "RECIPE", changed)
    assert image.base_key() != key


def _archive(path: Path, config: bytes) -> str:
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"config": {"digest": config_digest}, "layers": []}).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"manifests": [{"digest": manifest_digest}]}).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in (
            ("index.json", index),
            (f"blobs/{manifest_digest.replace(':', '/')}", manifest),
            (f"blobs/{config_digest.replace(':', '/')}", config),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return config_digest.removeprefix("sha256:")


def test_an_archives_image_id_is_its_config_digest(tmp_path: Path) -> None:
    path = tmp_path / "image.oci.tar"
    assert image.archive_image_id(path) is None  # none saved yet
    expected = _archive(path, b'{"config": {}}')
    assert image.archive_image_id(path) == expected
    path.write_bytes(b"not a tar")
    assert image.archive_image_id(path) is None  # unreadable: saved anew


STATUS = """\
Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
Description: add and remove users and groups
 This package includes the 'adduser' and 'deluser' commands.
 .
 Status: not a field, a continuation line

Package: libold1
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: python3.11-minimal
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u6
"""


def test_installed_debian_packages_are_read_from_dpkg_status() -> None:
    found = [(p["Package"], p["Version"], p["Architecture"]) for p in sbom.dpkg_packages(STATUS)]
    assert found == [
        ("adduser", "3.134", "all"),
        ("python3.11-minimal", "3.11.2-6+deb12u6", "amd64"),
    ]
