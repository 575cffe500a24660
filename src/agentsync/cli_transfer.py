"""``agentsync export URL`` and ``agentsync import FILE``: move a session out of a server
and into one (the same or another) as a new share.

Export streams the server's JSON Lines to stdout or ``-o FILE`` without holding it in
memory; import uploads a file in chunks. Both show a progress bar on stderr when stderr is
a terminal, so ``agentsync export URL > f.jsonl`` stays a clean pipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from agentsync.cli_common import (
    EXIT_USAGE,
    CliError,
    ShareBook,
    checked,
    default_server,
    entry_from_created,
    parse_target,
    print_created,
    state_path,
    unreachable,
)

UPLOAD_CHUNK = 64 * 1024


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="a share link (or session id with --server)")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    parser.add_argument("--token", help="read token of a token share")
    parser.add_argument("--server", help="server for a bare session id [env AGENTSYNC_URL]")
    parser.set_defaults(run=run_export)


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.jsonl", help="an export ('-' for stdin)")
    parser.add_argument("--server", default=default_server(), help="[env AGENTSYNC_URL]")
    parser.add_argument("--read", choices=("public", "token"), help="read access of the copy")
    parser.add_argument("--state", help="the local share list (see `agentsync share --help`)")
    parser.set_defaults(run=run_import)


def _stderr_progress(*columns: object) -> Progress:
    console = Console(stderr=True)
    return Progress(*columns, console=console, disable=not console.is_terminal)  # type: ignore[arg-type]


def run_export(args: argparse.Namespace) -> int:
    target = parse_target(args.url, server=args.server, token=args.token)
    out: IO[bytes]
    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
    progress = _stderr_progress(
        TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
        TimeElapsedColumn(),
    )  # fmt: skip
    try:
        with (
            progress,
            httpx.stream(
                "GET", target.api + "/export", headers=target.headers(), timeout=60
            ) as response,
        ):
            if response.status_code >= 400:
                checked(response)
            task = progress.add_task("export", total=None)
            header_seen = False
            for line in response.iter_lines():
                out.write(line.encode() + b"\n")
                if not header_seen:
                    header_seen = True
                    total = json.loads(line).get("last_seq")
                    progress.update(task, total=total)
                else:
                    progress.advance(task)
        out.flush()
    except httpx.TransportError as exc:
        raise unreachable(target.server, exc) from None
    finally:
        if args.output:
            out.close()
    return 0


def run_import(args: argparse.Namespace) -> int:
    server = args.server.rstrip("/")
    if args.file == "-":
        body = sys.stdin.buffer.read()
    else:
        try:
            body = Path(args.file).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc}", EXIT_USAGE) from None
    first = body.split(b"\n", 1)[0]
    try:
        header = json.loads(first)
        title = str((header.get("session") or {}).get("title") or "")
    except (ValueError, AttributeError):
        raise CliError(f"{args.file} is not an agentsync export", EXIT_USAGE) from None
    progress = _stderr_progress(
        TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
    )  # fmt: skip
    params = {"read": args.read} if args.read else {}
    with progress:
        task = progress.add_task("import", total=len(body))

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), UPLOAD_CHUNK):
                chunk = body[start : start + UPLOAD_CHUNK]
                yield chunk
                progress.advance(task, len(chunk))

        try:
            response = httpx.post(
                f"{server}/v1/sessions/import",
                content=chunks(),
                params=params,
                headers={"Content-Length": str(len(body)), "Content-Type": "application/x-ndjson"},
                timeout=120,
            )
        except httpx.TransportError as exc:
            raise unreachable(server, exc) from None
    created = checked(response)
    book = ShareBook(state_path(args.state))
    book.add(entry_from_created(created, server, title))
    print_created(created, book.path)
    print(f"  imported {created.get('imported', 0)} events")
    return 0
