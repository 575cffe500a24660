"""``agentsync watch`` through its real output in a pseudo-terminal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ._support import PtyProcess, run_cli


def _share(server: Any) -> tuple[str, dict[str, str]]:
    share = httpx.post(f"{server.url}/v1/shares", json={"title": "live one"}).json()
    return share["share_url"], share


def _post(server: Any, share: dict[str, str], *events: dict[str, Any]) -> None:
    response = httpx.post(
        f"{server.url}/v1/sessions/{share['session_id']}/events",
        json={"events": list(events)},
        headers={"Authorization": f"Bearer {share['secret']}"},
        timeout=10,
    )
    response.raise_for_status()


def _say(message_id: str, role: str, content: str) -> dict[str, Any]:
    return {"type": "message", "data": {"id": message_id, "role": role, "content": content}}


def test_watch_shows_live_events_and_survives_a_server_restart(
    server: Any, pty_cli: Callable[..., PtyProcess]
) -> None:
    url, share = _share(server)
    _post(server, share, _say("u1", "user", "first question"))
    watch = pty_cli("watch", url, "--name", "tester")
    watch.wait_for("first question")
    watch.wait_for("live one")

    _post(
        server, share,
        _say("a1", "assistant", ""),
        {"type": "message.delta", "data": {"id": "a1", "delta": "streamed answer"}},
        {"type": "tool_call", "data": {"messageId": "a1", "id": "t1", "name": "run_tests",
                                       "arguments": {"k": "dates"}}},
        {"type": "tool_result", "data": {"messageId": "a1", "toolCallId": "t1",
                                         "output": "1 failed", "error": "exit 1"}},
        {"type": "status", "data": {"status": "thinking"}},
    )  # fmt: skip
    assert watch.wait_for("streamed answer", timeout=2.0) < 2.0
    watch.wait_for("run_tests")
    watch.wait_for("error: exit 1")
    watch.wait_for("thinking")
    watch.wait_for("tester")  # presence: it sees itself among the participants

    server.kill()  # SIGKILL: the WebSocket drops without a close frame
    time.sleep(0.5)
    server.restart()
    _post(server, share, _say("u2", "user", "after the restart"))
    watch.wait_for("after the restart", timeout=15.0)
    assert watch.proc.poll() is None
    screen = watch.text
    assert "reconnecting" in screen  # it noticed the drop and came back by itself
    assert screen.index("streamed answer") < screen.index("after the restart")
    assert "(updated)" not in screen  # resumed in place: nothing folded twice


def test_watch_exits_nonzero_when_the_share_is_deleted(
    server: Any, pty_cli: Callable[..., PtyProcess]
) -> None:
    url, share = _share(server)
    watch = pty_cli("watch", url)
    _post(server, share, _say("u1", "user", "hello"))
    watch.wait_for("hello")
    httpx.delete(
        f"{server.url}/v1/shares/{share['session_id']}",
        headers={"Authorization": f"Bearer {share['secret']}"},
    ).raise_for_status()
    assert watch.wait(10) == 1
    assert "4510" in watch.text


def test_watch_once_prints_the_transcript(server: Any, home: Path) -> None:
    url, share = _share(server)
    _post(server, share, _say("u1", "user", "just print me"))
    result = run_cli("watch", url, "--once", home=home)
    assert result.returncode == 0, result.stderr
    assert "just print me" in result.stdout and "live one" in result.stdout


def test_watch_unknown_session_and_unreachable_server(server: Any, home: Path) -> None:
    missing = run_cli("watch", f"{server.url}/share/nope", home=home, timeout=20)
    assert missing.returncode == 1 and "4504" in missing.stdout + missing.stderr
    down = run_cli("watch", "http://127.0.0.1:9/share/x", home=home)
    assert down.returncode == 1 and "agentsync serve" in down.stderr
