"""Export then import: a new share whose snapshot equals the original's, with a new epoch;
the export is the log in order (SPEC §2.1 on the export path)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from ._support import (
    append,
    assert_error,
    bearer,
    create_share,
    db_rows,
    delta,
    ids_of,
    message,
    read_log,
    seqs_of,
    status,
)


async def _rich_session(http: httpx.AsyncClient, **create: Any) -> dict[str, Any]:
    share = await create_share(http, title="original title", **create)
    await append(
        http,
        share,
        [
            message("u1", "list the files", role="user"),
            status("thinking"),
            message("a1", "", role="assistant"),
            delta("a1", "Let me "),
            delta("a1", "look."),
            {
                "type": "tool_call",
                "data": {"messageId": "a1", "id": "c1", "name": "ls", "arguments": {"path": "."}},
            },
            {
                "type": "tool_result",
                "data": {"messageId": "a1", "toolCallId": "c1", "output": "README.md\nsrc"},
            },
            {
                "type": "tool_call",
                "data": {"messageId": "a1", "id": "c1", "name": "ls", "arguments": {"path": "src"}},
            },
            {"type": "session.update", "data": {"title": "renamed", "metadata": {"model": "x-1"}}},
        ],
    )
    await append(
        http,
        share,
        [
            message("a2", "Done: two entries. ünïcødé ✓", role="assistant"),
            message("u1", "list the files, please", role="user"),  # replaces u1
            status("idle"),
        ],
    )
    return share


async def test_export_import_round_trip(server: Any, http: httpx.AsyncClient) -> None:
    share = await _rich_session(http)
    sid = share["session_id"]
    original = (await http.get(f"/v1/sessions/{sid}")).json()
    log = await read_log(http, sid)
    assert original["seq"] == 12 and len(log) == 12

    resp = await http.get(f"/v1/sessions/{sid}/export")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.content.splitlines() if line.strip()]
    header, events = lines[0], lines[1:]
    assert header["format"] == "agentsync.export/1"
    assert header["last_seq"] == 12 and header["epoch"] == share["epoch"]
    assert events == log, "the export differs from the log"

    imported = await http.post("/v1/sessions/import", content=resp.content)
    assert imported.status_code == 201, imported.text
    new = imported.json()
    assert new["imported"] == 12
    assert new["session_id"] != sid and new["secret"] != share["secret"]
    assert new["epoch"] != share["epoch"], "a rebuilt log must have a new epoch"
    assert new["share_url"].endswith(new["session_id"])

    copy = (await http.get(f"/v1/sessions/{new['session_id']}")).json()
    assert copy["messages"] == original["messages"]
    assert copy["status"] == original["status"] == "idle"
    assert copy["seq"] == original["seq"]
    assert copy["session"]["title"] == original["session"]["title"] == "renamed"
    assert copy["session"]["metadata"] == original["session"]["metadata"] == {"model": "x-1"}
    copied_log = await read_log(http, new["session_id"])
    assert seqs_of(copied_log) == seqs_of(log)
    assert ids_of(copied_log) == ids_of(log)
    assert [(e["type"], e["data"], e["ts"]) for e in copied_log] == [
        (e["type"], e["data"], e["ts"]) for e in log
    ]

    # the copy is a share of its own: its secret writes to it, not to the original
    r = await append(
        http, {"session_id": new["session_id"], "secret": new["secret"]}, [status("thinking")]
    )
    assert r["seqs"] == [13]
    assert_error(
        await http.post(
            f"/v1/sessions/{sid}/events",
            headers=bearer(new["secret"]),
            json={"events": [status("x")]},
        ),
        403,
    )
    assert (await http.get(f"/v1/sessions/{sid}")).json() == original
    # and the copy's export is its log: the original's events, then the new one
    again = await http.get(f"/v1/sessions/{new['session_id']}/export")
    again_events = [json.loads(x) for x in again.content.splitlines()[1:]]
    assert seqs_of(again_events) == list(range(1, 14))
    assert ids_of(again_events)[:12] == ids_of(log)


async def test_token_share_export_and_import_as_token(server: Any, http: httpx.AsyncClient) -> None:
    share = await _rich_session(http, read="token")
    sid = share["session_id"]
    assert_error(await http.get(f"/v1/sessions/{sid}/export"), 401)
    resp = await http.get(f"/v1/sessions/{sid}/export", headers=bearer(share["read_token"]))
    assert resp.status_code == 200
    imported = await http.post(
        "/v1/sessions/import", params={"read": "token"}, content=resp.content
    )
    assert imported.status_code == 201
    new = imported.json()
    assert new["read"] == "token" and new["read_token"]
    assert_error(await http.get(f"/v1/sessions/{new['session_id']}"), 401)
    copy = await http.get(f"/v1/sessions/{new['session_id']}", headers=bearer(new["read_token"]))
    original = await http.get(f"/v1/sessions/{sid}", headers=bearer(share["read_token"]))
    assert copy.json()["messages"] == original.json()["messages"]


async def test_bad_imports_create_nothing(server: Any, http: httpx.AsyncClient) -> None:
    share = await _rich_session(http)
    export = (await http.get(f"/v1/sessions/{share['session_id']}/export")).content
    header, *rest = export.splitlines()
    counts = "SELECT (SELECT count(*) FROM shares), (SELECT count(*) FROM events)"
    before = db_rows(server, counts)
    bad_bodies = [
        b"",
        b"not json\n",
        b'{"format": "something-else/1"}\n' + b"\n".join(rest),
        header + b"\n" + b'{"type": "telepathy", "data": {}}\n',
        header + b"\n" + rest[0] + b"\n{broken\n",
        header
        + b"\n"
        + json.dumps({"type": "message.delta", "data": {"id": "ghost", "delta": "x"}}).encode(),
    ]
    for body in bad_bodies:
        resp = await http.post("/v1/sessions/import", content=body)
        assert resp.status_code in (400, 422), (body[:80], resp.status_code, resp.text)
        assert_error(resp, resp.status_code)
        assert "session_id" not in resp.text
    assert db_rows(server, counts) == before, "a failed import left a share or events behind"
