"""``agentsync watch URL``: follow a session live in the terminal.

One WebSocket reader. The first hello carries no position, so the server answers with the
snapshot; every later hello carries ``(epoch, since)`` so the server resumes with exactly
the events missed. Close codes decide what happens after a drop (README, "WebSocket
protocol"): 4000-4499 and network failures reconnect with exponential backoff and full
jitter; 4500-4999 end the command with the server's reason and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from typing import Any

import httpx
import websockets
from rich.console import Console
from rich.text import Text
from websockets.asyncio.client import ClientConnection, connect

from agentsync.cli_common import Target, checked, parse_target, unreachable
from agentsync.cli_view import TerminalView, Transcript
from agentsync.protocol import is_resumable

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="a share link (or session id with --server)")
    parser.add_argument("--token", help="read token (or secret) of a token share")
    parser.add_argument("--server", help="server for a bare session id [env AGENTSYNC_URL]")
    parser.add_argument("--name", help="show yourself to the other participants as NAME")
    parser.add_argument("--once", action="store_true", help="print the current transcript and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = parse_target(args.url, server=args.server, token=args.token)
    console = Console(highlight=False)
    if args.once:
        return print_once(target, console)
    watcher = Watcher(target, console, name=args.name)
    try:
        return asyncio.run(watcher.run())
    except KeyboardInterrupt:
        return 0


def print_once(target: Target, console: Console) -> int:
    try:
        snapshot = checked(httpx.get(target.api, headers=target.headers(), timeout=30))
    except httpx.TransportError as exc:
        raise unreachable(target.server, exc) from None
    transcript = Transcript()
    transcript.load(snapshot)
    with TerminalView(console, transcript):
        pass
    return 0


class Terminal(Exception):
    """The server closed with a do-not-retry code."""


class Watcher:
    def __init__(self, target: Target, console: Console, *, name: str | None) -> None:
        self.target = target
        self.console = console
        self.name = name
        self.transcript = Transcript()
        self.view = TerminalView(console, self.transcript)
        self.greeted = False  # has any connection ever been answered
        self._healthy = False  # has the current connection delivered anything

    async def run(self) -> int:
        attempt = 0
        with self.view:
            self.view.connection = "connecting"
            self.view.update()
            while True:
                try:
                    reason = await self._session_once()
                except Terminal as exc:
                    self.view.close()
                    self.console.print(Text(f"watch ended: {exc}", style="red"))
                    return 1
                if self._healthy:
                    attempt = 0
                attempt += 1
                # Full jitter: readers dropped together by a restart come back spread out.
                delay = random.uniform(0, min(MAX_RETRY_S, FIRST_RETRY_S * 2**attempt))
                self.view.connection = f"{reason}; reconnecting in {delay:.1f}s"
                self.view.update()
                await asyncio.sleep(delay)
                self.view.connection = "reconnecting"
                self.view.update()

    async def _session_once(self) -> str:
        """One connection from hello to close; returns why it ended if it may resume."""
        self._healthy = False
        try:
            ws = await connect(self.target.ws, open_timeout=10, max_size=None, ping_interval=20)
        except websockets.InvalidStatus as exc:
            raise Terminal(
                f"{self.target.ws} refused the WebSocket (HTTP {exc.response.status_code})"
            ) from None
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            if not self.greeted:
                raise unreachable(self.target.server, exc) from None
            return f"server unreachable ({type(exc).__name__})"
        try:
            await self._hello(ws)
            async for raw in ws:
                if self._receive(json.loads(raw)):
                    self._healthy = True
        except websockets.ConnectionClosed:
            pass
        finally:
            await ws.close()
        code, why = ws.close_code, ws.close_reason or ""
        if code is not None and 4500 <= code < 5000:
            raise Terminal(f"the server closed the connection with {code} ({why})")
        if code is not None and code != 1000 and not is_resumable(code):
            raise Terminal(f"the connection closed with {code} ({why})")
        return f"disconnected ({code or 'connection lost'})"

    async def _hello(self, ws: ClientConnection) -> None:
        hello: dict[str, Any] = {"op": "hello"}
        if self.transcript.epoch is not None:
            hello["since"] = self.transcript.seq
            hello["epoch"] = self.transcript.epoch
        if self.target.token:
            hello["token"] = self.target.token
        if self.name:
            hello["name"] = self.name
        await ws.send(json.dumps(hello))

    def _receive(self, frame: dict[str, Any]) -> bool:
        """Fold one server frame; True when it proves the connection is healthy."""
        op = frame.get("op")
        if "participants" in frame:
            self.transcript.participants = frame["participants"]
        if op == "init":
            self.transcript.load(frame["snapshot"])
        elif op == "events":
            for event in frame.get("events", []):
                self.transcript.apply(event)
            if frame.get("epoch"):
                self.transcript.epoch = frame["epoch"]
        elif op == "error":
            self.view.note(f"server error: {frame.get('code')}: {frame.get('message')}", "red")
        if op in ("init", "events"):
            self.greeted = True
            self.view.connection = ""
        self.view.update()
        return op in ("init", "events")
