"""SPEC §2.6 for Durable Streams SSE: a reader that stops reading neither stalls the
stream's writer nor its other readers, is cut off once its socket has taken nothing for
``--stream-stall-seconds``, and resumes from the offset of the last control event it got
with nothing lost or doubled. Both for a stream and for a session read as one."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import orjson
import psutil

from durable_streams.test_sessions import read_stream
from e2e._support import append, create_share, message, read_log

UNIT = 32 * 1024
UNITS = 400  # 12.5 MiB: far more than the kernel's socket buffers hold for a stalled reader
STALL_SECONDS = 1.0
MiB = 1024 * 1024


def unit(i: int) -> bytes:
    return b"%08d" % i + b"x" * (UNIT - 8)


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, possibly cut off after its last whole chunk."""
    out, pos = [], 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return b"".join(out)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0 or end + 2 + size > len(body):
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


def sse_events(stream: bytes) -> list[tuple[str, str]]:
    """(event, data) of every complete event; a text stream's data lines joined."""
    events = []
    for block in stream.split(b"\n\n"):
        lines = block.decode().split("\n")
        kind = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = [line[5:] for line in lines if line.startswith("data:")]
        if kind is not None:
            events.append((kind, "\n".join(data)))
    return events


def text_and_offset(events: list[tuple[str, str]]) -> tuple[bytes, str]:
    """The text of the data events and the offset of the last control event; every data
    event must be followed by its control (the pair is written whole)."""
    text, offset, pending = b"", "-1", b""
    for kind, data in events:
        if kind == "data":
            pending += data.encode()
        elif kind == "control":
            text, pending = text + pending, b""
            offset = orjson.loads(data)["streamNextOffset"]
    return text, offset


def items_and_offset(events: list[tuple[str, str]]) -> tuple[list[Any], str]:
    """As :func:`text_and_offset`, for a JSON stream: the messages of the data events."""
    items: list[Any] = []
    offset, pending = "-1", []
    for kind, data in events:
        if kind == "data":
            pending += orjson.loads(data)
        elif kind == "control":
            items, pending = items + pending, []
            offset = orjson.loads(data)["streamNextOffset"]
    return items, offset


def stalled_reader(port: int, path: str) -> socket.socket:
    """An SSE reader with a tiny receive buffer that sends its request and reads no more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path}?offset=-1&live=sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def read_to_eof(sock: socket.socket, within: float) -> bytes:
    sock.settimeout(within)
    parts = []
    while chunk := sock.recv(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


async def live_reader(url: str, want: bytes) -> bytes:
    """A reader that keeps up: SSE from the start until it holds ``want``."""
    got, buf, pending = b"", b"", b""
    params = {"offset": "-1", "live": "sse"}
    async with (
        httpx.AsyncClient(timeout=30.0) as client,
        client.stream("GET", url, params=params) as resp,
    ):
        assert resp.status_code == 200
        async for chunk in resp.aiter_bytes():
            buf += chunk
            done, _, buf = buf.rpartition(b"\n\n")
            for kind, data in sse_events(done):
                if kind == "data":
                    pending += data.encode()
                elif kind == "control":
                    got, pending = got + pending, b""
            if len(got) >= len(want):
                return got
    return got


async def test_a_stalled_sse_reader_is_cut_off_and_resumes(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, stream_stall_seconds=STALL_SECONDS, log_level="info")
    path = "/v1/stream/slow-readers"
    want = b"".join(unit(i) for i in range(UNITS))
    async with httpx.AsyncClient(base_url=srv.url, timeout=30.0) as http:
        headers = {"content-type": "text/plain"}
        assert (await http.put(path, headers=headers)).status_code == 201
        stalled = stalled_reader(srv.port, path)
        fast = asyncio.create_task(live_reader(srv.url + path, want))
        rss_before = psutil.Process(srv.pid).memory_info().rss
        worst = 0.0
        for i in range(UNITS):
            started = time.monotonic()
            resp = await http.post(path, headers=headers, content=unit(i))
            assert resp.status_code == 204
            worst = max(worst, time.monotonic() - started)
        assert worst < 1.0, f"an append took {worst:.2f}s with a stalled reader attached"
        assert await asyncio.wait_for(fast, 30) == want  # the other reader kept up
        grown = psutil.Process(srv.pid).memory_info().rss - rss_before
        assert grown < 64 * MiB, f"the server grew by {grown / MiB:.0f} MiB"

        # Cut off: the server closes the connection after what it had written. Its socket
        # buffers (tcp_wmem: 4 MiB at most here) hold a third of the stream, so its write
        # has been waiting since well before the last append; give the cut-off time to
        # happen before reading (reading would let the write through).
        await asyncio.sleep(2 * STALL_SECONDS + 1)
        raw = await asyncio.to_thread(read_to_eof, stalled, 10 * STALL_SECONDS + 10)
        stalled.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        prefix, offset = text_and_offset(sse_events(dechunk(body)))
        assert 0 < len(prefix) < len(want), "the stalled reader was not cut off mid-stream"
        assert want.startswith(prefix)  # in order, no gap, no duplicate

        # It resumes from the last offset it got, and ends with exactly the stream.
        rest = b""
        while True:  # catch-up reads come in pages of up to 1 MiB
            page = await http.get(path, params={"offset": offset})
            assert page.status_code == 200
            rest += page.content
            offset = page.headers["stream-next-offset"]
            if page.headers.get("stream-up-to-date") == "true":
                break
        assert prefix + rest == want
        metrics = (await http.get("/metrics")).text
        assert "agentsync_slow_consumers_total 1.0" in metrics
    assert "cut off an SSE reader of /v1/stream/slow-readers" in srv.logs()
    assert "ASGI callable returned" not in srv.logs()


async def test_a_stalled_session_reader_is_cut_off_and_resumes(server_factory: Any) -> None:
    """The same for ``/v1/stream/sessions/{id}``, fed by the session's own appends."""
    srv = server_factory(rate_limit=0, stream_stall_seconds=STALL_SECONDS, log_level="info")
    async with httpx.AsyncClient(base_url=srv.url, timeout=30.0) as http:
        share = await create_share(http)
        path = f"/v1/stream/sessions/{share['session_id']}"
        stalled = stalled_reader(srv.port, path)
        events = [message(f"m{i}", unit(i).decode()) for i in range(UNITS)]
        for i in range(0, UNITS, 10):
            started = time.monotonic()
            await append(http, share, events[i : i + 10])
            took = time.monotonic() - started
            assert took < 1.0, f"an append took {took:.2f}s with a stalled reader attached"
        log = await read_log(http, share["session_id"])
        assert len(log) == UNITS

        await asyncio.sleep(2 * STALL_SECONDS + 1)  # as above: let the cut-off happen first
        raw = await asyncio.to_thread(read_to_eof, stalled, 10 * STALL_SECONDS + 10)
        stalled.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        got, offset = items_and_offset(sse_events(dechunk(body)))
        assert 0 < len(got) < UNITS, "the stalled reader was not cut off mid-stream"
        assert got == log[: len(got)]  # in order, no gap, no duplicate

        rest, _, _ = await read_stream(http, path, offset)
        assert got + rest == log
        metrics = (await http.get("/metrics")).text
        assert "agentsync_slow_consumers_total 1.0" in metrics
    assert f"cut off an SSE reader of {path}" in srv.logs()
    assert "ASGI callable returned" not in srv.logs()
