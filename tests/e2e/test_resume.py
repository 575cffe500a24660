"""SPEC §2.4 Resume: a reader reconnecting with (epoch, since=N) gets exactly N+1.. then
live events; a wrong epoch or a position outside the log gets a snapshot first. Over
WebSocket, SSE (Last-Event-ID) and long-poll, and across a server restart."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ._support import (
    SseClient,
    append,
    assert_error,
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


async def _session_with(http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    share = await create_share(http)
    await append(http, share, [message("m", role="assistant", id="ev1")])
    if n > 1:
        await append(http, share, [delta("m", str(i), id=f"ev{i}") for i in range(2, n + 1)])
    return share


async def test_ws_resume_exact_then_live(server: Any, http: httpx.AsyncClient) -> None:
    share = await _session_with(http, 10)
    sid, epoch = share["session_id"], share["epoch"]
    for since in (0, 1, 4, 9, 10):
        ws = await ws_open(server, sid, since=since, epoch=epoch)
        g = ws.greeting
        assert g["op"] == "events" and g["resumed"] is True, g
        assert g["epoch"] == epoch and g["seq"] == 10
        await ws.wait_seq(10)
        assert seqs_of(ws.events) == list(range(since + 1, 11)), f"since={since}"
        assert ids_of(ws.events) == [f"ev{i}" for i in range(since + 1, 11)]
        await ws.close()

    # resume without an epoch is accepted as a position too
    ws = await ws_open(server, sid, since=7)
    assert ws.greeting["op"] == "events"
    await ws.wait_seq(10)
    assert seqs_of(ws.events) == [8, 9, 10]

    # and then live events follow with no gap at the hand-over
    ws2 = await ws_open(server, sid, since=3, epoch=epoch)
    await append(http, share, [delta("m", "L", id=f"live{i}") for i in range(5)])
    await append(http, share, [status("idle", id="live5")])
    for reader, since in ((ws, 7), (ws2, 3)):
        await reader.wait_seq(16)
        assert seqs_of(reader.events) == list(range(since + 1, 17))
        assert ids_of(reader.events)[-6:] == [f"live{i}" for i in range(6)]
        await reader.close()


async def test_ws_wrong_epoch_or_position_gets_snapshot(
    server: Any, http: httpx.AsyncClient
) -> None:
    share = await _session_with(http, 5)
    sid, epoch = share["session_id"], share["epoch"]
    cases = [
        {"since": 3, "epoch": "not-the-epoch"},  # the log was rebuilt
        {"since": 6},  # beyond the log
        {"since": 999, "epoch": epoch},
        {"since": -1, "epoch": epoch},
        {},  # no position at all
    ]
    for hello in cases:
        ws = await ws_open(server, sid, **hello)
        g = ws.greeting
        assert g["op"] == "init", (hello, g)
        assert g["seq"] == 5 and g["epoch"] == epoch
        snap = g["snapshot"]
        assert snap["seq"] == 5 and snap["epoch"] == epoch
        assert [m["id"] for m in snap["messages"]] == ["m"]
        assert snap["messages"][0]["content"] == "2345"
        # after the snapshot, events after its seq only
        await append(http, share, [delta("m", "", id=f"after-{len(ws.frames)}-{hello}")])
        await ws.wait_seq(6)
        assert seqs_of(ws.events) == [6]
        await ws.close()
        # reset for the next case: a fresh session with 5 events
        share = await _session_with(http, 5)
        sid, epoch = share["session_id"], share["epoch"]


async def test_sse_last_event_id_and_since(server: Any, http: httpx.AsyncClient) -> None:
    share = await _session_with(http, 8)
    sid, epoch = share["session_id"], share["epoch"]
    path = f"/v1/sessions/{sid}/stream"

    by_header = SseClient(http, path, headers={"Last-Event-ID": "5"})
    by_query = SseClient(http, path, params={"since": 2, "epoch": epoch})
    fresh = SseClient(http, path)
    wrong_epoch = SseClient(http, path, params={"since": 2, "epoch": "other"})
    beyond = SseClient(http, path, headers={"Last-Event-ID": "99"})
    for s in (by_header, by_query, fresh, wrong_epoch, beyond):
        assert await s.opened() == 200
    await by_header.wait_seq(8)
    await by_query.wait_seq(8)
    for s in (fresh, wrong_epoch, beyond):
        await s.wait_until(lambda s=s: bool(s.messages))
        init = s.messages[0]
        assert init["event"] == "init", init
        assert init["id"] == "8" and init["data"]["seq"] == 8
        assert init["data"]["messages"][0]["content"] == "2345678"
        assert s.events == []

    await append(http, share, [delta("m", "9", id="ev9"), delta("m", "10", id="ev10")])
    for s, since in ((by_header, 5), (by_query, 2), (fresh, 8), (wrong_epoch, 8), (beyond, 8)):
        await s.wait_seq(10)
        assert seqs_of(s.events) == list(range(since + 1, 11))
        assert ids_of(s.events) == [f"ev{i}" for i in range(since + 1, 11)]
        await s.close()

    # an unparsable Last-Event-ID is a clear 400, not a silent restart
    resp = await http.get(path, headers={"Last-Event-ID": "abc"})
    assert_error(resp, 400)


async def test_long_poll_epoch_and_position(server: Any, http: httpx.AsyncClient) -> None:
    share = await _session_with(http, 4)
    sid, epoch = share["session_id"], share["epoch"]
    url = f"/v1/sessions/{sid}/events"
    resp = await http.get(url, params={"since": 2, "epoch": epoch})
    assert resp.status_code == 200
    body = resp.json()
    assert seqs_of(body["events"]) == [3, 4] and body["last_seq"] == 4 and body["epoch"] == epoch
    assert_error(await http.get(url, params={"since": 2, "epoch": "stale"}), 409)
    assert_error(await http.get(url, params={"since": 5}), 409)
    # caught up: an immediate empty page, or a wait that ends with the next event
    resp = await http.get(url, params={"since": 4})
    assert resp.json()["events"] == []

    async def later() -> None:
        await asyncio.sleep(0.3)
        await append(http, share, [delta("m", "x", id="ev5")])

    task = asyncio.ensure_future(later())
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await http.get(url, params={"since": 4, "wait": 5})
    waited = loop.time() - started
    await task
    assert seqs_of(resp.json()["events"]) == [5]
    assert 0.2 < waited < 3, waited


async def test_resume_across_restart(server: Any, http: httpx.AsyncClient) -> None:
    """SIGTERM: readers are closed with 4000 (resumable), the process exits 0; after the
    restart each reader resumes from its own position exactly."""
    share = await _session_with(http, 20)
    sid, epoch = share["session_id"], share["epoch"]
    readers = [await ws_open(server, sid, since=s, epoch=epoch) for s in (0, 10, 20)]
    readers.append(await ws_open(server, sid))
    writer = await ws_open(server, sid, token=share["secret"])
    for i in range(5):
        ack = await writer.publish([delta("m", "w", id=f"w{i}")])
        assert ack["seqs"] == [21 + i]
    for r in readers:
        await r.wait_seq(25)
    sse = SseClient(http, f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "22"})
    await sse.wait_seq(25)

    assert await server.aterminate() == 0
    for r in [*readers, writer]:
        code = await r.wait_closed()
        assert code == 4000, (code, r.close_reason)
    await sse.wait_ended()
    assert seqs_of(sse.events) == [23, 24, 25]

    await server.arestart()
    await append(http, share, [delta("m", "r", id=f"r{i}") for i in range(3)])
    async with client_for(server) as http2:
        resumed = []
        for old in readers:
            ws = await ws_open(server, sid, since=old.seq, epoch=old.greeting["epoch"])
            assert ws.greeting["op"] == "events", ws.greeting
            resumed.append((old, ws))
        sse2 = SseClient(
            http2, f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(sse.seq)}
        )
        await append(http2, share, [status("idle", id="final")])
        for old, ws in resumed:
            await ws.wait_seq(29)
            combined = old.events + ws.events
            start = old.events[0]["seq"] if old.events else 21
            assert seqs_of(combined) == list(range(start, 30))
            assert ids_of(ws.events) == ["r0", "r1", "r2", "final"]
            await ws.close()
        await sse2.wait_seq(29)
        assert seqs_of(sse.events + sse2.events) == list(range(23, 30))
        await sse2.close()
        log = await read_log(http2, sid)
        assert seqs_of(log) == list(range(1, 30))
        assert log[-1]["id"] == "final"
        snap = (await http2.get(f"/v1/sessions/{sid}")).json()
        assert snap["epoch"] == epoch, "a clean restart must not change the epoch"
