"""The `apizee-bridge` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge import __version__


def _cmd_schemas(args: argparse.Namespace) -> int:
    from bridge.schemas import schema_files, write_schema_files

    directory: Path = args.dir
    if args.check:
        stale = [
            rel
            for rel, text in schema_files().items()
            if not (directory / rel).is_file()
            or (directory / rel).read_text(encoding="utf-8") != text
        ]
        for rel in stale:
            print(f"out of date: {directory / rel}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schema_files(directory):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apizee-bridge",
        description="Streams Apizee session events into Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    schemas = sub.add_parser(
        "schemas",
        help="write (or check) the Avro schema files generated from the event catalog",
        description="Generate schemas/ from the event catalog, or check it is up to date.",
    )
    schemas.add_argument("dir", type=Path, nargs="?", default=Path("schemas"))
    mode = schemas.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the files (default)")
    mode.add_argument("--check", action="store_true", help="exit 1 if any file differs")
    schemas.set_defaults(func=_cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
