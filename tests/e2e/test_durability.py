"""SPEC §2.2 Durability: an acknowledged event survives SIGKILL of the server at any moment.

Writers over HTTP and WebSocket append continuously and record every (seq, id) they were
acknowledged; the server process is SIGKILLed in the middle of the stream (three times, at
different moments), restarted on the same data directory, and every acknowledged event
must be there with its seq and id, in a log that is dense from 1. Writers then re-send
what was in flight when the server died (SPEC §2.4: a reconnecting writer re-sends its
unacknowledged events and none doubles).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import websockets

from ._support import (
    append,
    bearer,
    client_for,
    create_share,
    delta,
    ids_of,
    message,
    read_log,
    seqs_of,
    ws_open,
)


async def test_acked_events_survive_sigkill(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, snapshot_every=50)
    async with client_for(srv) as http:
        share = await create_share(http, title="durable")
        sid = share["session_id"]
        await append(http, share, [message("m", role="assistant", id="first")])
        acked: dict[int, str] = {1: "first"}
        unacked: dict[str, dict[str, Any]] = {}  # id -> event, sent but never acknowledged
        stop = asyncio.Event()
        enough = asyncio.Event()  # set once len(acked) reaches kill_at[0]
        kill_at = [0]
        counter = [0]

        def next_batch(writer: str, size: int) -> list[dict[str, Any]]:
            batch = []
            for _ in range(size):
                counter[0] += 1
                batch.append(delta("m", ".", id=f"{writer}-{counter[0]}"))
            return batch

        def record(batch: list[dict[str, Any]], seqs: list[int]) -> None:
            for ev, seq in zip(batch, seqs, strict=True):
                assert acked.setdefault(seq, ev["id"]) == ev["id"], f"seq {seq} acked twice"
                unacked.pop(ev["id"], None)
            if len(acked) >= kill_at[0]:
                enough.set()

        async def http_writer(name: str, size: int) -> None:
            async with client_for(srv) as client:
                while not stop.is_set():
                    batch = next_batch(name, size)
                    for ev in batch:
                        unacked[ev["id"]] = ev
                    try:
                        resp = await client.post(
                            f"/v1/sessions/{sid}/events",
                            json={"events": batch},
                            headers=bearer(share["secret"]),
                        )
                    except httpx.TransportError:
                        return  # the server died: these stay unacknowledged
                    if resp.status_code != 200:
                        return
                    record(batch, resp.json()["seqs"])

        async def ws_writer(name: str) -> None:
            try:
                ws = await ws_open(srv, sid, token=share["secret"])
            except (OSError, websockets.WebSocketException):
                return
            try:
                while not stop.is_set():
                    batch = next_batch(name, 3)
                    for ev in batch:
                        unacked[ev["id"]] = ev
                    reply = await ws.publish(batch, within=5)
                    if reply["op"] != "ack":
                        return
                    record(batch, reply["seqs"])
            except (AssertionError, TimeoutError, websockets.WebSocketException, OSError):
                return  # connection closed by the kill
            finally:
                await ws.close()

        for round_, kill_after in enumerate((150, 400, 700)):
            stop.clear()
            enough.clear()
            kill_at[0] = kill_after
            tasks = [
                asyncio.ensure_future(http_writer(f"h{round_}.{i}", 1 + i * 4)) for i in range(3)
            ]
            tasks.append(asyncio.ensure_future(ws_writer(f"w{round_}")))

            await asyncio.wait_for(enough.wait(), 30)
            srv.kill()  # SIGKILL mid-stream, writers still sending
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            for t in tasks:
                assert t.exception() is None, t.exception()
            await srv.arestart()

            log = await read_log(http, sid)
            last = log[-1]["seq"]
            assert seqs_of(log) == list(range(1, last + 1)), "the log has a gap after restart"
            by_seq = {e["seq"]: e["id"] for e in log}
            lost = {s: i for s, i in acked.items() if by_seq.get(s) != i}
            assert not lost, f"acknowledged events lost or moved by SIGKILL: {lost}"
            assert len(set(ids_of(log))) == len(log), "an event id is stored twice"

            # the writers re-send everything they were never acknowledged for
            if unacked:
                batch = list(unacked.values())
                result = await append(http, share, batch)
                record(batch, result["seqs"])
                again = await append(http, share, batch)
                assert again["seqs"] == result["seqs"], "a retried event was stored twice"
            log = await read_log(http, sid)
            assert seqs_of(log) == list(range(1, len(log) + 1))
            assert {e["seq"]: e["id"] for e in log} == acked, "log and acks disagree"

        snap = (await http.get(f"/v1/sessions/{sid}")).json()
        assert snap["seq"] == len(acked)
        assert snap["messages"][0]["content"] == "." * (len(acked) - 1)


async def test_kill_right_after_ack_loses_nothing(server_factory: Any) -> None:
    """The narrowest window: SIGKILL the instant a single append is acknowledged."""
    srv = server_factory(rate_limit=0)
    async with client_for(srv) as http:
        share = await create_share(http)
        sid = share["session_id"]
        await append(http, share, [message("m", role="user", id="m0")])
        expected = ["m0"]
        for round_ in range(3):
            batch = [delta("m", str(round_), id=f"k{round_}-{i}") for i in range(1 + round_ * 20)]
            result = await append(http, share, batch)
            srv.kill()
            expected += ids_of(batch)
            assert result["last_seq"] == len(expected)
            await srv.arestart()
            log = await read_log(http, sid)
            assert ids_of(log) == expected
            assert seqs_of(log) == list(range(1, len(expected) + 1))
        with contextlib.suppress(Exception):
            await http.aclose()
