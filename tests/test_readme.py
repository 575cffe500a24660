"""The README's example runs as written, against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

README = Path(__file__).resolve().parent.parent / "README.md"


def example() -> str:
    text = README.read_text()
    section = text.split("## Share your agent's session", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_example_is_short() -> None:
    lines = [line for line in example().splitlines() if line.strip()]
    assert len(lines) <= 15


def test_the_readme_example_streams_a_session(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(rate_limit=0)
    code = example().replace("http://127.0.0.1:8787", srv.url)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    url = run.stdout.split("watch it live:", 1)[1].strip()
    session_id = url.rsplit("/", 1)[1]
    snapshot = httpx.get(f"{srv.url}/v1/sessions/{session_id}", timeout=10).json()
    assert snapshot["session"]["title"] == "Fix the flaky test"
    assert snapshot["status"] == "idle"
    user, assistant = snapshot["messages"]
    assert user["content"] == "Why does test_sync fail on CI?"
    assert assistant["content"] == "Looking at the test…"
    assert assistant["toolCalls"][0]["name"] == "run_tests"
    assert assistant["toolResults"][0]["output"] == "1 failed: timeout after 5s"
