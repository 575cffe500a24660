"""``agentsync demo``: see agentsync work in one command.

Starts ``agentsync serve`` when nothing answers ``/healthz`` at ``--server`` (on loopback
only), creates a share, prints its link, and streams a scripted coding-agent session
into it over HTTP: a prompt, token-by-token assistant text, tool calls with results (one
of them failing), status changes and a final answer. The script is plain data
(:func:`script`), so it is the same at every speed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from agentsync.cli_common import (
    CliError,
    ShareBook,
    checked,
    default_server,
    entry_from_created,
    state_path,
    unreachable,
)
from agentsync.protocol import new_event_id

READY_TIMEOUT_S = 15.0
TOKEN_DELAY_S = 0.035


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=default_server(), help="[env AGENTSYNC_URL]")
    parser.add_argument("--speed", type=float, default=1.0, help="faster (>1) or slower")
    parser.add_argument("--fast", action="store_true", help="no pauses at all (tests)")
    parser.add_argument(
        "--keep", action="store_true",
        help="leave a server this command started running (data in ./agentsync-data)",
    )  # fmt: skip
    parser.add_argument("--state", help="the local share list (see `agentsync share --help`)")
    parser.set_defaults(run=run)


# --- the script ---------------------------------------------------------------------------


@dataclass
class Step:
    """An event to publish after waiting ``pause`` seconds (at speed 1)."""

    type: str
    data: dict[str, Any]
    pause: float = 0.0
    id: str = field(default_factory=new_event_id)


TEST_FILE = """\
def test_parse_date_handles_timezones():
    assert parse_date("2024-03-10T02:30:00", tz="America/New_York").hour == 3
"""

FAILING_RUN = """\
============================= test session starts ==============================
tests/test_dates.py F                                                    [100%]
_______________________ test_parse_date_handles_timezones ______________________
>       assert parse_date("2024-03-10T02:30:00", tz="America/New_York").hour == 3
E       ValueError: non-existent time 2024-03-10 02:30:00 in America/New_York
src/dates.py:14: ValueError
============================== 1 failed in 0.12s ==============================="""

PASSING_RUN = """\
tests/test_dates.py ....                                                 [100%]
============================== 4 passed in 0.09s ==============================="""

DIFF = """\
-    return zone.localize(naive)
+    # 02:30 does not exist on a spring-forward night: move forward, like the clock.
+    return zone.localize(naive, is_dst=None) if zone.utcoffset(naive) else \\
+        zone.normalize(zone.localize(naive, is_dst=True))"""


def _tokens(text: str) -> list[str]:
    """Split like a model streams: words with their trailing space, punctuation apart."""
    return re.findall(r"\w+\s*|[^\w\s]+\s*|\s+", text)


def _say(message_id: str, text: str) -> Iterator[Step]:
    yield Step("message", {"id": message_id, "role": "assistant", "content": ""}, 0.3)
    for token in _tokens(text):
        yield Step("message.delta", {"id": message_id, "delta": token}, TOKEN_DELAY_S)


def _tool(
    message_id: str, call_id: str, name: str, arguments: dict[str, Any],
    output: str, seconds: float, error: str | None = None,
) -> Iterator[Step]:  # fmt: skip
    yield Step(
        "tool_call",
        {"messageId": message_id, "id": call_id, "name": name, "arguments": arguments},
        0.4,
    )
    result: dict[str, Any] = {"messageId": message_id, "toolCallId": call_id, "output": output}
    if error:
        result["error"] = error
    yield Step("tool_result", result, seconds)


def script() -> Iterator[Step]:
    """A short, realistic session: fix a failing timezone test."""
    yield Step("session.update", {"title": "demo: fix the DST bug in parse_date"})
    yield Step(
        "message",
        {
            "id": "u1",
            "role": "user",
            "content": "test_parse_date_handles_timezones fails since the DST change. "
            "Can you find out why and fix it?",
        },
        0.5,
    )
    yield Step("status", {"status": "thinking"}, 0.8)
    yield from _say(
        "a1",
        "Let me look at the failing test and the code it exercises, then run it to "
        "see the actual error.",
    )
    yield Step("status", {"status": "running tools"}, 0.2)
    yield from _tool("a1", "t1", "read_file", {"path": "tests/test_dates.py"}, TEST_FILE, 0.6)
    yield from _tool(
        "a1", "t2", "run_tests", {"args": ["-k", "parse_date"]}, FAILING_RUN, 1.5,
        error="exit status 1: 1 test failed",
    )  # fmt: skip
    yield Step("status", {"status": "thinking"}, 0.3)
    yield from _say(
        "a2",
        "The test asks for 02:30 on 10 March 2024 in New York, a time that does not "
        "exist: clocks jump from 02:00 to 03:00. `parse_date` calls `localize` without "
        "`is_dst`, which raises instead of moving forward. I'll make it follow the clock.",
    )
    yield Step("status", {"status": "editing"}, 0.2)
    yield from _tool(
        "a2", "t3", "edit_file", {"path": "src/dates.py", "diff": DIFF}, "applied 1 hunk", 0.5
    )
    yield from _tool("a2", "t4", "run_tests", {"args": ["-k", "parse_date"]}, PASSING_RUN, 1.2)
    yield Step("status", {"status": "writing"}, 0.2)
    yield from _say(
        "a3",
        "Fixed. Non-existent local times on a spring-forward night now move forward to "
        "the first valid time (02:30 → 03:30 EDT), which is what the test expects; all "
        "four date tests pass.",
    )
    yield Step("status", {"status": "idle"}, 0.3)


# --- running it ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    server_url = args.server.rstrip("/")
    speed = float("inf") if args.fast else args.speed
    if speed <= 0:
        raise CliError("--speed must be positive", 2)
    local = None if healthy(server_url) else LocalServer.start(server_url, keep=args.keep)
    try:
        with httpx.Client(base_url=server_url, timeout=30) as client:
            share = checked(client.post("/v1/shares", json={"title": "agentsync demo"}))
            book = ShareBook(state_path(args.state))
            book.add(entry_from_created(share, server_url, "agentsync demo"))
            print(f"viewer:  {share['share_url']}")
            print(f"watch:   agentsync watch {share['share_url']}")
            print(f"secret:  {share['secret']}", flush=True)
            count = stream(client, share, speed)
        print(f"streamed {count} events; the session is idle", flush=True)
        if local is not None and not args.keep and not args.fast:
            print("the demo server keeps running so the link works; Ctrl-C stops it", flush=True)
            local.wait()
    except httpx.TransportError as exc:
        raise unreachable(server_url, exc) from None
    finally:
        if local is not None:
            local.stop()
    return 0


def stream(client: httpx.Client, share: dict[str, Any], speed: float) -> int:
    """Publish the script one event per request, as an agent streaming tokens would."""
    path = f"/v1/sessions/{share['session_id']}/events"
    headers = {"Authorization": f"Bearer {share['secret']}"}
    count = 0
    for step in script():
        if step.pause and speed != float("inf"):
            time.sleep(step.pause / speed)
        event = {"id": step.id, "type": step.type, "data": step.data}
        while True:
            response = client.post(path, json={"events": [event]}, headers=headers)
            if response.status_code != 429:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        checked(response)
        count += 1
    return count


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class LocalServer:
    """An ``agentsync serve`` child process for the demo; stopped on exit unless kept."""

    def __init__(self, proc: subprocess.Popen[bytes], data: Path, temporary: bool) -> None:
        self.proc = proc
        self.data = data
        self.temporary = temporary
        self.kept = False

    @classmethod
    def start(cls, url: str, *, keep: bool) -> LocalServer:
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.scheme != "http":
            raise CliError(
                f"no agentsync server answers at {url}, and the demo only starts one on "
                "loopback. Start it there with `agentsync serve`, or drop --server."
            )
        port = parts.port or 80
        data = Path("agentsync-data") if keep else Path(tempfile.mkdtemp(prefix="agentsync-"))
        cmd = [
            sys.executable, "-m", "agentsync.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data", str(data), "--log-level", "warning",
        ]  # fmt: skip
        print(f"no server at {url}: starting one (data in {data})", flush=True)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=keep)
        server = cls(proc, data, temporary=not keep)
        server.kept = keep
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.kept = False
                server.stop()
                raise CliError(f"could not start a server on {url} (see its output above)")
            time.sleep(0.1)
        return server

    def wait(self) -> None:
        self.proc.wait()

    def stop(self) -> None:
        if self.kept:
            print(f"server left running (pid {self.proc.pid}); stop it with kill {self.proc.pid}")
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.temporary:
            shutil.rmtree(self.data, ignore_errors=True)
