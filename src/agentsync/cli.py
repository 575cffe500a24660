"""The ``agentsync`` command: builds a Config and calls into the package, nothing more."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agentsync import __version__, config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentsync",
        description="Real-time sync and sharing server for AI coding-agent sessions.",
    )
    parser.add_argument("--version", action="version", version=f"agentsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server (SQLite in --data; nothing else needed)",
        description="Run an agentsync node. Settings come from flags, AGENTSYNC_* env vars "
        "and a TOML file (--config), in that order of precedence.",
    )
    config.add_arguments(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from agentsync.server.app import run

        run(config.load(args))


if __name__ == "__main__":
    main(sys.argv[1:])
