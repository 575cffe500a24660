"""Archives end to end: a real server archives an idle session (small --archive-after),
is SIGKILLed and restarted, and serves the session again, restored from the archive:
the viewer page, the snapshot, the whole log with its ids, and writes that follow on."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from ._support import append, bearer, client_for, create_share, db_rows, delta, message, read_log

ARCHIVE_FLAGS = {"rate_limit": 0, "idle_evict_seconds": 0.2, "archive_after": 0.3}


async def archived_count(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    match = re.search(r"^agentsync_sessions_archived_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def wait_archived(http: httpx.AsyncClient, at_least: float = 1.0) -> None:
    for _ in range(200):
        if await archived_count(http) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the session was never archived")


@pytest.mark.parametrize("where", ["local", "s3"])
async def test_archived_session_is_served_after_sigkill_and_restart(
    server_factory: Any, request: pytest.FixtureRequest, where: str
) -> None:
    flags = dict(ARCHIVE_FLAGS)
    if where == "s3":
        flags["archive"] = request.getfixturevalue("s3_archive_url")
    srv = server_factory(**flags)
    async with client_for(srv) as http:
        share = await create_share(http, title="cold")
        sid = share["session_id"]
        events = [message("m1", "hello from the archive", id="first")]
        events += [delta("m1", f" part{i}", id=f"d{i}") for i in range(30)]
        await append(http, share, events)
        snapshot = (await http.get(f"/v1/sessions/{sid}")).json()
        log = await read_log(http, sid)
        assert len(log) == 31

        await wait_archived(http)
        assert db_rows(srv, "SELECT count(*) FROM events WHERE session_id = ?", sid) == [(0,)]
        assert db_rows(srv, "SELECT count(*) FROM snapshots WHERE session_id = ?", sid) == [(0,)]
        (name,) = db_rows(srv, "SELECT archive FROM shares WHERE id = ?", sid)[0]
        assert name.startswith("v31-")
        if where == "local":
            assert (srv.data_dir / "archive" / sid / name).is_file()

    srv.kill()
    await srv.arestart()
    async with client_for(srv) as http:
        page = await http.get(f"/share/{sid}")
        assert page.status_code == 200, page.text
        assert "hello from the archive" in page.text
        again = (await http.get(f"/v1/sessions/{sid}")).json()
        assert again == snapshot
        assert await read_log(http, sid) == log
        body = await append(http, share, [delta("m1", " part5", id="d5"), delta("m1", "!")])
        assert body["seqs"] == [7, 32]  # a retried id keeps its seq; the new one follows
        assert body["epoch"] == snapshot["epoch"]

        # Archived again, then deleted: nothing of it is left in the archive.
        await wait_archived(http)
        resp = await http.delete(f"/v1/shares/{sid}", headers=bearer(share["secret"]))
        assert resp.status_code == 204
        assert (await http.get(f"/v1/sessions/{sid}")).status_code == 410
        if where == "local":
            assert not (srv.data_dir / "archive" / sid).exists()
