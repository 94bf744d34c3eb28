"""`python -m bridge.devtools.release`: the release tooling's command line (the Makefile's)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.devtools.release import version

REPO = Path(__file__).resolve().parents[3]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.devtools.release")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the release version (VERSION)")
    setv = sub.add_parser("set-version", help="write a new version to VERSION and every copy of it")
    setv.add_argument("new", help="MAJOR.MINOR.PATCH")
    sub.add_parser("check-version", help="fail when a copy of the version disagrees")
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
