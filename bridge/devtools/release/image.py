"""The container image: the Dockerfile built with buildah, saved as an OCI archive under dist/.

The base is the Dockerfile's (python:3.11-slim-bookworm) when it can be pulled. Where no
container registry answers, an equivalent base is made from Debian's packages
(deploy/image/debian-base.sh: debootstrap, Python 3.11) and cached outside the clone, keyed by
that script's hash, so later builds (and later clones on the same machine) reuse it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[3]
DOCKERFILE: Final = REPO / "Dockerfile"
RECIPE: Final = REPO / "deploy" / "image" / "debian-base.sh"
IMAGE_NAME: Final = "apizee-kafka-bridge"
BASE_NAME: Final = "localhost/apizee-bridge-base"
# Outside the clone: CI's fresh clone on the same machine finds the base made by an earlier run.
DEFAULT_CACHE: Final = Path("/var/cache/apizee-bridge")
PULL_TIMEOUT: Final = 120.0
_HOST_CA: Final = "/etc/ssl/certs/ca-certificates.crt"
# The Debian package that brings each command the image tooling runs (bookworm: buildah 1.28,
# podman 4.3). runc: crun 1.8 refuses hosts whose cgroup v2 hierarchy has controllers beside
# v1 ones ("hybrid"), which runc runs on.
PACKAGES: Final = {
    "buildah": "buildah",
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
}
# The config the public base sets and a debootstrapped root file system lacks.
_BASE_CONFIG: Final = (
    "--env",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "--env",
    "LANG=C.UTF-8",
    "--cmd",
    "python3",
    "--label",
    "org.opencontainers.image.description=Debian bookworm with Python 3.11 "
    "(deploy/image/debian-base.sh)",
)


class ImageUnavailableError(Exception):
    """This machine cannot build or run the image (no root, no builder): the message says why."""


class ImageBuildError(Exception):
    """The build itself failed: a broken Dockerfile or recipe, never a skip."""


@dataclass(frozen=True, slots=True)
class Built:
    tag: str
    base: str
    archive: Path
    image_id: str
    size_bytes: int
    layers: int
    archive_bytes: int
    seconds: float


def _run(
    args: list[str],
    *,
    timeout: float | None = None,
    quiet: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool (found on the PATH) without a shell; `quiet` captures its output."""
    return subprocess.run(  # noqa: S603 - argv built here, no shell
        [shutil.which(args[0]) or args[0], *args[1:]],
        capture_output=quiet,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_tools(commands: Iterable[str]) -> None:
    """Install the missing commands' Debian packages (root, apt-get), or say why that can't be."""
    missing = [command for command in commands if shutil.which(command) is None]
    if not missing:
        return
    packages = sorted({PACKAGES[command] for command in missing})
    if os.geteuid() != 0:
        raise ImageUnavailableError(
            f"{', '.join(missing)} not found and not root: cannot apt-get install "
            f"{' '.join(packages)} (install them, or run as root)"
        )
    if shutil.which("apt-get") is None:
        raise ImageUnavailableError(
            f"{', '.join(missing)} not found and no apt-get to install {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    print(f"image: installing {' '.join(packages)} (Debian packages)", flush=True)
    result = _run(install, env=env)
    if result.returncode != 0:
        # A stale or empty package list: update once, then try again.
        _run(["apt-get", "update", "-qq"], env=env)
        result = _run(install, env=env)
    still = [command for command in missing if shutil.which(command) is None]
    if result.returncode != 0 or still:
        raise ImageUnavailableError(
            f"apt-get install {' '.join(packages)} failed:\n{_tail(result.stdout + result.stderr)}"
        )


def default_base() -> str:
    """The base the Dockerfile names (ARG PYTHON_IMAGE)."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text("utf-8"), re.MULTILINE)
    if match is None:
        raise ImageBuildError("Dockerfile: no ARG PYTHON_IMAGE default")
    return match[1]


def image_exists(ref: str) -> bool:
    return _run(["buildah", "inspect", "--type", "image", ref]).returncode == 0


def try_pull(ref: str) -> str | None:
    """None when `ref` is here (pulled now or before); otherwise why it could not be pulled."""
    if image_exists(ref):
        return None
    try:
        result = _run(["buildah", "pull", "--quiet", ref], timeout=PULL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"no answer within {PULL_TIMEOUT:.0f} s"
    if result.returncode == 0:
        return None
    return _tail(result.stderr, 1) or f"buildah pull exited {result.returncode}"


def base_key() -> str:
    """The recipe's hash: a changed recipe makes (and caches) a new base."""
    return hashlib.sha256(RECIPE.read_bytes()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One base build at a time on this machine (two clones building at once share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_rootfs_tar(workdir: Path, tar_path: Path) -> None:
    rootfs = workdir / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    print(f"image: making the Debian base with {RECIPE.relative_to(REPO)} (about a minute)")
    result = _run(["sh", str(RECIPE), str(rootfs)], quiet=False)
    if result.returncode != 0:
        raise ImageBuildError(f"{RECIPE.name} exited {result.returncode}")
    partial = tar_path.with_suffix(".partial")
    # Devices come from the container runtime; numeric owners and xattrs (file capabilities)
    # as they are in the root file system.
    tar = ["tar", "--numeric-owner", "--xattrs", "--exclude=./dev/*", "-C", str(rootfs)]
    _check([*tar, "-cf", str(partial), "."])
    partial.replace(tar_path)
    shutil.rmtree(rootfs)


def debian_base(cache: Path, *, refresh: bool = False) -> str:
    """The Debian base's image reference, made (or taken from the cache) as needed."""
    key = base_key()
    ref = f"{BASE_NAME}:bookworm-{key}"
    workdir = cache / f"base-{key}"
    tar_path = workdir / "rootfs.tar"
    stamp = workdir / "stamp.json"
    if not refresh and image_exists(ref):
        built = json.loads(stamp.read_text()) if stamp.exists() else {}
        print(f"image: reusing the Debian base {ref} (made {built.get('built', '?')})")
        return ref
    if os.geteuid() != 0:
        raise ImageUnavailableError(
            "the public base cannot be pulled and making the Debian base needs root "
            "(debootstrap, chroot)"
        )
    with _locked(cache / ".lock"):
        if refresh or not stamp.exists() or not tar_path.exists():
            ensure_tools(["debootstrap"])
            workdir.mkdir(parents=True, exist_ok=True)
            stamp.unlink(missing_ok=True)
            _make_rootfs_tar(workdir, tar_path)
            stamp.write_text(
                json.dumps(
                    {
                        "key": key,
                        "recipe": str(RECIPE.relative_to(REPO)),
                        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    }
                )
                + "\n"
            )
        else:
            print(f"image: importing the cached Debian base {tar_path}")
        container = _check(["buildah", "from", "scratch"]).strip()
        try:
            _check(["buildah", "add", "--quiet", container, str(tar_path), "/"])
            _check(["buildah", "config", *_BASE_CONFIG, container])
            _check(["buildah", "commit", "--quiet", container, ref])
        finally:
            _run(["buildah", "rm", container])
    return ref


def _check(args: list[str]) -> str:
    result = _run(args)
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(args[:3])} failed:\n{_tail(result.stderr)}")
    return result.stdout


def choose_base(choice: str, cache: Path, *, refresh: bool) -> str:
    """`auto`: the Dockerfile's base if it can be pulled, else the Debian base; `debian`; a ref."""
    if choice == "debian":
        return debian_base(cache, refresh=refresh)
    ref = default_base() if choice == "auto" else choice
    why = try_pull(ref)
    if why is None:
        return ref
    if choice != "auto":
        raise ImageUnavailableError(f"the base {ref} cannot be pulled: {why}")
    print(f"image: {ref} cannot be pulled ({why}); building on a Debian base made here")
    return debian_base(cache, refresh=refresh)


def host_trust() -> list[str]:
    """The host's CA bundle over the build's, for the RUN steps only (a bind mount: not in any
    layer, and the runtime stage copies nothing from /etc): where the host reaches the package
    index through a TLS-inspecting proxy, the build stage's pip trusts what the host's does."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), _HOST_CA):
        if candidate and Path(candidate).is_file():
            return ["--volume", f"{Path(candidate).resolve()}:{_HOST_CA}:ro"]
    return []


def _archive_json(archive: tarfile.TarFile, name: str) -> Any:
    member = archive.extractfile(name)
    if member is None:
        raise ImageBuildError(f"{name} is not a file in the archive")
    return json.load(member)


def archive_manifest(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """An OCI archive's manifest digest (what a registry serves it as when the archive is
    copied as it is, e.g. by `skopeo copy`), its index entry and its image config."""
    with tarfile.open(path) as archive:
        (entry,) = _archive_json(archive, "index.json")["manifests"]
        digest: str = entry["digest"]
        manifest = _archive_json(archive, f"blobs/{digest.replace(':', '/')}")
        config_digest = manifest["config"]["digest"].replace(":", "/")
        config: dict[str, Any] = _archive_json(archive, f"blobs/{config_digest}")
    return digest, entry, config


def archive_image_id(path: Path) -> str | None:
    """The id (config digest, as buildah names images) of the image an archive holds."""
    if not path.exists():
        return None
    try:
        with tarfile.open(path) as archive:
            (entry,) = _archive_json(archive, "index.json")["manifests"]
            manifest = _archive_json(archive, f"blobs/{entry['digest'].replace(':', '/')}")
    except (OSError, tarfile.TarError, KeyError, ValueError, ImageBuildError):
        return None
    config: str = manifest["config"]["digest"]
    return config.removeprefix("sha256:")


def inspect(ref: str) -> dict[str, Any]:
    """buildah's view of an image: its OCI config (labels, layers) among other things."""
    data: dict[str, Any] = json.loads(_check(["buildah", "inspect", "--type", "image", ref]))
    return data


def image_size(ref: str) -> int:
    """Uncompressed bytes of every layer (what `podman images` shows)."""
    return int(_check(["podman", "image", "inspect", "--format", "{{.Size}}", ref]).strip())


def build(
    version: str,
    *,
    base_choice: str = "auto",
    cache: Path = DEFAULT_CACHE,
    dist: Path,
    refresh_base: bool = False,
) -> Built:
    """Build the image from the Dockerfile, save it to dist/ as an OCI archive, describe it."""
    started = time.monotonic()
    # podman and runc: `make image-test` runs what was built (PACKAGES says why runc).
    ensure_tools(["buildah", "podman", "runc"])
    base = choose_base(base_choice, cache, refresh=refresh_base)
    tag = f"localhost/{IMAGE_NAME}:{version}"
    # chroot isolation: the RUN steps need no OCI runtime (none that works on every host, see
    # PACKAGES), and the build stage reaches the package index through the host's network.
    args = [
        "buildah", "bud", "--isolation", "chroot", "--layers", *host_trust(),
        "--build-arg", f"PYTHON_IMAGE={base}",
        "--build-arg", f"VERSION={version}",
        "--tag", tag, "--file", str(DOCKERFILE), str(REPO),
    ]  # fmt: skip
    print(f"image: {' '.join(args[:3])} ... --tag {tag} (base {base})", flush=True)
    if _run(args, quiet=False).returncode != 0:
        raise ImageBuildError("buildah bud failed (its output is above)")
    dist.mkdir(parents=True, exist_ok=True)
    archive = dist / f"{IMAGE_NAME}-{version}.oci.tar"
    data = inspect(tag)
    image_id: str = data["FromImageID"]
    if archive_image_id(archive) != image_id:
        # Saved anew only when the image changed: the same image saved twice differs in its
        # tar's bytes (not its digest), which would break a release's SHA256SUMS.
        archive.unlink(missing_ok=True)
        # The archive's ref.name is the tag `podman load` and `skopeo copy` give the image back.
        _check(["buildah", "push", "--quiet", tag, f"oci-archive:{archive}:{IMAGE_NAME}:{version}"])
    # Each build leaves untagged layers: the newest are the next build's cache, those a week old
    # only fill the disk of a machine that builds every change (CI).
    _run(["podman", "image", "prune", "--force", "--filter", "until=168h"])
    return Built(
        tag=tag,
        base=base,
        archive=archive,
        image_id=image_id,
        size_bytes=image_size(tag),
        layers=len(data["OCIv1"]["rootfs"]["diff_ids"]),
        archive_bytes=archive.stat().st_size,
        seconds=time.monotonic() - started,
    )


def describe(built: Built) -> str:
    mib = 1024 * 1024
    archive = built.archive
    if archive.is_relative_to(REPO):
        archive = archive.relative_to(REPO)
    return (
        f"image: {built.tag} ({built.image_id[:12]}) on {built.base}: "
        f"{built.size_bytes / mib:.0f} MiB, {built.layers} layers; "
        f"archive {archive} "
        f"{built.archive_bytes / mib:.0f} MiB; {built.seconds:.0f} s"
    )
