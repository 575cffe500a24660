"""Sessions read as Durable Streams at ``/v1/stream/sessions/{id}``, against a real server.

The stream must be exactly the session's log (``/events``), one JSON message per event,
with offsets that resume without gap or duplicate, and must keep agentsync's rules: the
share's read token, 410 once deleted or expired, writes only through ``/v1/sessions``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from e2e._support import append, bearer, create_share, message, read_log, status, uid

LONG_POLL_SECONDS = 1.0
WAKE_LONG_POLL_SECONDS = 2.0  # the margin of a woken long-poll under a loaded CI


def offset(seq: int) -> str:
    return f"{0:016d}_{seq:016d}"


def url(share: dict[str, Any]) -> str:
    return f"/v1/stream/sessions/{share['session_id']}"


def conversation(n: int) -> list[dict[str, Any]]:
    return [message(f"m{i}", f"hello {i}", id=uid()) for i in range(n)]


async def read_stream(
    http: httpx.AsyncClient, path: str, start: str = "-1", **kw: Any
) -> tuple[list[dict[str, Any]], str, int]:
    """Every message from ``start`` to the tail, the offset to resume from, and how many
    responses it took."""
    items: list[dict[str, Any]] = []
    pages = 0
    while True:
        resp = await http.get(path, params={"offset": start}, **kw)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/json"
        pages += 1
        items += resp.json()
        start = resp.headers["stream-next-offset"]
        if resp.headers.get("stream-up-to-date") == "true":
            return items, start, pages


async def sse_events(resp: httpx.Response) -> Any:
    """``(event, data)`` pairs of an SSE response, as they arrive."""
    kind, data = "message", []
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


async def test_catch_up_is_the_session_log_and_resumes_exactly(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, max_frame_events=4)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create_share(http, title="as a stream")
        for _ in range(3):
            await append(http, share, conversation(3))
        log = await read_log(http, share["session_id"])
        items, tail, pages = await read_stream(http, url(share))
        assert items == log  # the event envelopes, in seq order
        assert tail == offset(9)
        assert pages == 3  # paged by --max-frame-events
        first = await http.get(url(share))
        assert first.status_code == 200
        assert first.content.startswith(b'[{"seq":1,')
        assert "stream-up-to-date" not in first.headers
        assert first.headers["stream-next-offset"] == offset(4)
        assert first.headers["cache-control"] == "private, no-cache"
        # the same read again: 304 without a body; the ETag names the epoch
        tag = first.headers["etag"]
        assert share["epoch"] in tag
        same = await http.get(url(share), headers={"if-none-match": tag})
        assert (same.status_code, same.content) == (304, b"")

        # resume from a saved offset: exactly the rest, then what came after
        saved = first.headers["stream-next-offset"]
        await append(http, share, conversation(2))
        rest, tail, _ = await read_stream(http, url(share), saved)
        assert [e["seq"] for e in rest] == list(range(5, 12))
        assert rest == (await read_log(http, share["session_id"]))[4:]
        assert tail == offset(11)
        at_tail = await http.get(url(share), params={"offset": tail})
        assert (at_tail.status_code, at_tail.content) == (200, b"[]")
        assert at_tail.headers["stream-next-offset"] == tail
        assert at_tail.headers["stream-up-to-date"] == "true"

        now = await http.get(url(share), params={"offset": "now"})
        assert (now.status_code, now.content) == (200, b"[]")
        assert now.headers["stream-next-offset"] == tail
        assert now.headers["cache-control"] == "no-store"
        assert "etag" not in now.headers

        head = await http.head(url(share))
        assert head.status_code == 200
        assert head.headers["stream-next-offset"] == tail
        assert head.headers["content-type"] == "application/json"
        assert head.headers["cache-control"] == "no-store"
        expires = head.headers["stream-expires-at"]
        assert expires.endswith("Z") and expires[:4].isdigit()

        beyond = await http.get(url(share), params={"offset": offset(12)})
        assert beyond.status_code == 400
        assert beyond.json()["error"]["code"] == "offset_beyond_tail"
        for bad in ("abc", "1_2_3", "0000000000000001_0000000000000001", ""):
            assert (await http.get(url(share), params={"offset": bad})).status_code == 400
        unknown = await http.get("/v1/stream/sessions/no-such-session")
        assert unknown.status_code == 404


async def test_long_poll_waits_for_the_next_event(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, stream_long_poll_seconds=WAKE_LONG_POLL_SECONDS)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create_share(http)
        await append(http, share, conversation(2))

        # data already there: at once
        ready = await http.get(url(share), params={"offset": offset(1), "live": "long-poll"})
        assert ready.status_code == 200
        assert [e["seq"] for e in ready.json()] == [2]
        assert ready.headers["stream-cursor"]

        # at the tail: waits, and wakes on the next event
        async def poll(start: str) -> httpx.Response:
            return await http.get(url(share), params={"offset": start, "live": "long-poll"})

        for start in (offset(2), "now"):
            waiting = asyncio.create_task(poll(start))
            # Time for the request to reach the server: a "now" poll that arrived after the
            # append would wait for the event after it and time out.
            await asyncio.sleep(1.0)
            assert not waiting.done()
            began = time.monotonic()
            event = status("thinking", id=uid())
            await append(http, share, [event])
            woke = await asyncio.wait_for(waiting, 5)
            assert time.monotonic() - began < WAKE_LONG_POLL_SECONDS - 0.5  # woken, not timed out
            assert woke.status_code == 200
            got = woke.json()
            assert [e["id"] for e in got] == [event["id"]]
            assert woke.headers["stream-next-offset"] == offset(got[0]["seq"])
            assert woke.headers["stream-up-to-date"] == "true"

        # nothing comes: 204 at the tail after the server's timeout
        began = time.monotonic()
        idle = await poll(offset(4))
        waited = time.monotonic() - began
        assert WAKE_LONG_POLL_SECONDS * 0.8 <= waited < WAKE_LONG_POLL_SECONDS + 3
        assert idle.status_code == 204
        assert idle.headers["stream-next-offset"] == offset(4)
        assert idle.headers["stream-up-to-date"] == "true"
        assert idle.headers["stream-cursor"]
        no_offset = await http.get(url(share), params={"live": "long-poll"})
        assert no_offset.status_code == 400


async def test_sse_sends_data_then_control_and_tails(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, stream_long_poll_seconds=LONG_POLL_SECONDS)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create_share(http)
        await append(http, share, conversation(3))
        log = await read_log(http, share["session_id"])
        later = conversation(2)
        seen: list[tuple[str, Any]] = []
        async with http.stream(
            "GET", url(share), params={"offset": offset(1), "live": "sse"}
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream"
            async with asyncio.timeout(10):
                async for kind, data in sse_events(resp):
                    seen.append((kind, orjson.loads(data)))
                    if kind != "control":
                        continue
                    if seen[-1][1]["streamNextOffset"] == offset(3):
                        await append(http, share, later)
                    if seen[-1][1]["streamNextOffset"] == offset(5):
                        break
        kinds = [k for k, _ in seen]
        assert kinds[0] == "data"
        assert all(kinds[i + 1] == "control" for i, k in enumerate(kinds) if k == "data")
        items = [m for k, batch in seen if k == "data" for m in batch]
        full = await read_log(http, share["session_id"])
        assert items == log[1:] + full[3:]  # no gap, no duplicate
        assert [e["id"] for e in full[3:]] == [e["id"] for e in later]
        controls = [c for k, c in seen if k == "control"]
        assert controls[0]["streamNextOffset"] == offset(3)
        assert controls[0]["upToDate"] is True
        assert all(c["streamCursor"] for c in controls)
        assert "streamClosed" not in controls[-1]

        # offset=now: starts at the tail with a control event
        async with http.stream("GET", url(share), params={"offset": "now", "live": "sse"}) as r:
            async with asyncio.timeout(5):
                kind, data = await anext(sse_events(r))
        assert kind == "control"
        assert orjson.loads(data)["streamNextOffset"] == offset(5)


async def test_a_token_share_needs_its_read_token(server: Any, http: httpx.AsyncClient) -> None:
    share = await create_share(http, read="token")
    await append(http, share, conversation(2))
    for params in ({}, {"offset": "-1", "live": "long-poll"}, {"offset": "-1", "live": "sse"}):
        assert (await http.get(url(share), params=params)).status_code == 401
        wrong = await http.get(url(share), params=params, headers=bearer("not-the-token"))
        assert wrong.status_code == 403
    assert (await http.head(url(share))).status_code == 401
    assert (await http.head(url(share), headers=bearer("nope"))).status_code == 403
    for credential in (share["read_token"], share["secret"]):
        items, tail, _ = await read_stream(http, url(share), headers=bearer(credential))
        assert len(items) == 2 and tail == offset(2)
    head = await http.head(url(share), headers=bearer(share["read_token"]))
    assert head.status_code == 200


async def test_deleted_and_expired_shares_are_gone(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, stream_long_poll_seconds=5)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create_share(http)
        await append(http, share, conversation(1))
        waiting = asyncio.create_task(
            http.get(url(share), params={"offset": offset(1), "live": "long-poll"})
        )
        await asyncio.sleep(0.3)
        deleted = await http.delete(
            f"/v1/shares/{share['session_id']}", headers=bearer(share["secret"])
        )
        assert deleted.status_code == 204
        assert (await asyncio.wait_for(waiting, 3)).status_code == 410  # woken, not at 5 s
        for params in ({}, {"offset": "now"}, {"offset": "-1", "live": "sse"}):
            gone = await http.get(url(share), params=params)
            assert gone.status_code == 410
            assert gone.json()["error"]["code"] == "gone"
        assert (await http.head(url(share))).status_code == 410

        short = await create_share(http, ttl_seconds=1)
        assert (await http.get(url(short))).status_code == 200
        await asyncio.sleep(1.2)
        assert (await http.get(url(short))).status_code == 410
        assert (await http.head(url(short))).status_code == 410


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
async def test_writes_are_refused_with_405(
    server: Any, http: httpx.AsyncClient, method: str
) -> None:
    share = await create_share(http)
    resp = await http.request(
        method,
        url(share),
        content=b'{"a":1}',
        headers={"content-type": "application/json", **bearer(share["secret"])},
    )
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, HEAD, OPTIONS"
    err = resp.json()["error"]
    assert err["code"] == "read_only_stream"
    assert f"/v1/sessions/{share['session_id']}/events" in err["message"]
    assert await read_log(http, share["session_id"]) == []
