"""Helpers of the fuzz tests: a known share whose stored state must not change."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Share:
    session_id: str
    secret: str
    read_token: str | None
    epoch: str


def create_share(client: httpx.Client, **body: Any) -> Share:
    resp = client.post("/v1/shares", json=body)
    assert resp.status_code == 201, resp.text
    out = resp.json()
    return Share(out["session_id"], out["secret"], out.get("read_token"), out["epoch"])


def seed(client: httpx.Client, share: Share, n: int = 5) -> None:
    """A small conversation: a message, deltas, a tool call and result, a status."""
    events: list[dict[str, Any]] = [
        {"id": "m1", "type": "message", "data": {"id": "msg-1", "role": "user", "content": "hi"}},
        {"id": "m2", "type": "message", "data": {"id": "msg-2", "role": "assistant"}},
    ]
    events += [
        {"id": f"d{i}", "type": "message.delta", "data": {"id": "msg-2", "delta": f"tok{i} "}}
        for i in range(n)
    ]
    events += [
        {
            "id": "t1",
            "type": "tool_call",
            "data": {"messageId": "msg-2", "id": "call-1", "name": "ls", "arguments": {}},
        },
        {
            "id": "t2",
            "type": "tool_result",
            "data": {"messageId": "msg-2", "toolCallId": "call-1", "output": "a b"},
        },
        {"id": "s1", "type": "status", "data": {"status": "idle"}},
        {"id": "u1", "type": "session.update", "data": {"title": "fuzz target"}},
    ]
    resp = client.post(
        f"/v1/sessions/{share.session_id}/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {share.secret}"},
    )
    assert resp.status_code == 200, resp.text


def stored_state(srv: Any, client: httpx.Client, share: Share) -> dict[str, Any]:
    """Everything stored of a share: its rows in the SQLite file and what the API serves."""
    conn = sqlite3.connect(f"file:{srv.data_dir / 'agentsync.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = {
            table: conn.execute(
                f"SELECT * FROM {table} WHERE {key} = ? ORDER BY 1, 2", (share.session_id,)
            ).fetchall()
            for table, key in (("shares", "id"), ("events", "session_id"))
        }
    finally:
        conn.close()
    token = share.read_token or share.secret
    headers = {"Authorization": f"Bearer {token}"}
    export = client.get(f"/v1/sessions/{share.session_id}/export", headers=headers)
    assert export.status_code == 200, export.text
    snap = client.get(f"/v1/sessions/{share.session_id}", headers=headers)
    assert snap.status_code == 200, snap.text
    return {"rows": rows, "export": export.text, "snapshot": snap.json()}
