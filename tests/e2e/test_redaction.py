"""Credentials are masked before they are stored, end to end, and can be kept on demand."""

from __future__ import annotations

from typing import Any

from ._support import append, client_for, create_share, db_rows, message

# Built by concatenation so that secret scanners do not flag this file.
KEY = "sk-ant-" + "api03-" + "Zq8xR2vN7pLm4Kt9Wb3Yc6Hd1Jf5Gs0A"
ENV_LINE = "DB_" + "PASSWORD=" + "p4ssW0rd!xyz"


async def test_secrets_are_masked_before_they_are_stored(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0)
    async with client_for(srv) as http:
        share = await create_share(http)
        sid = share["session_id"]
        text = f"my key is {KEY}\n{ENV_LINE}\nand this stays: commit 3f2a9c1b7e"
        await append(http, share, [message("m1", text)])
        content = (await http.get(f"/v1/sessions/{sid}")).json()["messages"][0]["content"]
        assert KEY not in content and "p4ssW0rd" not in content
        assert "[REDACTED:" in content and "commit 3f2a9c1b7e" in content
        stored = db_rows(srv, "SELECT data FROM events WHERE session_id = ?", sid)
        assert all(KEY.encode() not in row[0] for row in stored)
        metrics = (await http.get("/metrics")).text
        assert 'agentsync_redactions_total{kind="anthropic_key"} 1.0' in metrics


async def test_redaction_can_be_turned_off(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, redact=False)
    async with client_for(srv) as http:
        share = await create_share(http)
        await append(http, share, [message("m1", KEY)])
        snap = (await http.get(f"/v1/sessions/{share['session_id']}")).json()
        assert snap["messages"][0]["content"] == KEY
