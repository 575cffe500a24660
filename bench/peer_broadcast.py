"""The reference peer for bench/fanout.py: a bare `websockets` broadcast server.

It speaks the subset of agentsync's WebSocket protocol that the benchmark drives, with
nothing else: no storage, no coalescing, no backlog bound. Seqs are assigned in memory and
every published event is broadcast one event per frame with ``websockets.broadcast()``
(encoded once per event, written to every reader). This is the "Python ceiling" that
agentsync is compared against (see ../shared/PERFORMANCE-NOTES.md).

    python bench/peer_broadcast.py --port 8790

Protocol (the same frames as agentsync, SPEC §3):
- ``GET /readyz`` answers 200 (so the harness waits for it the same way).
- ``/v1/sessions/{id}/ws``: any session id is accepted and created on first use.
  The client sends ``{"op":"hello","since"?,"epoch"?,"token"?}``; a hello carrying a token
  may publish. The server answers ``init`` (or a resumed ``events`` frame when
  ``since``/``epoch`` match and the events are still in the in-memory history), then
  streams ``{"op":"events","events":[ev]}`` frames to every connection of the session.
- ``{"op":"publish","ref":R,"events":[...]}`` → one broadcast per event, then
  ``{"op":"ack","ref":R,"seqs":[...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import time
from collections import deque
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

HISTORY = 100_000  # frames kept for resume


class Session:
    __slots__ = ("conns", "epoch", "history", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.epoch = secrets.token_urlsafe(6)
        self.conns: set[ServerConnection] = set()
        self.history: deque[bytes] = deque(maxlen=HISTORY)


sessions: dict[str, Session] = {}


def process_request(conn: ServerConnection, request: Request) -> Response | None:
    path = request.path.split("?", 1)[0]
    if path in ("/readyz", "/healthz"):
        return conn.respond(200, "ok\n")
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["v1", "sessions"] and parts[3] == "ws":
        return None
    return conn.respond(404, "not found\n")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def handler(ws: ServerConnection) -> None:
    sid = ws.request.path.split("?", 1)[0].strip("/").split("/")[2]
    s = sessions.get(sid)
    if s is None:
        s = sessions[sid] = Session()
    try:
        hello = orjson.loads(await ws.recv())
    except Exception:
        await ws.close(4500, "expected hello")
        return
    if not isinstance(hello, dict) or hello.get("op") != "hello":
        await ws.close(4500, "expected hello")
        return
    can_write = bool(hello.get("token"))
    since = hello.get("since")
    if (
        isinstance(since, int)
        and hello.get("epoch") == s.epoch
        and s.seq - len(s.history) <= since <= s.seq
    ):
        missing = list(s.history)[len(s.history) - (s.seq - since) :]
        evs = [orjson.loads(f)["events"][0] for f in missing]
        await ws.send(
            orjson.dumps({"op": "events", "events": evs, "epoch": s.epoch, "resumed": True}),
            text=True,
        )
    else:
        init = {"op": "init", "snapshot": {}, "seq": s.seq, "epoch": s.epoch}
        await ws.send(orjson.dumps(init), text=True)
    s.conns.add(ws)
    try:
        async for raw in ws:
            msg: Any = orjson.loads(raw)
            if not isinstance(msg, dict) or msg.get("op") != "publish":
                continue
            ref = msg.get("ref")
            if not can_write:
                err = {"op": "error", "ref": ref, "code": "forbidden", "message": "no secret"}
                await ws.send(orjson.dumps(err), text=True)
                continue
            seqs = []
            for e in msg.get("events") or ():
                s.seq += 1
                ev = {
                    "seq": s.seq,
                    "id": e.get("id") or secrets.token_urlsafe(9),
                    "type": e.get("type"),
                    "ts": e.get("ts") or now_ms(),
                    "data": e.get("data"),
                }
                frame = orjson.dumps({"op": "events", "events": [ev]})
                s.history.append(frame)
                broadcast(s.conns, frame, text=True)
                seqs.append(s.seq)
            await ws.send(orjson.dumps({"op": "ack", "ref": ref, "seqs": seqs}), text=True)
    except Exception:
        pass
    finally:
        s.conns.discard(ws)
        if not s.conns and sessions.get(sid) is s:
            del sessions[sid]  # a bench peer: forget a session nobody is connected to


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        compression=None,
        process_request=process_request,
        max_size=2**24,
        backlog=4096,
    ):
        await stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8790)
    a = ap.parse_args()
    asyncio.run(main(a.host, a.port))
