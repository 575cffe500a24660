"""``agentsync replay`` through its real output in a pseudo-terminal."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ._support import PtyProcess, run_cli

T0 = 1_700_000_000_000


def _export_file(path: Path) -> Path:
    """Four messages one second apart, then one a minute later (a gap --max-gap caps)."""
    header = {"format": "agentsync.export/1", "session": {"title": "recorded"}, "last_seq": 5}
    offsets = [0, 1000, 2000, 3000, 63000]
    events = [
        {"seq": i + 1, "id": f"e{i}", "type": "message", "ts": T0 + offset,
         "data": {"id": f"m{i}", "role": "user" if i % 2 == 0 else "assistant",
                  "content": f"message number {i}"}}
        for i, offset in enumerate(offsets)
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in [header, *events]) + "\n")
    return path


def test_replay_keeps_order_and_timing(pty_cli: Callable[..., PtyProcess], tmp_path: Path) -> None:
    source = _export_file(tmp_path / "session.jsonl")
    replay = pty_cli("replay", str(source), "--speed", "4", "--max-gap", "0.5")
    replay.wait_for("message number 0", timeout=10)
    started = time.monotonic()
    replay.wait_for("message number 4", timeout=10)
    elapsed = time.monotonic() - started
    assert replay.wait() == 0
    # three 1 s gaps at 4x (0.75 s) plus the minute-long one capped at 0.5 s
    assert 1.1 <= elapsed <= 2.2, elapsed
    screen = replay.text
    positions = [screen.index(f"message number {i}") for i in range(5)]
    assert positions == sorted(positions)
    assert "recorded" in screen and "replayed 5 events" in screen


def test_replay_from_a_share_link(server: Any, home: Path) -> None:
    share = httpx.post(f"{server.url}/v1/shares", json={"title": "t"}).json()
    httpx.post(
        f"{server.url}/v1/sessions/{share['session_id']}/events",
        json={"events": [
            {"type": "message", "data": {"id": "u1", "role": "user", "content": "one"}},
            {"type": "message", "data": {"id": "a1", "role": "assistant", "content": "two"}},
        ]},
        headers={"Authorization": f"Bearer {share['secret']}"},
    ).raise_for_status()  # fmt: skip
    result = run_cli("replay", share["share_url"], "--speed", "100", home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.index("one") < result.stdout.index("two")


def test_replay_of_a_missing_file_is_a_usage_error(home: Path) -> None:
    result = run_cli("replay", "/nonexistent/x.jsonl", home=home)
    assert result.returncode == 2 and "/nonexistent/x.jsonl" in result.stderr
