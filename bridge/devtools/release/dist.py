"""`make release`: every artefact of one version in dist/, an SBOM for each, SHA256SUMS; then
`verify` reads them back and names anything missing, extra or of another version."""

from __future__ import annotations

import email.parser
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bridge.devtools.release import image as images
from bridge.devtools.release import sbom
from bridge.devtools.release.version import mismatches, read_version

REPO: Final = Path(__file__).resolve().parents[3]
CHART: Final = REPO / "deploy" / "helm" / "apizee-kafka-bridge"
KIT: Final = REPO / "consumers" / "java"
KIT_ARTIFACT: Final = "apizee-session-events-consumer"
KIT_GROUP: Final = "io.apizee.bridge"
SUMS: Final = "SHA256SUMS"


class ReleaseError(Exception):
    """The release cannot be made (or is not what it should be): the message says why."""


def expected(version: str) -> dict[str, str]:
    """Every file of the release in dist/ -> what it is."""
    bridge, consumer = "apizee_kafka_bridge", "apizee_session_events"
    return {
        f"{bridge}-{version}-py3-none-any.whl": "the bridge's wheel",
        f"{bridge}-{version}.tar.gz": "the bridge's sdist",
        f"{bridge}-{version}.cdx.json": "the bridge's SBOM (its wheel and sdist)",
        f"{consumer}-{version}-py3-none-any.whl": "the consumers' Python package (wheel)",
        f"{consumer}-{version}.tar.gz": "the consumers' Python package (sdist)",
        f"{consumer}-{version}.cdx.json": "the consumers' Python package's SBOM",
        f"{KIT_ARTIFACT}-{version}.jar": "the Java consumer kit",
        f"{KIT_ARTIFACT}-{version}-sources.jar": "the Java consumer kit's sources",
        f"{KIT_ARTIFACT}-{version}.cdx.json": "the Java consumer kit's SBOM",
        f"{images.IMAGE_NAME}-{version}.tgz": "the Helm chart",
        f"{images.IMAGE_NAME}-{version}.chart.cdx.json": "the Helm chart's SBOM",
        f"{images.IMAGE_NAME}-{version}.oci.tar": "the container image (OCI archive)",
        f"{images.IMAGE_NAME}-{version}.oci.cdx.json": "the container image's SBOM",
        SUMS: "SHA-256 of every other file (sha256sum -c)",
    }


def _run(args: list[str], what: str, cwd: Path | None = None) -> None:
    print(f"release: {what}", flush=True)
    result = subprocess.run(  # noqa: S603 - argv built here, no shell
        [shutil.which(args[0]) or args[0], *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise ReleaseError(f"{what} failed:\n{tail}")


def _java_kit(dist: Path, version: str) -> None:
    if shutil.which("mvn") is None:
        raise ReleaseError("Maven (mvn) not found: the Java kit cannot be packaged")
    mvn = ["mvn", "-B", "-q", "-Dstyle.color=never", "-Djansi.force=false", "-Prelease"]
    _run(
        [*mvn, "clean", "package"],
        "Java kit: mvn -Prelease package (jar, sources jar, SBOM; its tests run)",
        cwd=KIT,
    )
    for suffix in (".jar", "-sources.jar", ".cdx.json"):
        shutil.copy2(KIT / "target" / f"{KIT_ARTIFACT}-{version}{suffix}", dist)


def _chart(dist: Path) -> Path:
    import helm_python as helm  # Helm's own library, as the chart's tests use it (test extra)

    print("release: chart: helm package", flush=True)
    return Path(helm.package(CHART, destination=dist))


def write_sums(dist: Path) -> None:
    lines = [
        f"{sbom.sha256(path)}  {path.name}\n"
        for path in sorted(dist.iterdir())
        if path.is_file() and path.name != SUMS
    ]
    (dist / SUMS).write_text("".join(lines), encoding="utf-8")


def build(
    dist: Path, *, base_choice: str, cache: Path, refresh_base: bool
) -> tuple[str, list[str]]:
    """Make every artefact of the release in a clean `dist`; its version and what it holds."""
    started = time.monotonic()
    problems = mismatches(REPO)
    if problems:
        raise ReleaseError("the version's copies disagree:\n" + "\n".join(problems))
    version = read_version(REPO)
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)

    for name, path in (("the bridge", REPO), ("the consumers' package", REPO / "consumers/python")):
        _run(
            [sys.executable, "-m", "build", "--outdir", str(dist), str(path)],
            f"{name}: python -m build (sdist, then the wheel from it)",
        )
    _java_kit(dist, version)
    chart_archive = _chart(dist)
    print("release: the image (make image)", flush=True)
    built = images.build(
        version, base_choice=base_choice, cache=cache, dist=dist, refresh_base=refresh_base
    )
    print(images.describe(built), flush=True)
    digest, _, _ = images.archive_manifest(built.archive)

    print("release: SBOMs (cyclonedx-py, CycloneDX's library)", flush=True)
    for name, dist_name, pyproject in (
        ("apizee-kafka-bridge", "apizee_kafka_bridge", REPO / "pyproject.toml"),
        (
            "apizee-session-events",
            "apizee_session_events",
            REPO / "consumers/python/pyproject.toml",
        ),
    ):
        sbom.python_package(
            name,
            version,
            pyproject,
            dist / f"{dist_name}-{version}-py3-none-any.whl",
            dist,
            dist / f"{dist_name}-{version}.cdx.json",
        )
    sbom.image(built.tag, version, digest, dist / f"{images.IMAGE_NAME}-{version}.oci.cdx.json")
    chart_meta = _chart_yaml(chart_archive)
    sbom.chart(
        chart_meta["name"],
        chart_meta["version"],
        chart_meta["appVersion"],
        chart_archive,
        digest,
        dist / f"{images.IMAGE_NAME}-{version}.chart.cdx.json",
    )
    write_sums(dist)
    problems = verify(dist, version)
    if problems:
        raise ReleaseError("dist/ is not what it should be:\n" + "\n".join(problems))
    took = time.monotonic() - started
    lines = [
        f"{(dist / name).stat().st_size / 1024:>10.0f} KiB  {name}  ({what})"
        for name, what in expected(version).items()
    ]
    lines.append(f"release {version}: image digest {digest}; {took:.0f} s")
    return version, lines


# -- reading the release back ----------------------------------------------------------------


def _metadata(text: str) -> Any:
    return email.parser.Parser().parsestr(text)


def _zip_text(path: Path, suffix: str) -> str:
    with zipfile.ZipFile(path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode()


def _tar_text(path: Path, suffix: str) -> str:
    with tarfile.open(path) as archive:
        (member,) = [
            m for m in archive.getmembers() if m.name.count("/") == 1 and m.name.endswith(suffix)
        ]
        handle = archive.extractfile(member)
        assert handle is not None
        return handle.read().decode()


def _chart_yaml(path: Path) -> dict[str, Any]:
    """The packaged chart's metadata, as Helm reads it."""
    import helm_python as helm

    with helm.Chart.load_archive(path.read_bytes()) as chart:
        return dict(chart.metadata)


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def verify(dist: Path, version: str) -> list[str]:
    """What is wrong with `dist` as the release of `version`; empty when nothing is."""
    files = expected(version)
    present = {p.name for p in dist.iterdir() if p.is_file()}
    problems = [f"missing: {name} ({what})" for name, what in files.items() if name not in present]
    problems += [f"not part of the release: {name}" for name in sorted(present - set(files))]
    if problems:
        return problems

    def check(what: str, found: object, want: object) -> None:
        if found != want:
            problems.append(f"{what} is {found!r}, expected {want!r}")

    def guarded(name: str, read: Callable[[Path], None]) -> None:
        try:
            read(dist / name)
        except (KeyError, ValueError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
            problems.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")

    bridge, consumer = "apizee_kafka_bridge", "apizee_session_events"
    for dist_name, name in ((bridge, "apizee-kafka-bridge"), (consumer, "apizee-session-events")):

        def wheel(path: Path, name: str = name) -> None:
            meta = _metadata(_zip_text(path, ".dist-info/METADATA"))
            check(f"{path.name}: Name", meta["Name"], name)
            check(f"{path.name}: Version", meta["Version"], version)
            if name == "apizee-kafka-bridge":
                pins = [r for r in meta.get_all("Requires-Dist") or [] if "session-events" in r]
                check(f"{path.name}: its pin on apizee-session-events", pins[:1],
                      [f"apizee-session-events=={version}"])  # fmt: skip

        def sdist(path: Path) -> None:
            check(
                f"{path.name}: Version", _metadata(_tar_text(path, "/PKG-INFO"))["Version"], version
            )

        guarded(f"{dist_name}-{version}-py3-none-any.whl", wheel)
        guarded(f"{dist_name}-{version}.tar.gz", sdist)

    def jar(path: Path) -> None:
        props = _properties(_zip_text(path, f"{KIT_GROUP}/{KIT_ARTIFACT}/pom.properties"))
        check(f"{path.name}: version", props.get("version"), version)

    guarded(f"{KIT_ARTIFACT}-{version}.jar", jar)

    def chart(path: Path) -> None:
        meta = _chart_yaml(path)
        check(f"{path.name}: version", str(meta["version"]), version)
        check(f"{path.name}: appVersion", str(meta["appVersion"]), version)

    guarded(f"{images.IMAGE_NAME}-{version}.tgz", chart)

    digest: list[str] = []

    def oci(path: Path) -> None:
        found, entry, config = images.archive_manifest(path)
        digest.append(found)
        labels = config.get("config", {}).get("Labels") or {}
        check(
            f"{path.name}: label version", labels.get("org.opencontainers.image.version"), version
        )
        ref = entry.get("annotations", {}).get("org.opencontainers.image.ref.name")
        check(f"{path.name}: ref name", ref, f"{images.IMAGE_NAME}:{version}")

    guarded(f"{images.IMAGE_NAME}-{version}.oci.tar", oci)

    for name in (n for n in files if n.endswith(".cdx.json")):

        def bom(path: Path) -> None:
            invalid = sbom.validate(path)
            if invalid is not None:
                problems.append(f"{path.name}: not valid CycloneDX 1.6: {invalid}")
                return
            root = json.loads(path.read_text(encoding="utf-8"))["metadata"]["component"]
            check(f"{path.name}: its component's version", root.get("version"), version)
            if path.name.endswith((".oci.cdx.json", ".chart.cdx.json")) and digest:
                refs = json.dumps(json.loads(path.read_text(encoding="utf-8")))
                if f"@{digest[0]}" not in refs:
                    problems.append(f"{path.name}: does not name the image's digest {digest[0]}")

        guarded(name, bom)

    def sums(path: Path) -> None:
        listed = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            hexdigest, _, name = line.partition("  ")
            listed[name] = hexdigest
        check(f"{SUMS}: the files it lists", sorted(listed), sorted(set(files) - {SUMS}))
        for name, hexdigest in listed.items():
            if (dist / name).is_file() and sbom.sha256(dist / name) != hexdigest:
                problems.append(f"{SUMS}: {name} does not match its SHA-256")

    guarded(SUMS, sums)
    return problems
