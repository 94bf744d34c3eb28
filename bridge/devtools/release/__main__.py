"""`python -m bridge.devtools.release`: the release tooling's command line (the Makefile's)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bridge.devtools.release import dist, image, sbom, version

REPO = Path(__file__).resolve().parents[3]
# What the last `image` command left for the image-run test (tests/integration/test_image.py).
IMAGE_RECORD = REPO / "build" / "image.json"
IMAGE_UNAVAILABLE = REPO / "build" / "image-unavailable.txt"


def _image(args: argparse.Namespace) -> int:
    IMAGE_RECORD.unlink(missing_ok=True)
    IMAGE_UNAVAILABLE.unlink(missing_ok=True)
    try:
        built = image.build(
            version.read_version(REPO),
            base_choice=args.base,
            cache=args.cache,
            dist=args.dist,
            refresh_base=args.refresh_base,
        )
    except image.ImageUnavailableError as exc:
        print(f"image: cannot build here: {exc}", file=sys.stderr)
        if not args.unavailable_ok:
            return 1
        IMAGE_UNAVAILABLE.parent.mkdir(parents=True, exist_ok=True)
        IMAGE_UNAVAILABLE.write_text(f"{exc}\n", encoding="utf-8")
        return 0
    except image.ImageBuildError as exc:
        print(f"image: build failed: {exc}", file=sys.stderr)
        return 1
    IMAGE_RECORD.parent.mkdir(parents=True, exist_ok=True)
    IMAGE_RECORD.write_text(
        json.dumps(
            {
                "tag": built.tag,
                "base": built.base,
                "archive": str(built.archive),
                "image_id": built.image_id,
                "size_bytes": built.size_bytes,
                "layers": built.layers,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(image.describe(built))
    return 0


def _image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default="auto",
        help="auto (the Dockerfile's base if it can be pulled, else debian), debian, or an "
        "image reference",
    )
    parser.add_argument(
        "--cache", type=Path, default=image.DEFAULT_CACHE, help="the Debian base's cache"
    )
    parser.add_argument("--refresh-base", action="store_true", help="remake the Debian base")
    parser.add_argument("--dist", type=Path, default=REPO / "dist")


def _dist(args: argparse.Namespace) -> int:
    try:
        _, lines = dist.build(
            args.dist, base_choice=args.base, cache=args.cache, refresh_base=args.refresh_base
        )
    except (dist.ReleaseError, sbom.SbomError, image.ImageBuildError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    except image.ImageUnavailableError as exc:
        print(f"release: the image cannot be built here: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    release = version.read_version(REPO)
    problems = dist.verify(args.dist, release)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{args.dist}: {'NOT ' if problems else ''}the release of {release}")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.devtools.release")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the release version (VERSION)")
    setv = sub.add_parser("set-version", help="write a new version to VERSION and every copy of it")
    setv.add_argument("new", help="MAJOR.MINOR.PATCH")
    sub.add_parser("check-version", help="fail when a copy of the version disagrees")
    img = sub.add_parser("image", help="build the container image and save it under dist/")
    _image_options(img)
    img.add_argument(
        "--unavailable-ok",
        action="store_true",
        help="exit 0 when this machine cannot build images, with the reason in "
        "build/image-unavailable.txt (the image-run test skips with it)",
    )
    rel = sub.add_parser("dist", help="make the release in dist/: every artefact, SBOMs, sums")
    _image_options(rel)
    ver = sub.add_parser("verify", help="check dist/ as the release of VERSION")
    ver.add_argument("--dist", type=Path, default=REPO / "dist")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(version.read_version(REPO))
    elif args.command == "set-version":
        version.set_version(REPO, args.new)
        print(f"version {args.new}: VERSION and {len(version.PLACES)} copies written")
    elif args.command == "check-version":
        problems = version.mismatches(REPO)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    elif args.command == "image":
        return _image(args)
    elif args.command == "dist":
        return _dist(args)
    elif args.command == "verify":
        return _verify(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
