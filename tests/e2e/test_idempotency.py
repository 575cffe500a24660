"""SPEC §2.3 Idempotency: re-sending an id the session holds returns the original seq and
stores nothing new; a client that retries never duplicates (also across restarts)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ._support import (
    append,
    client_for,
    create_share,
    delta,
    ids_of,
    message,
    read_log,
    seqs_of,
    status,
    ws_open,
)


async def test_resend_same_overlapping_and_in_batch_duplicates(
    server: Any, http: httpx.AsyncClient
) -> None:
    share = await create_share(http)
    sid = share["session_id"]
    first = [message("m", role="user", id="a"), delta("m", "1", id="b"), delta("m", "2", id="c")]
    r1 = await append(http, share, first)
    assert r1["seqs"] == [1, 2, 3] and r1["last_seq"] == 3

    # the same batch again
    r2 = await append(http, share, first)
    assert r2["seqs"] == [1, 2, 3] and r2["last_seq"] == 3

    # an overlapping batch: old ids keep their seqs, only the new one is stored
    r3 = await append(
        http, share, [delta("m", "2", id="c"), delta("m", "3", id="d"), delta("m", "1", id="b")]
    )
    assert r3["seqs"] == [3, 4, 2] and r3["last_seq"] == 4

    # the same id twice within one batch is stored once
    r4 = await append(http, share, [delta("m", "4", id="e"), delta("m", "4", id="e")])
    assert r4["seqs"] == [5, 5] and r4["last_seq"] == 5

    # a re-sent id with different data still maps to the original and changes nothing
    r5 = await append(http, share, [delta("m", "CHANGED", id="b")])
    assert r5["seqs"] == [2] and r5["last_seq"] == 5

    log = await read_log(http, sid)
    assert seqs_of(log) == [1, 2, 3, 4, 5]
    assert ids_of(log) == ["a", "b", "c", "d", "e"]
    assert log[1]["data"]["delta"] == "1"
    snap = (await http.get(f"/v1/sessions/{sid}")).json()
    assert snap["messages"][0]["content"] == "1234"
    assert snap["seq"] == 5


async def test_concurrent_duplicates_store_once(server: Any, http: httpx.AsyncClient) -> None:
    """Many clients retrying the same batch at the same time (HTTP and WebSocket)."""
    share = await create_share(http)
    sid = share["session_id"]
    await append(http, share, [message("m", role="assistant", id="m0")])
    batch = [delta("m", str(i), id=f"dup-{i}") for i in range(20)]
    ws_writers = [await ws_open(server, sid, token=share["secret"]) for _ in range(3)]

    async def via_http() -> list[int]:
        async with client_for(server) as client:
            return (await append(client, share, batch))["seqs"]

    async def via_ws(i: int) -> list[int]:
        reply = await ws_writers[i % 3].publish(batch)
        assert reply["op"] == "ack", reply
        return list(reply["seqs"])

    results = await asyncio.wait_for(
        asyncio.gather(*[via_http() for _ in range(12)], *[via_ws(i) for i in range(6)]), 30
    )
    assert all(r == list(range(2, 22)) for r in results), results
    log = await read_log(http, sid)
    assert seqs_of(log) == list(range(1, 22))
    assert ids_of(log) == ["m0"] + [f"dup-{i}" for i in range(20)]
    for ws in ws_writers:
        events = await ws.wait_seq(21)
        assert seqs_of(events) == list(range(2, 22)), "readers saw a duplicate"
        await ws.close()


async def test_retries_across_restarts_return_original_seqs(server_factory: Any) -> None:
    """After SIGTERM and after SIGKILL, with a stored snapshot taken past the start (so
    old ids are no longer all in memory), a retry still maps to the original seq."""
    srv = server_factory(rate_limit=0, snapshot_every=5, idle_evict_seconds=0.2)
    async with client_for(srv) as http:
        share = await create_share(http)
        sid = share["session_id"]
        early = [message("m", role="user", id="x0")] + [
            delta("m", ".", id=f"x{i}") for i in range(1, 12)
        ]
        assert (await append(http, share, early))["seqs"] == list(range(1, 13))
        late = [status("thinking", id="s1"), status("idle", id="s2")]
        assert (await append(http, share, late))["seqs"] == [13, 14]

        assert await srv.aterminate() == 0
        await srv.arestart()
        assert (await append(http, share, early[3:7]))["seqs"] == [4, 5, 6, 7]
        r = await append(http, share, [late[1], delta("m", "!", id="new1"), early[0]])
        assert r["seqs"] == [14, 15, 1] and r["last_seq"] == 15

        srv.kill()
        await srv.arestart()
        r = await append(
            http, share, [delta("m", "!", id="new1"), early[11], delta("m", "?", id="new2")]
        )
        assert r["seqs"] == [15, 12, 16] and r["last_seq"] == 16

        # the session is evicted from memory when idle and reloaded from its snapshot
        await asyncio.sleep(0.8)
        r = await append(http, share, [early[2], late[0], delta("m", "?", id="new2")])
        assert r["seqs"] == [3, 13, 16] and r["last_seq"] == 16

        log = await read_log(http, sid)
        assert seqs_of(log) == list(range(1, 17))
        assert ids_of(log) == [f"x{i}" for i in range(12)] + ["s1", "s2", "new1", "new2"]
        snap = (await http.get(f"/v1/sessions/{sid}")).json()
        assert snap["messages"][0]["content"] == "." * 11 + "!?"
        assert snap["seq"] == 16
