"""``agentsync replay URL|FILE.jsonl``: play a recorded session back with its timing.

The source is an export (a header line, then every event), read from the server's
``/export`` or from a file. Each event waits for the gap between its ``ts`` and the
previous one, divided by ``--speed`` and capped at ``--max-gap`` seconds, so a session
that sat idle for an hour does not replay an hour of nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from agentsync.cli_common import EXIT_USAGE, CliError, checked, parse_target, unreachable
from agentsync.cli_view import TerminalView, Transcript


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="URL|FILE.jsonl", help="a share link or export file")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed (default 1)")
    parser.add_argument(
        "--max-gap", type=float, default=2.0, metavar="SECONDS",
        help="longest wait between two events, after --speed (default 2)",
    )  # fmt: skip
    parser.add_argument("--token", help="read token of a token share")
    parser.add_argument("--server", help="server for a bare session id [env AGENTSYNC_URL]")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.speed <= 0 or args.max_gap < 0:
        raise CliError("--speed must be positive and --max-gap not negative", EXIT_USAGE)
    header, events = load(args.source, server=args.server, token=args.token)
    transcript = Transcript()
    title = (header.get("session") or {}).get("title")
    if title:
        transcript.state.info["title"] = title
    console = Console(highlight=False)
    started = time.monotonic()
    with TerminalView(console, transcript) as view:
        previous_ts: int | None = None
        for count, event in enumerate(events, 1):
            if previous_ts is not None:
                gap = max(0.0, (event["ts"] - previous_ts) / 1000) / args.speed
                time.sleep(min(gap, args.max_gap))
            previous_ts = event["ts"]
            transcript.apply(event)
            view.extra = f"replay {count} events · {args.speed:g}x speed"
            view.update()
        view.extra = f"replayed {transcript.seq} events in {time.monotonic() - started:.1f}s"
    return 0


def load(
    source: str, *, server: str | None, token: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The export's header and its events, from a file or a share's ``/export``."""
    path = Path(source)
    if path.exists() or source.endswith(".jsonl"):
        try:
            return _parse(path.read_text().splitlines(), source)
        except OSError as exc:
            raise CliError(f"cannot read {source}: {exc}", EXIT_USAGE) from None
    target = parse_target(source, server=server, token=token)
    try:
        response = httpx.get(target.api + "/export", headers=target.headers(), timeout=60)
    except httpx.TransportError as exc:
        raise unreachable(target.server, exc) from None
    if response.status_code >= 400:
        checked(response)
    return _parse(response.text.splitlines(), source)


def _parse(lines: list[str], source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = iter(line for line in lines if line.strip())
    try:
        header = json.loads(next(rows))
        events = list(_events(rows))
    except (StopIteration, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{source} is not an agentsync export ({exc})", EXIT_USAGE) from None
    if not isinstance(header, dict) or "format" not in header:
        raise CliError(f"{source} has no export header line", EXIT_USAGE)
    return header, events


def _events(rows: Iterator[str]) -> Iterator[dict[str, Any]]:
    for row in rows:
        event = json.loads(row)
        if not (isinstance(event.get("seq"), int) and isinstance(event.get("ts"), int)):
            raise ValueError(f"not an event line: {row[:80]}")
        yield event
