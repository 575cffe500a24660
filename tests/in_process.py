"""The server's ASGI app around a hub a test built, driven in-process.

HTTP goes through httpx's ASGI transport; WebSocket and SSE, which that transport cannot
stream, through raw ASGI messages. Everything runs on the test's own event loop, beside
the hubs, stores and buses the test holds (tests/e2e/ starts real servers instead).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import MutableMapping
from typing import Any

import httpx
import orjson
from starlette.types import ASGIApp

from agentsync.hub import Hub
from agentsync.limits import AddressLimits
from agentsync.server.app import Node, create_app

T = 5.0  # bound on any wait here
Message = MutableMapping[str, Any]


def app_for(hub: Hub) -> ASGIApp:
    """The node's app over ``hub`` (already started: the app's lifespan is not run)."""
    config = dataclasses.replace(hub.config, address_limits=False)
    return create_app(Node(config, hub.store, hub.metrics, hub, AddressLimits(config)))


def http_client(hub: Hub) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app_for(hub)), base_url="http://agentsync.test"
    )


def _scope(kind: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws" if kind == "websocket" else "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("agentsync.test", 80),
        "subprotocols": [],
    }


async def ws_greeting(hub: Hub, session_id: str, hello: dict[str, Any]) -> dict[str, Any]:
    """Open the session's WebSocket, send ``hello``; the server's first frame, or
    ``{"closed": code}`` when it closed the connection instead."""
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    sent: asyncio.Queue[Message] = asyncio.Queue()
    incoming.put_nowait({"type": "websocket.connect"})
    incoming.put_nowait({"type": "websocket.receive", "text": orjson.dumps(hello).decode()})
    scope = _scope("websocket", f"/v1/sessions/{session_id}/ws", {})
    task = asyncio.ensure_future(app_for(hub)(scope, incoming.get, sent.put))
    try:
        while True:
            message = await asyncio.wait_for(sent.get(), T)
            if message["type"] == "websocket.send":
                frame: dict[str, Any] = orjson.loads(message["text"])
                return frame
            if message["type"] == "websocket.close":
                return {"closed": message["code"]}
    finally:
        incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, T)


async def sse_first(
    hub: Hub, session_id: str, headers: dict[str, str]
) -> list[tuple[str, str, bytes]]:
    """Open the session's event stream; the (event, id, data) of its first chunk with
    data in it, then disconnect."""
    requests: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]
    disconnect = asyncio.Event()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    async def receive() -> Message:
        if requests:
            return requests.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message["type"] == "http.response.body":
            chunks.put_nowait(message.get("body", b""))

    scope = _scope("http", f"/v1/sessions/{session_id}/stream", headers)
    task = asyncio.ensure_future(app_for(hub)(scope, receive, send))
    try:
        while True:
            chunk = await asyncio.wait_for(chunks.get(), T)
            if b"data:" in chunk:
                return _parse_sse(chunk)
    finally:
        disconnect.set()
        await asyncio.wait_for(task, T)


def _parse_sse(chunk: bytes) -> list[tuple[str, str, bytes]]:
    out = []
    for block in chunk.split(b"\n\n"):
        fields: dict[bytes, bytes] = {}
        for line in block.split(b"\n"):
            name, _, value = line.partition(b": ")
            fields[name] = value
        if b"data" in fields:
            out.append(
                (
                    fields.get(b"event", b"message").decode(),
                    fields.get(b"id", b"").decode(),
                    fields[b"data"],
                )
            )
    return out
