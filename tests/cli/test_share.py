"""``agentsync share create|list|delete`` against a real server, with a temporary state."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx

from ._support import run_cli


def test_create_list_delete(server: Any, home: Path) -> None:
    created = run_cli("share", "create", "--server", server.url, "--title", "flaky", home=home)
    assert created.returncode == 0, created.stderr
    url = created.stdout.splitlines()[0]
    assert url.startswith(server.url + "/share/")
    session_id = url.rsplit("/", 1)[1]
    state = home / "shares.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600  # it holds secrets
    [entry] = json.loads(state.read_text())["shares"]
    assert entry["session_id"] == session_id and entry["title"] == "flaky"
    assert entry["secret"] in created.stdout

    token = run_cli(
        "share", "create", "--server", server.url, "--read", "token", "--ttl", "60", home=home
    )
    assert token.returncode == 0 and "token " in token.stdout

    listed = run_cli("share", "list", home=home)
    assert listed.returncode == 0
    assert url in listed.stdout and "flaky" in listed.stdout
    assert len(listed.stdout.strip().splitlines()) == 3  # header and two shares

    deleted = run_cli("share", "delete", url, home=home)
    assert deleted.returncode == 0, deleted.stderr
    assert httpx.get(f"{server.url}/v1/sessions/{session_id}").status_code in (404, 410)
    assert url not in run_cli("share", "list", home=home).stdout


def test_list_marks_expired(home: Path) -> None:
    entry = {
        "session_id": "old", "share_url": "http://x/share/old", "server": "http://x",
        "secret": "s", "title": "gone", "created_at": 1, "expires_at": 2,
    }  # fmt: skip
    (home / "shares.json").write_text(json.dumps({"shares": [entry]}))
    listed = run_cli("share", "list", home=home)
    assert "EXPIRED" in listed.stdout and "http://x/share/old" in listed.stdout


def test_delete_without_secret_is_a_usage_error(server: Any, home: Path) -> None:
    result = run_cli("share", "delete", f"{server.url}/share/nope", home=home)
    assert result.returncode == 2
    assert "--secret" in result.stderr


def test_unreachable_server_names_the_url_and_the_fix(home: Path) -> None:
    result = run_cli("share", "create", "--server", "http://127.0.0.1:9", home=home)
    assert result.returncode == 1
    assert "http://127.0.0.1:9" in result.stderr and "agentsync serve" in result.stderr
    assert "Traceback" not in result.stderr
