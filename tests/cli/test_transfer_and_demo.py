"""``agentsync export``/``import`` round trip and ``agentsync demo --fast``."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx

from ._support import run_cli


def _snapshot(server_url: str, session_id: str) -> Any:
    response = httpx.get(f"{server_url}/v1/sessions/{session_id}", timeout=10)
    response.raise_for_status()
    return response.json()


def _demo(server: Any, home: Path) -> str:
    result = run_cli("demo", "--fast", "--server", server.url, home=home)
    assert result.returncode == 0, result.stderr
    url = next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("viewer"))
    return url.rsplit("/", 1)[1]


def test_demo_streams_a_realistic_session(server: Any, home: Path) -> None:
    snapshot = _snapshot(server.url, _demo(server, home))
    messages = snapshot["messages"]
    assert messages[0]["role"] == "user" and "test_parse_date" in messages[0]["content"]
    assistant = [m for m in messages if m["role"] == "assistant"]
    assert len(assistant) >= 2 and all(m["content"] for m in assistant)
    calls = [c["name"] for m in assistant for c in m["toolCalls"]]
    assert {"read_file", "run_tests", "edit_file"} <= set(calls)
    results = [r for m in assistant for r in m["toolResults"]]
    assert len(results) == len(calls)
    assert sum(1 for r in results if r.get("error")) == 1
    assert snapshot["status"] == "idle"
    assert snapshot["session"]["title"].startswith("demo:")
    # token-by-token: far more events than messages
    assert snapshot["seq"] > 50
    assert "agentsync demo" in run_cli("share", "list", home=home).stdout


def test_export_import_round_trip(server: Any, home: Path, tmp_path: Path) -> None:
    session_id = _demo(server, home)
    export = tmp_path / "f.jsonl"
    exported = run_cli("export", f"{server.url}/share/{session_id}", "-o", str(export), home=home)
    assert exported.returncode == 0, exported.stderr
    lines = export.read_text().splitlines()
    assert json.loads(lines[0])["format"] == "agentsync.export/1"

    piped = run_cli("export", f"{server.url}/share/{session_id}", home=home)
    assert piped.stdout.splitlines() == lines  # stdout carries the export and nothing else

    imported = run_cli("import", str(export), "--server", server.url, home=home)
    assert imported.returncode == 0, imported.stderr
    new_url = imported.stdout.splitlines()[0]
    new_id = new_url.rsplit("/", 1)[1]
    assert new_id != session_id
    original, copy = _snapshot(server.url, session_id), _snapshot(server.url, new_id)
    assert copy["messages"] == original["messages"]
    assert copy["seq"] == original["seq"] == len(lines) - 1
    assert new_url in run_cli("share", "list", home=home).stdout


def test_import_rejects_a_file_that_is_not_an_export(
    server: Any, home: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    result = run_cli("import", str(bad), "--server", server.url, home=home)
    assert result.returncode == 2 and "not an agentsync export" in result.stderr


def test_demo_starts_and_stops_its_own_server_when_none_answers(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = run_cli("demo", "--fast", "--server", url, home=home, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"no server at {url}: starting one" in result.stdout
    assert "streamed" in result.stdout
    try:
        httpx.get(url + "/healthz", timeout=1)
        raise AssertionError("the demo left its server running without --keep")
    except httpx.TransportError:
        pass
