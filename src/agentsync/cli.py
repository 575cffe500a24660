"""The ``agentsync`` command: builds a Config and calls into the package, nothing more."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

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

    admin = commands.add_parser(
        "admin",
        help="operator commands against a running server (needs its --admin-key)",
        description="List, inspect, expire and delete any share on a server.",
    )
    admin.add_argument(
        "--url",
        default=os.environ.get("AGENTSYNC_URL", "http://127.0.0.1:8787"),
        help="the server [env AGENTSYNC_URL]",
    )
    admin.add_argument(
        "--admin-key",
        default=os.environ.get("AGENTSYNC_ADMIN_KEY"),
        help="the server's operator key [env AGENTSYNC_ADMIN_KEY]",
    )
    actions = admin.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every live share")
    listing.add_argument("--limit", type=int, default=100)
    for name, text in (("show", "one share"), ("expire", "expire now"), ("delete", "delete")):
        actions.add_parser(name, help=text).add_argument("session_id")

    from agentsync import cli_demo, cli_replay, cli_share, cli_transfer, cli_watch

    cli_share.add_arguments(
        commands.add_parser(
            "share",
            help="create, delete and list shares (this machine's, with their secrets)",
            description="Create a share (its link and secret are kept in a local list), "
            "delete one with its stored secret, or list the shares created here.",
        )
    )
    cli_watch.add_arguments(
        commands.add_parser(
            "watch",
            help="follow a session live in the terminal",
            description="Show a session live: messages, streamed text, tool calls and "
            "results, status, participants. Resumes after network loss or a server restart.",
        )
    )
    cli_replay.add_arguments(
        commands.add_parser(
            "replay",
            help="replay a session with its original timing",
            description="Replay a session from a share link (its export) or an export "
            "file, waiting between events as long as the agent did, divided by --speed.",
        )
    )
    cli_transfer.add_export_arguments(
        commands.add_parser(
            "export",
            help="write a session's export (JSON Lines) to stdout or a file",
            description="Stream a session's export: a header line, then every event.",
        )
    )
    cli_transfer.add_import_arguments(
        commands.add_parser(
            "import",
            help="create a new share from an export file",
            description="Upload an export as a new share (new id, secret and epoch).",
        )
    )
    cli_demo.add_arguments(
        commands.add_parser(
            "demo",
            help="stream a scripted coding-agent session (starts a server if needed)",
            description="Start a local server unless one answers at --server, create a "
            "share, print its link and stream a realistic scripted agent session into it.",
        )
    )
    return parser


def run_admin(args: argparse.Namespace) -> int:
    import httpx

    if not args.admin_key:
        print(
            "agentsync admin: give the operator key with --admin-key or AGENTSYNC_ADMIN_KEY",
            file=sys.stderr,
        )
        return 2
    headers = {"Authorization": f"Bearer {args.admin_key}"}
    base = args.url.rstrip("/") + "/v1/admin/shares"
    try:
        with httpx.Client(headers=headers, timeout=30) as client:
            if args.action == "list":
                after: str | None = None
                rows: list[dict[str, object]] = []
                while True:
                    params: dict[str, str | int] = {"limit": min(args.limit - len(rows), 1000)}
                    if after:
                        params["after"] = after
                    page = _checked(client.get(base, params=params))
                    rows.extend(page["shares"])
                    after = page["next"]
                    if not after or len(rows) >= args.limit:
                        break
                print(f"{'SESSION':24} {'READ':6} {'READERS':>7} {'EXPIRES':20} TITLE")
                for row in rows:
                    expires = row.get("expires_at")
                    when = (
                        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(str(expires)) / 1000))
                        if expires
                        else "never"
                    )
                    print(
                        f"{row['session_id']!s:24} {row['read']!s:6} {row['readers']!s:>7} "
                        f"{when:20} {row['title']}"
                    )
                print(f"({len(rows)} of {page['total']} shares)")
            elif args.action == "show":
                print(json.dumps(_checked(client.get(f"{base}/{args.session_id}")), indent=2))
            elif args.action == "expire":
                _checked(client.post(f"{base}/{args.session_id}/expire"))
                print(f"share {args.session_id} expired")
            else:
                _checked(client.delete(f"{base}/{args.session_id}"))
                print(f"share {args.session_id} deleted")
    except httpx.HTTPError as exc:
        print(f"agentsync admin: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except _Failed as exc:
        print(f"agentsync admin: {exc}", file=sys.stderr)
        return 1
    return 0


class _Failed(Exception):
    pass


def _checked(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            raise _Failed(f"{response.status_code} {error['code']}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            raise _Failed(f"HTTP {response.status_code}: {response.text[:200]}") from None
    return response.json() if response.content else None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from agentsync.server.app import run

        run(config.load(args))
    elif args.command == "admin":
        sys.exit(run_admin(args))
    else:
        sys.exit(run_client_command(args))


def run_client_command(args: argparse.Namespace) -> int:
    """Run a command's ``run(args)``; a CliError becomes a message on stderr and its code."""
    from agentsync.cli_common import EXIT_INTERRUPTED, CliError

    try:
        code: int = args.run(args)
    except CliError as exc:
        print(f"agentsync {args.command}: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `agentsync export URL | head`: the reader left; nothing to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    main(sys.argv[1:])
