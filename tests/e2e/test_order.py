"""SPEC §2.1 Order: every reader, on every path, sees seqs 1..N in order, no gap, no duplicate.

Several writers (HTTP and WebSocket publish) append concurrently while readers follow the
session over WebSocket (from init, from a resume position, joining late), SSE (from init,
from Last-Event-ID, joining late) and long-poll; afterwards the log, the export and every
reader must hold exactly the same events with the same ids, and the union of the seqs the
writers were acknowledged must be exactly 1..N.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx

from ._support import (
    SseClient,
    WsClient,
    append,
    bearer,
    create_share,
    delta,
    ids_of,
    longpoll_collect,
    message,
    read_log,
    seqs_of,
    ws_open,
)

HTTP_WRITERS = 3
WS_WRITERS = 2
BATCHES = 30


async def test_concurrent_writers_all_readers_see_one_order(
    server: Any, http: httpx.AsyncClient
) -> None:
    share = await create_share(http, title="order")
    sid, secret, epoch = share["session_id"], share["secret"], share["epoch"]
    rng = random.Random(7)
    acked: dict[int, str] = {}  # seq -> event id, from every ack
    writer_seqs: dict[str, list[int]] = {}
    halfway = asyncio.Event()

    def record(name: str, events: list[dict[str, Any]], seqs: list[int]) -> None:
        assert len(seqs) == len(events)
        for ev, seq in zip(events, seqs, strict=True):
            assert acked.setdefault(seq, ev["id"]) == ev["id"], f"seq {seq} acked for two ids"
        writer_seqs.setdefault(name, []).extend(seqs)
        if len(acked) >= 150:
            halfway.set()

    def batches(name: str) -> list[list[dict[str, Any]]]:
        out = [[message(f"m-{name}", role="assistant")]]
        for _ in range(BATCHES):
            out.append([delta(f"m-{name}", f"{name}.") for _ in range(rng.randint(1, 6))])
        return out

    # readers that are there from the start
    ws_init = await ws_open(server, sid)
    ws_resume = await ws_open(server, sid, since=0, epoch=epoch, name="resumer")
    assert ws_init.greeting["op"] == "init" and ws_init.greeting["seq"] == 0
    assert ws_resume.greeting["op"] == "events" and ws_resume.greeting["resumed"] is True
    sse_init = SseClient(http, f"/v1/sessions/{sid}/stream")
    sse_lei = SseClient(http, f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"})
    assert await sse_init.opened() == 200 and await sse_lei.opened() == 200
    await sse_init.wait_until(lambda: any(m["event"] == "init" for m in sse_init.messages))
    total: list[int | None] = [None]
    poller = asyncio.ensure_future(longpoll_collect(http, sid, lambda: total[0], limit=37))

    async def http_writer(name: str) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            for batch in batches(name):
                result = await append(client, share, batch)
                record(name, batch, result["seqs"])

    async def ws_writer(name: str) -> None:
        ws = await ws_open(server, sid, token=secret, name=name)
        try:
            assert ws.greeting["reader"]["can_write"] is True
            for batch in batches(name):
                reply = await ws.publish(batch)
                assert reply["op"] == "ack", reply
                record(name, batch, reply["seqs"])
        finally:
            await ws.close()

    async def late_readers() -> tuple[WsClient, SseClient]:
        await halfway.wait()
        ws = await ws_open(server, sid, since=0, epoch=epoch)
        sse = SseClient(http, f"/v1/sessions/{sid}/stream", params={"since": 5})
        return ws, sse

    writers = [http_writer(f"h{i}") for i in range(HTTP_WRITERS)]
    writers += [ws_writer(f"w{i}") for i in range(WS_WRITERS)]
    _, _, (ws_late, sse_late) = await asyncio.wait_for(
        asyncio.gather(asyncio.gather(*writers), asyncio.sleep(0), late_readers()), 60
    )

    n = len(acked)
    total[0] = n
    expected = list(range(1, n + 1))
    assert sorted(acked) == expected, "the acknowledged seqs are not exactly 1..N"
    for name, seqs in writer_seqs.items():
        assert seqs == sorted(seqs), f"writer {name}'s acks went backwards"

    log = await read_log(http, sid, page=97)
    assert seqs_of(log) == expected
    assert ids_of(log) == [acked[s] for s in expected]
    ids = ids_of(log)

    for name, reader in [
        ("ws from init", ws_init),
        ("ws resumed from 0", ws_resume),
        ("ws joined late", ws_late),
        ("sse from init", sse_init),
        ("sse Last-Event-ID 0", sse_lei),
    ]:
        events = await reader.wait_seq(n, within=20)
        assert seqs_of(events) == expected, f"{name}: wrong seqs"
        assert ids_of(events) == ids, f"{name}: wrong ids"
    late = await sse_late.wait_seq(n, within=20)
    assert seqs_of(late) == expected[5:]
    assert ids_of(late) == ids[5:]

    polled = await asyncio.wait_for(poller, 20)
    assert seqs_of(polled) == expected
    assert ids_of(polled) == ids

    resp = await http.get(f"/v1/sessions/{sid}/export")
    assert resp.status_code == 200
    lines = [json.loads(line) for line in resp.text.splitlines() if line.strip()]
    assert lines[0]["last_seq"] == n
    assert seqs_of(lines[1:]) == expected
    assert ids_of(lines[1:]) == ids

    snap = (await http.get(f"/v1/sessions/{sid}")).json()
    assert snap["seq"] == n
    contents = {m["id"]: m["content"] for m in snap["messages"]}
    for name, seqs in writer_seqs.items():
        assert contents[f"m-{name}"] == f"{name}." * (len(seqs) - 1)

    for c in (ws_init, ws_resume, ws_late):
        await c.close()
    for s in (sse_init, sse_lei, sse_late):
        await s.close()


async def test_catch_up_in_many_frames_then_live(server_factory: Any) -> None:
    """A reader far behind gets the backlog coalesced into several frames, then live
    events, with no gap or duplicate at the hand-over; also from the store when the
    in-memory backlog no longer holds its position."""
    srv = server_factory(rate_limit=0, max_frame_events=50, backlog_events=100)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create_share(http)
        sid, epoch = share["session_id"], share["epoch"]
        await append(http, share, [message("m", role="user")])
        for _ in range(6):
            await append(http, share, [delta("m", "x") for _ in range(50)])
        assert (await read_log(http, sid))[-1]["seq"] == 301
        readers = [await ws_open(srv, sid, since=s, epoch=epoch) for s in (0, 1, 250, 301)]

        async def live_writes() -> None:
            for _ in range(20):
                await append(http, share, [delta("m", "y"), delta("m", "z")])

        await asyncio.wait_for(live_writes(), 20)
        for since, reader in zip((0, 1, 250, 301), readers, strict=True):
            events = await reader.wait_seq(341)
            assert seqs_of(events) == list(range(since + 1, 342)), f"since={since}"
            frames = [f for f in reader.frames if f.get("op") == "events"]
            assert all(len(f["events"]) <= 50 for f in frames)
            await reader.close()
        log = await read_log(http, sid)
        assert ids_of(readers[0].events) == ids_of(log)
        # SSE from a position the backlog no longer holds
        sse = SseClient(http, f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "3"})
        events = await sse.wait_seq(341)
        assert seqs_of(events) == list(range(4, 342))
        await sse.close()
        # long-poll pages
        assert seqs_of(await longpoll_collect(http, sid, 341, since=17, limit=64)) == list(
            range(18, 342)
        )
        resp = await http.get(
            f"/v1/sessions/{sid}/events",
            params={"since": 300, "limit": 5},
            headers=bearer(share["secret"]),
        )
        assert seqs_of(resp.json()["events"]) == [301, 302, 303, 304, 305]
        assert resp.json()["last_seq"] == 341
