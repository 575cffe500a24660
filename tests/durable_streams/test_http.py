"""agentsync's own rules at /v1/stream/ beyond the official suite: who may write, what is
reserved or refused, and what survives a restart."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

KEY = "stream-key-for-tests"


async def test_writes_need_the_stream_key_once_one_is_set(server_factory: Any) -> None:
    srv = server_factory(stream_key=KEY)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        plain = {"content-type": "text/plain"}
        assert (await client.put("/v1/stream/k", headers=plain)).status_code == 401
        wrong = {**plain, "authorization": "Bearer nope"}
        assert (await client.put("/v1/stream/k", headers=wrong)).status_code == 403
        right = {**plain, "authorization": f"Bearer {KEY}"}
        assert (await client.put("/v1/stream/k", headers=right, content=b"a")).status_code == 201
        assert (await client.post("/v1/stream/k", headers=plain, content=b"b")).status_code == 401
        assert (await client.delete("/v1/stream/k")).status_code == 401
        read = await client.get("/v1/stream/k")  # reads are open
        assert (read.status_code, read.text) == (200, "a")
        assert (await client.delete("/v1/stream/k", headers=right)).status_code == 204


async def test_bad_forks_and_reserved_paths_are_refused_clearly(server_factory: Any) -> None:
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/src")).status_code == 201
        fork = await client.put("/v1/stream/f", headers={"stream-forked-from": "/elsewhere/src"})
        assert fork.status_code == 400
        assert fork.json()["error"]["code"] == "bad_fork"
        assert (await client.get("/v1/stream/f")).status_code == 404  # nothing was created
        # (/v1/stream/sessions/{id} itself is the read-only session route's: 405)
        for path in ("/v1/stream/sessions/abc/x", "/v1/stream/__ds/x"):
            reserved = await client.put(path, headers={"stream-forked-from": "/v1/stream/src"})
            assert reserved.status_code == 403
            assert reserved.json()["error"]["code"] == "reserved_path"


async def test_streams_and_producers_survive_a_restart(server_factory: Any) -> None:
    srv = server_factory()
    producer = {"producer-id": "p", "producer-epoch": "3", "content-type": "text/plain"}
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        created = await client.put(
            "/v1/stream/kept", headers={"content-type": "text/plain", "stream-ttl": "3600"}
        )
        assert created.status_code == 201
        for seq in range(3):
            resp = await client.post(
                "/v1/stream/kept", headers={**producer, "producer-seq": str(seq)}, content=b"x"
            )
            assert resp.status_code == 200
        tag = (await client.get("/v1/stream/kept")).headers["etag"]
    await srv.aterminate()
    await srv.arestart()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        head = await client.head("/v1/stream/kept")
        assert head.headers["stream-ttl"] == "3600"
        assert head.headers["stream-next-offset"] == "0000000000000000_0000000000000003"
        dup = await client.post(
            "/v1/stream/kept", headers={**producer, "producer-seq": "1"}, content=b"x"
        )
        assert (dup.status_code, dup.headers["producer-seq"]) == (204, "2")
        stale = await client.post(
            "/v1/stream/kept",
            headers={**producer, "producer-epoch": "2", "producer-seq": "0"},
            content=b"x",
        )
        assert (stale.status_code, stale.headers["producer-epoch"]) == (403, "3")
        same = await client.get("/v1/stream/kept", headers={"if-none-match": tag})
        assert same.status_code == 304
        # delete and re-create: a new incarnation, old ETags and producers do not match
        assert (await client.delete("/v1/stream/kept")).status_code == 204
        assert (await client.put("/v1/stream/kept", headers=producer)).status_code == 201
        fresh = await client.get("/v1/stream/kept", headers={"if-none-match": tag})
        assert (fresh.status_code, fresh.text) == (200, "")
        again = await client.post(
            "/v1/stream/kept", headers={**producer, "producer-seq": "0"}, content=b"y"
        )
        assert again.status_code == 200


async def test_behind_a_proxy_a_loopback_bind_does_not_open_writes(server_factory: Any) -> None:
    srv = server_factory(trusted_proxies="127.0.0.1/32")
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        refused = await client.put("/v1/stream/p", headers={"content-type": "text/plain"})
        assert refused.status_code == 403 and "--stream-key" in refused.json()["error"]["message"]


async def test_an_encoded_live_parameter_still_counts_as_a_live_read(
    server_factory: Any,
) -> None:
    """``?%6Cive=sse`` is ``live=sse`` to the handler, so the connection cap must see it."""
    srv = server_factory(address_limits=True, max_connections_per_address=2)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/c", headers={"content-type": "text/plain"})).is_success
        statuses = []
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                res = await stack.enter_async_context(
                    client.stream("GET", "/v1/stream/c?offset=-1&%6Cive=sse")
                )
                statuses.append(res.status_code)
        assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses


async def test_a_huge_ttl_is_a_clear_400(server_factory: Any) -> None:
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        res = await client.put("/v1/stream/t", headers={"stream-ttl": "9" * 30})
        assert res.status_code == 400 and "Stream-TTL" in res.json()["error"]["message"]


def metric(text: str, name: str) -> float:
    """A sample's value in Prometheus text (``name`` with its labels, as printed)."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


async def test_appends_and_reads_are_counted_in_metrics(server_factory: Any) -> None:
    srv = server_factory()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        plain = {"content-type": "text/plain"}
        producer = {**plain, "producer-id": "p", "producer-epoch": "0", "producer-seq": "0"}
        assert (await client.put("/v1/stream/m", headers=plain)).status_code == 201
        assert (
            await client.post("/v1/stream/m", headers=producer, content=b"a")
        ).status_code == 200
        assert (
            await client.post("/v1/stream/m", headers=producer, content=b"a")
        ).status_code == 204
        assert (
            await client.post("/v1/stream/nope", headers=plain, content=b"a")
        ).status_code == 404
        assert (await client.get("/v1/stream/m", params={"offset": "-1"})).status_code == 200
        tail = {"offset": "now", "live": "long-poll"}
        poll = asyncio.create_task(client.get("/v1/stream/m", params=tail))
        await asyncio.sleep(0.3)
        assert (await client.post("/v1/stream/m", headers=plain, content=b"b")).status_code == 204
        assert (await poll).status_code in (200, 204)
        text = (await client.get("/metrics")).text
    assert metric(text, 'agentsync_stream_appends_total{outcome="written"}') == 2
    assert metric(text, 'agentsync_stream_appends_total{outcome="duplicate"}') == 1
    assert metric(text, 'agentsync_stream_appends_total{outcome="refused"}') == 1
    assert metric(text, 'agentsync_stream_reads_total{mode="catch-up"}') == 1
    assert metric(text, 'agentsync_stream_reads_total{mode="long-poll"}') == 1
    assert metric(text, "agentsync_streams_cached") >= 1


async def test_sse_keeps_a_character_split_across_two_appends_whole(server_factory: Any) -> None:
    """Text streams are sent as text over SSE: an append that ends inside a UTF-8 character
    and the append that completes it arrive in different data events, and still read
    'café!' rather than two replacement characters."""
    srv = server_factory()
    plain = {"content-type": "text/plain"}
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/t", headers=plain)).status_code == 201
        params = {"offset": "-1", "live": "sse"}
        text = ""
        async with client.stream("GET", "/v1/stream/t", params=params) as sse:
            lines = sse.aiter_lines()
            assert (await client.post("/v1/stream/t", headers=plain, content=b"caf\xc3")).is_success
            event = ""
            async for line in lines:
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "data":
                    text += line[5:]
                elif line.startswith("data:") and '"upToDate":true' in line and text == "caf":
                    break
            assert (await client.post("/v1/stream/t", headers=plain, content=b"\xa9!")).is_success
            async for line in lines:
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "data":
                    text += line[5:]
                    break
    assert text == "café!"


async def test_sse_of_a_closed_text_stream_ends_with_its_cut_character(server_factory: Any) -> None:
    """A closed text stream whose last append ended inside a UTF-8 character: SSE sends the
    dangling bytes (as U+FFFD, as a catch-up read decodes them) before the closing control,
    not nothing."""
    srv = server_factory()
    plain = {"content-type": "text/plain"}
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        assert (await client.put("/v1/stream/c", headers=plain)).status_code == 201
        assert (await client.post("/v1/stream/c", headers=plain, content=b"caf\xc3")).is_success
        closing = {"stream-closed": "true"}
        assert (await client.post("/v1/stream/c", headers=closing)).is_success
        text, event, closed = "", "", False
        params = {"offset": "-1", "live": "sse"}
        async with client.stream("GET", "/v1/stream/c", params=params) as sse:
            async for line in sse.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "data":
                    text += line[5:]
                elif line.startswith("data:") and '"streamClosed":true' in line:
                    closed = True
    assert closed and text == "caf\ufffd"
