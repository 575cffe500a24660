"""Behind a proxy that refuses WebSocket upgrades, the SDK falls back to HTTP by itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from agentsync.client import AsyncShare, ReceivedEvent, Snapshot

pytestmark = pytest.mark.timeout(60)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


REFUSED: list[bytes] = []


@contextlib.asynccontextmanager
async def no_websockets_proxy(target: str) -> AsyncIterator[str]:
    """A TCP proxy to ``target`` that answers every WebSocket upgrade with 426."""
    parts = urlsplit(target)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        head = await client_r.readuntil(b"\r\n\r\n")
        if b"upgrade: websocket" in head.lower():
            REFUSED.append(head)
            client_w.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")  # fmt: skip
            await client_w.drain()
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection(parts.hostname, parts.port)
        server_w.write(head)
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.close()


async def test_falls_back_to_http_when_websockets_are_refused(srv: Any, tmp_path: Path) -> None:
    async with no_websockets_proxy(srv.url) as url:
        share = await AsyncShare.create(url, outbox=tmp_path / "o.db")
        mid = share.add_message("assistant")
        for i in range(100):
            share.stream_text(mid, f"{i} ")
        items = share.subscribe()
        async with asyncio.timeout(20):
            await share.flush()
            assert isinstance(await anext(items), Snapshot)
            share.set_status("done")
            while True:
                item = await anext(items)
                if isinstance(item, ReceivedEvent) and item.type == "status":
                    break
        await items.aclose()
        await share.close()
    assert REFUSED, "the SDK never tried a WebSocket"
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as http:
        snap = (await http.get(f"/v1/sessions/{share.session_id}")).json()
    assert snap["messages"][0]["content"] == "".join(f"{i} " for i in range(100))
    assert snap["status"] == "done"
