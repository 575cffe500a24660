"""SPEC §2.6 Bounded resources: a stalled reader neither stalls the session nor grows server
memory without bound; it is cut off with a resumable close code (4001) and catches up
exactly from its seq when it comes back."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psutil

from ._support import (
    RawWs,
    SseClient,
    WsClient,
    append,
    client_for,
    create_share,
    ids_of,
    message,
    read_log,
    seqs_of,
    status,
    ws_open,
)

PAYLOAD = 32 * 1024
WARMUP = 100
EVENTS = 4000  # 125 MiB through the session while one reader reads nothing
BATCH = 10
MAX_LAG = 100
MiB = 1024 * 1024


async def resume_until(
    srv: Any, sid: str, epoch: str, since: int, last: int, *, max_reconnects: int = 20
) -> tuple[list[dict[str, Any]], WsClient]:
    """Reconnect with (epoch, since) until ``last`` is reached, as a client does after a
    resumable close; returns the events received and the open connection."""
    events: list[dict[str, Any]] = []
    cursor = since
    for _ in range(max_reconnects):
        ws = await ws_open(srv, sid, since=cursor, epoch=epoch)
        assert ws.greeting["op"] == "events", ws.greeting
        with contextlib.suppress(AssertionError):
            await ws.wait_seq(last, within=15)
        events += ws.events
        cursor = ws.seq
        if cursor >= last:
            return events, ws
        assert ws.close_code is not None and 4000 <= ws.close_code < 4500, ws.close_code
    raise AssertionError(f"still at seq {cursor} of {last} after {max_reconnects} reconnects")


def big(i: int) -> dict[str, Any]:
    # replaces the same message: the snapshot stays small, only the log grows
    body = f"{i:08d}" + "x" * (PAYLOAD - 8)
    return {
        "id": f"big-{i}",
        "type": "message",
        "data": {"id": "big", "role": "assistant", "content": body},
    }


async def test_stalled_reader_is_cut_off_and_resumes(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, max_reader_lag=MAX_LAG, backlog_bytes=2 * MiB)
    proc = psutil.Process(srv.pid)
    async with client_for(srv) as http:
        share = await create_share(http)
        sid, epoch = share["session_id"], share["epoch"]
        for start in range(1, WARMUP + 1, BATCH):  # warm up: fills the in-memory backlog
            await append(http, share, [big(i) for i in range(start, start + BATCH)])
        rss_before = proc.memory_info().rss

        stalled = RawWs(f"{srv.ws_url}/v1/sessions/{sid}/ws")
        greeting = await stalled.open({"op": "hello", "since": WARMUP, "epoch": epoch})
        assert greeting["op"] == "events" and greeting["seq"] == WARMUP
        fast = await ws_open(srv, sid, since=WARMUP, epoch=epoch)
        sse = SseClient(http, f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(WARMUP)})
        assert await sse.opened() == 200

        rss_peak = rss_before
        last = WARMUP
        t0 = time.monotonic()
        for start in range(WARMUP + 1, WARMUP + EVENTS + 1, BATCH):
            result = await append(http, share, [big(i) for i in range(start, start + BATCH)])
            last = result["last_seq"]
            rss_peak = max(rss_peak, proc.memory_info().rss)
        write_seconds = time.monotonic() - t0
        assert last == WARMUP + EVENTS

        # the live readers get everything promptly
        t1 = time.monotonic()
        await fast.wait_seq(last, within=10)
        behind_seconds = time.monotonic() - t1
        await sse.wait_seq(last, within=20)
        expected = list(range(WARMUP + 1, last + 1))
        assert seqs_of(fast.events) == expected
        assert seqs_of(sse.events) == expected
        assert behind_seconds < 5, f"a live reader lagged {behind_seconds:.1f}s behind the writer"
        assert write_seconds < 30, f"writing took {write_seconds:.1f}s: the session was stalled"
        rss_peak = max(rss_peak, proc.memory_info().rss)

        # the stalled reader was cut off with a resumable code
        code = await stalled.drain()
        assert code == 4001, (code, stalled.frames[-3:])
        got = stalled.events
        assert got, "the stalled reader got nothing at all"
        assert seqs_of(got) == list(range(WARMUP + 1, stalled.seq + 1)), "gap before the cut-off"
        assert stalled.seq < last - MAX_LAG, "it was not behind: the test did not stall it"

        # the server did not keep what that reader missed: RSS grows by a constant
        # (~30 MiB here: SQLite caches, allocator), not with the 125 MiB the reader missed
        grown = (rss_peak - rss_before) / MiB
        missed = (last - stalled.seq) * PAYLOAD / MiB
        assert grown < missed / 2, (
            f"server RSS grew by {grown:.0f} MiB; the reader missed {missed:.0f} MiB"
        )

        # it comes back and catches up exactly from its seq (reconnecting again, as any
        # client does, if it is cut off once more on the way)
        caught_up, back = await resume_until(srv, sid, epoch, stalled.seq, last)
        assert seqs_of(stalled.events + caught_up) == expected
        log = await read_log(http, sid)
        assert ids_of(stalled.events + caught_up) == ids_of(log)[WARMUP:]

        # and it is a live reader again
        await append(http, share, [message("small", role="user", id="after")])
        await back.wait_seq(last + 1)
        await fast.wait_seq(last + 1)
        assert back.events[-1]["id"] == "after" and back.events[-1]["seq"] == last + 1
        metrics = (await http.get("/metrics")).text
        assert "slow" in metrics
        for c in (fast, back):
            await c.close()
        await sse.close()
        stalled.abort()


async def test_dead_readers_do_not_stall_the_writer(server_factory: Any) -> None:
    """Readers that vanish without closing (never read again) while a writer streams at a
    steady pace: acks stay fast, live readers stay current, the dead ones are cut off."""
    srv = server_factory(rate_limit=0, max_reader_lag=50, backlog_bytes=2 * MiB)
    async with client_for(srv) as http:
        share = await create_share(http)
        sid = share["session_id"]
        dead = []
        for _ in range(8):
            raw = RawWs(f"{srv.ws_url}/v1/sessions/{sid}/ws")
            await raw.open({"op": "hello"}, rcvbuf=1024)
            dead.append(raw)
        live = await ws_open(srv, sid, since=0)
        worst = 0.0
        n = 400  # 12.5 MiB: more than the kernel's socket buffers hold for a dead reader
        for i in range(1, n + 1):
            t = time.monotonic()
            await append(http, share, [big(i)])
            worst = max(worst, time.monotonic() - t)
        await live.wait_seq(n, within=5)
        assert seqs_of(live.events) == list(range(1, n + 1))
        assert worst < 1.0, f"an append took {worst:.2f}s with dead readers attached"
        codes = [await raw.drain() for raw in dead]
        assert set(codes) == {4001}, codes
        for raw in dead:
            assert seqs_of(raw.events) == list(range(1, raw.seq + 1))
            assert raw.seq < n
            raw.abort()
        await live.close()


async def test_resuming_reader_far_behind_is_not_cut_off(server_factory: Any) -> None:
    """A reader that reconnects far behind and reads promptly must be able to catch up in
    one connection: it is behind because it was away, not because it is slow."""
    srv = server_factory(rate_limit=0, max_reader_lag=100, max_frame_events=100)
    async with client_for(srv) as http:
        share = await create_share(http)
        sid, epoch = share["session_id"], share["epoch"]
        await append(http, share, [message("m", role="user", id="m0")])
        for start in range(0, 900, 300):
            await append(
                http, share, [status(f"s{i}", id=f"s{i}") for i in range(start, start + 300)]
            )
        ws = await ws_open(srv, sid, since=0, epoch=epoch)
        await ws.wait_seq(901, within=10)
        assert seqs_of(ws.events) == list(range(1, 902))
        await ws.close()
