"""Clients for the end-to-end tests: HTTP helpers, a WebSocket reader/writer, SSE and
long-poll collectors, and a raw WebSocket that can stop reading (a stalled reader).

Every wait here is bounded: a test that would hang fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response as WsResponse
from websockets.uri import parse_uri

T = 10.0  # default bound on any single wait


def client_for(srv: Any) -> httpx.AsyncClient:
    """An HTTP client for a server made with ``server_factory`` (use ``async with``)."""
    return httpx.AsyncClient(base_url=srv.url, timeout=T)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_share(
    http: httpx.AsyncClient, *, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    """POST /v1/shares; returns {session_id, share_url, secret, expires_at, read, epoch, ...}."""
    resp = await http.post("/v1/shares", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    share = resp.json()
    for key in ("session_id", "share_url", "secret", "expires_at", "read", "epoch"):
        assert key in share, share
    return share


async def append(
    http: httpx.AsyncClient, share: dict[str, Any], events: list[dict[str, Any]]
) -> dict[str, Any]:
    """POST a batch with the share's secret; asserts 200 and returns {seqs, last_seq, epoch}."""
    resp = await http.post(
        f"/v1/sessions/{share['session_id']}/events",
        json={"events": events},
        headers=bearer(share["secret"]),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["seqs"]) == len(events), body
    return body


async def read_log(
    http: httpx.AsyncClient, session_id: str, *, token: str | None = None, page: int = 1000
) -> list[dict[str, Any]]:
    """The whole log, paged through GET /events."""
    headers = bearer(token) if token else {}
    out: list[dict[str, Any]] = []
    while True:
        resp = await http.get(
            f"/v1/sessions/{session_id}/events",
            params={"since": len(out), "limit": page},
            headers=headers,
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        out += body["events"]
        if not body["events"] or out[-1]["seq"] >= body["last_seq"]:
            return out


async def last_seq(http: httpx.AsyncClient, session_id: str, token: str | None = None) -> int:
    resp = await http.get(f"/v1/sessions/{session_id}", headers=bearer(token) if token else {})
    assert resp.status_code == 200, resp.text
    return int(resp.json()["seq"])


def seqs_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


def ids_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The documented error shape: the status and {"error": {"code", "message"}}."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    return err


def db_rows(srv: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Query the server's SQLite file directly (read-only), to see what is really stored."""
    conn = sqlite3.connect(f"file:{srv.data_dir / 'agentsync.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# --- event builders --------------------------------------------------------------------

_counter = itertools.count()


def uid(prefix: str = "e") -> str:
    return f"{prefix}-{next(_counter)}"


def message(
    mid: str, content: str = "", *, role: str = "assistant", id: str | None = None
) -> dict[str, Any]:
    return {
        "id": id or uid(),
        "type": "message",
        "data": {"id": mid, "role": role, "content": content},
    }


def delta(mid: str, text: str, *, id: str | None = None) -> dict[str, Any]:
    return {"id": id or uid(), "type": "message.delta", "data": {"id": mid, "delta": text}}


def status(value: str, *, id: str | None = None) -> dict[str, Any]:
    return {"id": id or uid(), "type": "status", "data": {"status": value}}


# --- WebSocket -------------------------------------------------------------------------


class WsClient:
    """A WebSocket connection to one session, with a task that records every frame."""

    def __init__(self, ws: websockets.ClientConnection, greeting: dict[str, Any]) -> None:
        self.ws = ws
        self.greeting = greeting
        self.events: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = [greeting]
        self.replies: dict[Any, dict[str, Any]] = {}  # ack / error frames by ref
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._changed = asyncio.Event()
        self._refs = itertools.count(1)
        if greeting.get("op") == "events":
            self.events += greeting["events"]
        self._task = asyncio.ensure_future(self._pump())

    @property
    def seq(self) -> int:
        """The last seq received (or the init seq)."""
        if self.events:
            return int(self.events[-1]["seq"])
        return int(self.greeting.get("seq", 0))

    async def _pump(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                op = frame.get("op")
                if op == "events":
                    self.events += frame["events"]
                elif op in ("ack", "error"):
                    self.replies[frame.get("ref")] = frame
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self._changed.set()

    async def wait_until(self, pred: Callable[[], bool], within: float = T) -> None:
        async def loop() -> None:
            while not pred():
                if self._task.done():
                    if pred():
                        return
                    raise AssertionError(
                        f"connection closed ({self.close_code} {self.close_reason!r}) "
                        f"at seq {self.seq}"
                    )
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), within)

    async def wait_seq(self, seq: int, within: float = T) -> list[dict[str, Any]]:
        await self.wait_until(lambda: self.seq >= seq, within)
        return self.events

    async def publish(self, events: list[dict[str, Any]], within: float = T) -> dict[str, Any]:
        """Send a publish frame and wait for its ack or error."""
        ref = next(self._refs)
        await self.ws.send(json.dumps({"op": "publish", "ref": ref, "events": events}))
        await self.wait_until(lambda: ref in self.replies, within)
        return self.replies.pop(ref)

    async def wait_closed(self, within: float = T) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._task), within)
        return self.close_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 5)


async def ws_open(
    srv: Any, session_id: str, *, headers: dict[str, str] | None = None, **hello: Any
) -> WsClient:
    """Connect, send hello (``since``, ``epoch``, ``token``, ``name``), await the greeting."""
    ws = await asyncio.wait_for(
        websockets.connect(
            f"{srv.ws_url}/v1/sessions/{session_id}/ws",
            additional_headers=headers,
            max_size=None,
            open_timeout=T,
        ),
        T,
    )
    await ws.send(json.dumps({"op": "hello", **hello}))
    raw = await asyncio.wait_for(ws.recv(), T)
    greeting = json.loads(raw)
    assert greeting["op"] in ("init", "events"), greeting
    return WsClient(ws, greeting)


async def ws_rejected(srv: Any, session_id: str, **hello: Any) -> tuple[int | None, str]:
    """Connect and say hello to a session that must refuse us; returns (close code, reason)."""
    ws = await asyncio.wait_for(
        websockets.connect(f"{srv.ws_url}/v1/sessions/{session_id}/ws", open_timeout=T), T
    )
    try:
        await ws.send(json.dumps({"op": "hello", **hello}))
        with contextlib.suppress(websockets.ConnectionClosed):
            frame = await asyncio.wait_for(ws.recv(), T)
            raise AssertionError(f"expected a close, got a frame: {frame[:200]!r}")
        await asyncio.wait_for(ws.wait_closed(), T)
        return ws.close_code, ws.close_reason or ""
    finally:
        await ws.close()


# --- Server-Sent Events ----------------------------------------------------------------


class SseClient:
    """Reads an SSE stream in a task; records (event, id, data) per message."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        path: str,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.messages: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self.ended = False
        self._changed = asyncio.Event()
        self._opened = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(http, path, headers or {}, params or {}))

    async def _run(
        self, http: httpx.AsyncClient, path: str, headers: dict[str, str], params: dict[str, Any]
    ) -> None:
        try:
            async with http.stream(
                "GET", path, headers=headers, params=params, timeout=httpx.Timeout(T, read=60)
            ) as resp:
                self.status = resp.status_code
                self._opened.set()
                if resp.status_code != 200:
                    await resp.aread()
                    self.body = resp.text
                    return
                fields: dict[str, str] = {}
                async for line in resp.aiter_lines():
                    if line == "":
                        if "data" in fields or "event" in fields:
                            self._dispatch(fields)
                        fields = {}
                        continue
                    if line.startswith(":"):
                        continue
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    fields[name] = (
                        fields[name] + "\n" + value if name == "data" and name in fields else value
                    )
        finally:
            self.ended = True
            self._opened.set()
            self._changed.set()

    def _dispatch(self, fields: dict[str, str]) -> None:
        msg = {
            "event": fields.get("event", "message"),
            "id": fields.get("id"),
            "data": json.loads(fields["data"]) if "data" in fields else None,
        }
        self.messages.append(msg)
        if msg["event"] == "message":
            assert msg["id"] == str(msg["data"]["seq"]), msg
            self.events.append(msg["data"])
        self._changed.set()

    @property
    def seq(self) -> int:
        return int(self.events[-1]["seq"]) if self.events else 0

    async def opened(self) -> int | None:
        await asyncio.wait_for(self._opened.wait(), T)
        return self.status

    async def wait_until(self, pred: Callable[[], bool], within: float = T) -> None:
        async def loop() -> None:
            while not pred():
                if self._task.done():
                    self._task.result()
                    if pred():
                        return
                    raise AssertionError(f"SSE stream ended at seq {self.seq}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), within)

    async def wait_seq(self, seq: int, within: float = T) -> list[dict[str, Any]]:
        await self.wait_until(lambda: self.seq >= seq, within)
        return self.events

    async def wait_ended(self, within: float = T) -> None:
        await asyncio.wait_for(asyncio.shield(self._task), within)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._task, 5)


# --- long-poll -------------------------------------------------------------------------


async def longpoll_collect(
    http: httpx.AsyncClient,
    session_id: str,
    until_seq: int | Callable[[], int | None],
    *,
    since: int = 0,
    limit: int = 50,
    within: float = 30.0,
) -> list[dict[str, Any]]:
    """Follow the log with GET /events?wait= until ``until_seq`` (or a callable's value)."""
    out: list[dict[str, Any]] = []

    async def run() -> None:
        cursor = since
        while True:
            target = until_seq() if callable(until_seq) else until_seq
            if target is not None and cursor >= target:
                return
            resp = await http.get(
                f"/v1/sessions/{session_id}/events",
                params={"since": cursor, "limit": limit, "wait": 2},
                timeout=httpx.Timeout(T, read=10),
            )
            assert resp.status_code == 200, resp.text
            page = resp.json()["events"]
            out.extend(page)
            if page:
                cursor = page[-1]["seq"]

    await asyncio.wait_for(run(), within)
    return out


# --- a raw WebSocket that can stop reading ---------------------------------------------


class RawWs:
    """A sans-I/O WebSocket client on a socket with a small receive buffer.

    After the greeting it reads nothing until :meth:`drain`, so the server sees a reader
    whose socket stops accepting data: a stalled (or dead) consumer.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.frames: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None

    async def open(self, hello: dict[str, Any], rcvbuf: int = 4096) -> dict[str, Any]:
        parts = urlsplit(self.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port)), T)
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        self.proto.send_request(self.proto.connect())
        self._flush()
        while self.proto.handshake_exc is None and not any(
            isinstance(e, WsResponse) for e in self._pending()
        ):
            await self._read_some()
        assert self.proto.handshake_exc is None, self.proto.handshake_exc
        self.proto.send_text(json.dumps({"op": "hello", **hello}).encode())
        self._flush()
        while not self.frames:
            await self._read_some()
        return self.frames[0]

    _buffered: list[Any]

    def _pending(self) -> list[Any]:
        events = self.proto.events_received()
        self._buffered = getattr(self, "_buffered", []) + events
        for ev in events:
            if hasattr(ev, "opcode") and ev.opcode is Opcode.TEXT:
                frame = json.loads(ev.data)
                self.frames.append(frame)
                if frame.get("op") == "events":
                    self.events += frame["events"]
        return self._buffered

    def _flush(self) -> None:
        data = b"".join(self.proto.data_to_send())
        if data:
            self.writer.write(data)

    async def _read_some(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), T)
        if not data:
            self.proto.receive_eof()
            return False
        self.proto.receive_data(data)
        self._pending()
        return True

    @property
    def seq(self) -> int:
        if self.events:
            return int(self.events[-1]["seq"])
        return int(self.frames[0].get("seq", 0)) if self.frames else 0

    async def drain(self, within: float = 20.0) -> int | None:
        """Read everything until the connection ends; returns the close code received."""

        async def run() -> None:
            while await self._read_some():
                if self.proto.close_rcvd is not None:
                    break
            self.close_code = self.proto.close_rcvd.code if self.proto.close_rcvd else None

        await asyncio.wait_for(run(), within)
        return self.close_code

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
