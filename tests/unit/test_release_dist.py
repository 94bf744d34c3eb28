"""`make release`'s read-back (bridge/devtools/release/dist.py `verify`): a release of one
version passes, and each way an artefact can disagree is named. The artefacts are small stand-ins
with the real layout (wheel, sdist, jar, OCI archive), the chart is packaged by Helm's library
and the SBOMs are written by CycloneDX's."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import helm_python as helm
import pytest
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType

from bridge.devtools.release import dist, sbom

V = "1.2.3"
REPO = Path(__file__).resolve().parents[2]


def _zip(path: Path, files: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as archive:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _blob(data: dict[str, object]) -> tuple[str, bytes]:
    raw = json.dumps(data).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest(), raw


def _oci(path: Path, label: str, ref: str) -> str:
    config_digest, config = _blob(
        {"config": {"Labels": {"org.opencontainers.image.version": label}}}
    )
    manifest_digest, manifest = _blob({"config": {"digest": config_digest}, "layers": []})
    index = {
        "manifests": [
            {
                "digest": manifest_digest,
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ]
    }
    _tar(
        path,
        {
            "index.json": json.dumps(index).encode(),
            f"blobs/{manifest_digest.replace(':', '/')}": manifest,
            f"blobs/{config_digest.replace(':', '/')}": config,
        },
        mode="w",
    )
    return manifest_digest


def _bom(path: Path, version: str, name: str, depends_on_digest: str | None = None) -> None:
    root = Component(type=ComponentType.APPLICATION, name=name, version=version)
    bom = Bom()
    if depends_on_digest is not None:
        image = Component(
            type=ComponentType.CONTAINER,
            name="apizee-kafka-bridge",
            version=version,
            bom_ref=f"image:apizee-kafka-bridge@{depends_on_digest}",
        )
        bom.components.add(image)
        bom.register_dependency(root, [image])
    bom.metadata.component = root
    sbom.write(bom, path)


def _wheel_metadata(name: str, version: str, pin: str) -> str:
    requires = f"Requires-Dist: apizee-session-events=={pin}\n" if "bridge" in name else ""
    return f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{requires}"


def make_release(
    out: Path, *, wheel_version: str = V, pin: str = V, label: str = V, digest_in_sbom: bool = True
) -> Path:
    out.mkdir()
    for dist_name, name in (
        ("apizee_kafka_bridge", "apizee-kafka-bridge"),
        ("apizee_session_events", "apizee-session-events"),
    ):
        meta = _wheel_metadata(name, wheel_version, pin)
        _zip(
            out / f"{dist_name}-{V}-py3-none-any.whl", {f"{dist_name}-{V}.dist-info/METADATA": meta}
        )
        _tar(out / f"{dist_name}-{V}.tar.gz", {f"{dist_name}-{V}/PKG-INFO": meta.encode()})
        _bom(out / f"{dist_name}-{V}.cdx.json", V, name)
    kit = "apizee-session-events-consumer"
    _zip(
        out / f"{kit}-{V}.jar",
        {f"META-INF/maven/io.apizee.bridge/{kit}/pom.properties": f"version={V}\n"},
    )
    _zip(out / f"{kit}-{V}-sources.jar", {"README": "sources"})
    _bom(out / f"{kit}-{V}.cdx.json", V, kit)
    chart = Path(helm.package(dist.CHART, destination=out, version=V, app_version=V))
    digest = _oci(out / f"apizee-kafka-bridge-{V}.oci.tar", label, f"apizee-kafka-bridge:{V}")
    named = digest if digest_in_sbom else "sha256:" + "0" * 64
    _bom(out / f"apizee-kafka-bridge-{V}.oci.cdx.json", V, "apizee-kafka-bridge", named)
    sbom.chart(
        "apizee-kafka-bridge", V, V, chart, named, out / f"apizee-kafka-bridge-{V}.chart.cdx.json"
    )
    dist.write_sums(out)
    return out


def test_a_release_of_one_version_passes(tmp_path: Path) -> None:
    release = make_release(tmp_path / "dist")
    assert dist.verify(release, V) == []
    assert sorted(p.name for p in release.iterdir()) == sorted(dist.expected(V))


def _problems(release: Path) -> list[str]:
    return dist.verify(release, V)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (
            lambda d: make_release(d, wheel_version="1.2.4"),
            f"apizee_kafka_bridge-{V}-py3-none-any.whl: Version is '1.2.4'",
        ),
        (
            lambda d: make_release(d, pin="1.2.2"),
            f"apizee_kafka_bridge-{V}-py3-none-any.whl: its pin on apizee-session-events",
        ),
        (
            lambda d: make_release(d, label="1.2.2"),
            f"apizee-kafka-bridge-{V}.oci.tar: label version is '1.2.2'",
        ),
        (
            lambda d: make_release(d, digest_in_sbom=False),
            f"apizee-kafka-bridge-{V}.oci.cdx.json: does not name the image's digest",
        ),
    ],
)
def test_an_artefact_of_another_version_is_named(
    tmp_path: Path, make: Callable[[Path], Path], named: str
) -> None:
    problems = _problems(make(tmp_path / "dist"))
    assert any(p.startswith(named) for p in problems), problems


def test_a_missing_extra_or_changed_file_is_named(tmp_path: Path) -> None:
    release = make_release(tmp_path / "dist")
    (release / f"apizee-session-events-consumer-{V}-sources.jar").unlink()
    (release / "notes.txt").write_text("stray")
    problems = _problems(release)
    assert (
        f"missing: apizee-session-events-consumer-{V}-sources.jar (the Java consumer kit's sources)"
        in problems
    )
    assert "not part of the release: notes.txt" in problems

    release = make_release(tmp_path / "again")
    chart = release / f"apizee-kafka-bridge-{V}.tgz"
    chart.write_bytes(chart.read_bytes() + b"\0")
    assert f"SHA256SUMS: apizee-kafka-bridge-{V}.tgz does not match its SHA-256" in _problems(
        release
    )


def test_an_invalid_sbom_is_named(tmp_path: Path) -> None:
    release = make_release(tmp_path / "dist")
    path = release / f"apizee_session_events-{V}.cdx.json"
    data = json.loads(path.read_text())
    data["components"] = [{"name": "no type"}]
    path.write_text(json.dumps(data))
    dist.write_sums(release)
    (problem,) = _problems(release)
    assert problem.startswith(f"apizee_session_events-{V}.cdx.json: not valid CycloneDX 1.6")
