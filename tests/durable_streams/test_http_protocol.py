"""Appends answered by the HTTP protocol without an ASGI task (``agentsync.server.httpproto``)
must keep every promise the ASGI path kept: answers in request order on a pipelined
connection, the same refusals and headers, admission by the Guard, bodies too large for
the direct path still served, and nothing lost when a client leaves or stops reading.
These talk raw HTTP/1.1 over a socket, so that pipelining and half-read answers happen."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx

Answer = tuple[int, dict[str, str], bytes]


def post(path: str, body: bytes, **headers: str) -> bytes:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    head = {"content-type": "text/plain", "content-length": str(len(body)), **named}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"POST /v1/stream/{path} HTTP/1.1\r\nhost: t\r\n{lines}\r\n".encode() + body


def get(path: str) -> bytes:
    return f"GET /v1/stream/{path}?offset=-1 HTTP/1.1\r\nhost: t\r\n\r\n".encode()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def exchange(
    port: int, data: bytes, answers: int, rcvbuf: int = 0, pause: float = 0.0
) -> list[Answer]:
    """Write ``data`` (pipelined requests) at once, wait ``pause`` seconds, then read
    ``answers`` responses."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(data)
        await asyncio.sleep(pause)
        return [await asyncio.wait_for(read_answer(reader), 30) for _ in range(answers)]
    finally:
        writer.close()


async def stream_text(client: httpx.AsyncClient, path: str) -> str:
    return (await client.get(f"/v1/stream/{path}", params={"offset": "-1"})).text


async def test_pipelined_appends_are_answered_in_order(server_factory: Any) -> None:
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/p", headers={"content-type": "text/plain"})).is_success
        producer = {"producer_id": "w", "producer_epoch": "0"}
        requests = [
            post("p", b"a"),
            post("p", b"b", **producer, producer_seq="0"),
            get("p"),
            post("p", b"b", **producer, producer_seq="0"),  # a retry: a duplicate, not stored
            post("p", b"c"),
        ]
        answers = await exchange(srv.port, b"".join(requests), len(requests))
        assert [a[0] for a in answers] == [204, 200, 200, 204, 204]
        assert answers[2][2] == b"ab"
        offsets = [a[1].get("stream-next-offset") for a in answers]
        assert offsets[3] is None and answers[3][1]["producer-seq"] == "0"  # the duplicate's
        assert offsets[0] < offsets[1] == offsets[2] < offsets[4]  # type: ignore[operator]
        for _status, headers, _body in answers:
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["cross-origin-resource-policy"] == "cross-origin"
            assert "date" in headers
        assert await stream_text(client, "p") == "abc"


async def test_refusals_are_clear_and_keep_the_connection(server_factory: Any) -> None:
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/r", headers={"content-type": "text/plain"})).is_success
        requests = [
            post("missing", b"x"),
            post("r", b"x", content_type="application/json"),
            post("r", b"x", producer_id="w", producer_epoch="0"),  # no Producer-Seq
            post("r", b""),
            post("r", b"kept"),
        ]
        answers = await exchange(srv.port, b"".join(requests), len(requests))
        assert [a[0] for a in answers] == [404, 409, 400, 400, 204]
        for status, headers, body in answers[:4]:
            error = json.loads(body)["error"]
            assert error["message"], status
            assert headers["content-type"] == "application/json"
            assert headers["x-content-type-options"] == "nosniff"
        assert await stream_text(client, "r") == "kept"


async def test_bodies_the_direct_path_declines_are_still_appended(server_factory: Any) -> None:
    srv = server_factory(max_body_bytes=300_000)
    big = b"y" * 100_000  # beyond the protocol's read buffer: read by ASGI
    chunked = (
        b"POST /v1/stream/d HTTP/1.1\r\nhost: t\r\ncontent-type: text/plain\r\n"
        b"transfer-encoding: chunked\r\n\r\n3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n"
    )
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/d", headers={"content-type": "text/plain"})).is_success
        requests = [post("d", big), chunked, post("d", b"z" * 400_000)]
        answers = await exchange(srv.port, b"".join(requests[:2]), 2)
        assert [a[0] for a in answers] == [204, 204]
        (too_big,) = await exchange(srv.port, requests[2], 1)
        assert too_big[0] == 413
        assert await stream_text(client, "d") == big.decode() + "chunked"
    small = server_factory(max_body_bytes=10)  # below the direct path's read buffer too
    async with httpx.AsyncClient(base_url=small.url, timeout=10.0) as other:
        assert (await other.put("/v1/stream/d", headers={"content-type": "text/plain"})).is_success
        answers = await exchange(small.port, post("d", b"x" * 11) + post("d", b"x" * 10), 2)
        assert [a[0] for a in answers] == [413, 204]
        assert json.loads(answers[0][2])["error"]["code"] == "too_large"
        assert await stream_text(other, "d") == "x" * 10


async def test_expect_100_continue_is_honoured(server_factory: Any) -> None:
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/e", headers={"content-type": "text/plain"})).is_success
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        head, _, body = post("e", b"late", expect="100-continue").partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100")
        assert await reader.readline() == b"\r\n"
        writer.write(body)
        status, _headers, _body = await asyncio.wait_for(read_answer(reader), 10)
        assert status == 204
    finally:
        writer.close()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert await stream_text(client, "e") == "late"


async def test_appends_of_a_client_that_left_are_stored(server_factory: Any) -> None:
    """The client hangs up before its answer: the append still commits (it may retry with
    a producer to learn so), and the server goes on serving without an error."""
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/l", headers={"content-type": "text/plain"})).is_success
        for i in range(20):
            _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(post("l", f"{i},".encode()))
            await writer.drain()
            writer.close()
        expected = "".join(f"{i}," for i in range(20))
        for _ in range(100):
            if len(await stream_text(client, "l")) == len(expected):
                break
            await asyncio.sleep(0.05)
        assert sorted((await stream_text(client, "l")).split(",")) == sorted(expected.split(","))
        plain = {"content-type": "text/plain"}
        assert (await client.post("/v1/stream/l", content=b"!", headers=plain)).status_code == 204
    assert "Traceback" not in srv.logs()


async def test_a_client_that_reads_slowly_gets_every_answer(server_factory: Any) -> None:
    """Thousands of pipelined appends on a connection whose client reads with a tiny
    receive buffer: the server's writes pause, answers wait for the drain, and every
    append is answered once, in order, and stored once."""
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=30.0) as client:
        assert (await client.put("/v1/stream/s", headers={"content-type": "text/plain"})).is_success
        n = 20000
        data = b"".join(post("s", b"%d," % i) for i in range(n))
        answers = await exchange(srv.port, data, n, rcvbuf=2048, pause=2.0)
        assert {a[0] for a in answers} == {204}
        offsets = [a[1]["stream-next-offset"] for a in answers]
        assert offsets == sorted(set(offsets))
        assert await stream_text(client, "s") == "".join(f"{i}," for i in range(n))


async def test_direct_appends_are_admitted_by_the_guard(server_factory: Any) -> None:
    srv = server_factory(address_limits=True, ip_rate_limit=0.1, ip_rate_burst=3)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/g", headers={"content-type": "text/plain"})).is_success
    answers = await exchange(srv.port, post("g", b"1") + post("g", b"2") + post("g", b"3"), 3)
    assert [a[0] for a in answers] == [204, 204, 429]
    assert int(answers[2][1]["retry-after"]) >= 1
    assert json.loads(answers[2][2])["error"]["code"] == "rate_limited"


async def test_direct_appends_are_in_the_access_log(server_factory: Any) -> None:
    srv = server_factory(log_level="debug")
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/a", headers={"content-type": "text/plain"})).is_success
    await exchange(srv.port, post("a", b"1"), 1)
    assert '"POST /v1/stream/a HTTP/1.1" 204' in srv.logs()


async def test_idle_connections_are_closed_and_busy_ones_kept(server_factory: Any) -> None:
    """The keep-alive timer is armed once per idle spell: a connection that keeps sending
    outlives the timeout, one that goes quiet is closed after it."""
    srv = server_factory(keep_alive_seconds=0.6)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/k", headers={"content-type": "text/plain"})).is_success
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        for i in range(8):  # 1.6 s of appends, 0.2 s apart, on one connection
            writer.write(post("k", b"%d" % i))
            assert (await asyncio.wait_for(read_answer(reader), 10))[0] == 204
            await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        quiet = loop.time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        assert 0.3 < loop.time() - quiet < 3.0
    finally:
        writer.close()
