"""Bad input gets the documented status with a message saying what was wrong, and changes
nothing that is stored (checked by reading the log back). Rate limits answer 429 with
Retry-After."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from ._support import (
    T,
    append,
    assert_error,
    bearer,
    client_for,
    create_share,
    delta,
    ids_of,
    message,
    read_log,
    seqs_of,
    status,
    ws_open,
    ws_rejected,
)

GOOD = {"id": "good", "type": "status", "data": {"status": "thinking"}}
MISSING = "nosuchsessionxxxxxxxxx"


def raw(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"Content-Type": "application/json"}}


# (name, request kwargs, status, error code or None); every body also carries GOOD when it
# can, so that a server that half-accepts a bad batch is caught by the log check
BAD_APPENDS: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("malformed json", raw(b'{"events": [{"type": "status", '), 400, "malformed_json"),
    ("not json at all", raw(b"hello"), 400, "malformed_json"),
    ("empty body", raw(b""), 400, None),
    (
        "non-utf8 body",
        raw(b'{"events": [{"type": "status", "data": {"status": "\xff\xfe"}}]}'),
        400,
        None,
    ),
    ("body is an array", {"json": [GOOD]}, 400, None),
    ("missing events", {"json": {"event": [GOOD]}}, 400, None),
    ("events not a list", {"json": {"events": GOOD}}, 400, None),
    ("empty batch", {"json": {"events": []}}, 400, None),
    ("event not an object", {"json": {"events": [GOOD, "status"]}}, 422, None),
    (
        "unknown type",
        {"json": {"events": [GOOD, {"type": "telepathy", "data": {}}]}},
        422,
        "unknown_type",
    ),
    ("missing type", {"json": {"events": [GOOD, {"data": {"status": "x"}}]}}, 422, "missing_field"),
    ("missing data", {"json": {"events": [GOOD, {"type": "status"}]}}, 422, "missing_field"),
    (
        "data not object",
        {"json": {"events": [GOOD, {"type": "status", "data": "idle"}]}},
        422,
        "wrong_type",
    ),
    (
        "status wrong type",
        {"json": {"events": [GOOD, {"type": "status", "data": {"status": 3}}]}},
        422,
        "wrong_type",
    ),
    (
        "status missing",
        {"json": {"events": [GOOD, {"type": "status", "data": {}}]}},
        422,
        "missing_field",
    ),
    (
        "message no role",
        {"json": {"events": [GOOD, {"type": "message", "data": {"id": "m"}}]}},
        422,
        "missing_field",
    ),
    (
        "message bad role",
        {"json": {"events": [GOOD, {"type": "message", "data": {"id": "m", "role": "god"}}]}},
        422,
        None,
    ),
    (
        "message content not str",
        {
            "json": {
                "events": [
                    GOOD,
                    {"type": "message", "data": {"id": "m", "role": "user", "content": 5}},
                ]
            }
        },
        422,
        "wrong_type",
    ),
    (
        "delta unknown message",
        {
            "json": {
                "events": [GOOD, {"type": "message.delta", "data": {"id": "ghost", "delta": "x"}}]
            }
        },
        422,
        "unknown_message",
    ),
    (
        "delta not str",
        {"json": {"events": [GOOD, {"type": "message.delta", "data": {"id": "m", "delta": 1}}]}},
        422,
        "wrong_type",
    ),
    (
        "tool_call unknown message",
        {
            "json": {
                "events": [
                    GOOD,
                    {
                        "type": "tool_call",
                        "data": {"messageId": "ghost", "id": "c", "name": "ls", "arguments": {}},
                    },
                ]
            }
        },
        422,
        "unknown_message",
    ),
    (
        "tool_result missing call id",
        {
            "json": {
                "events": [GOOD, {"type": "tool_result", "data": {"messageId": "m", "output": "x"}}]
            }
        },
        422,
        "missing_field",
    ),
    (
        "id not a string",
        {"json": {"events": [GOOD, {"id": 7, "type": "status", "data": {"status": "x"}}]}},
        422,
        "wrong_type",
    ),
    (
        "id empty",
        {"json": {"events": [GOOD, {"id": "", "type": "status", "data": {"status": "x"}}]}},
        422,
        None,
    ),
    (
        "id too long",
        {"json": {"events": [GOOD, {"id": "i" * 129, "type": "status", "data": {"status": "x"}}]}},
        422,
        None,
    ),
    (
        "ts negative",
        {"json": {"events": [GOOD, {"type": "status", "data": {"status": "x"}, "ts": -1}]}},
        422,
        None,
    ),
    (
        "ts a string",
        {"json": {"events": [GOOD, {"type": "status", "data": {"status": "x"}, "ts": "now"}]}},
        422,
        "wrong_type",
    ),
    (
        "ts a bool",
        {"json": {"events": [GOOD, {"type": "status", "data": {"status": "x"}, "ts": True}]}},
        422,
        "wrong_type",
    ),
    (
        "event too large",
        {"json": {"events": [GOOD, {"type": "status", "data": {"status": "x" * 5000}}]}},
        413,
        "too_large",
    ),
    (
        "batch too large",
        {"json": {"events": [GOOD] + [{"type": "status", "data": {"status": "x"}}] * 20}},
        413,
        "too_large",
    ),
    (
        "body too large",
        raw(b'{"events": [' + b'{"type":"status","data":{"status":"x"}},' * 2000 + b"]}"),
        413,
        "too_large",
    ),
]


@pytest.fixture
def strict_server(server_factory: Any) -> Any:
    return server_factory(
        rate_limit=0, max_event_bytes=4096, max_batch=20, max_body_bytes=64 * 1024
    )


async def test_bad_appends_are_rejected_and_change_nothing(strict_server: Any) -> None:
    async with client_for(strict_server) as http:
        share = await create_share(http)
        sid = share["session_id"]
        before = await append(
            http, share, [message("m", role="user", id="m0"), status("idle", id="s0")]
        )
        assert before["seqs"] == [1, 2]
        url = f"/v1/sessions/{sid}/events"
        failures = []
        for name, kwargs, want, code in BAD_APPENDS:
            kwargs = dict(kwargs)
            headers = {**bearer(share["secret"]), **kwargs.pop("headers", {})}
            resp = await http.post(url, headers=headers, **kwargs)
            try:
                err = assert_error(resp, want, code)
                assert len(err["message"]) > 10
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(f"{name}: {exc!r} -> {resp.status_code} {resp.text[:200]}")
        assert not failures, "\n".join(failures)

        log = await read_log(http, sid)
        assert ids_of(log) == ["m0", "s0"], "a rejected request changed the log"
        snap = (await http.get(f"/v1/sessions/{sid}")).json()
        assert snap["seq"] == 2 and snap["status"] == "idle"
        # the id of the good event in every rejected batch was not taken
        assert (await append(http, share, [GOOD]))["seqs"] == [3]


async def test_messages_name_the_problem(strict_server: Any) -> None:
    async with client_for(strict_server) as http:
        share = await create_share(http)
        url = f"/v1/sessions/{share['session_id']}/events"
        resp = await http.post(
            url,
            headers=bearer(share["secret"]),
            json={"events": [GOOD, {"type": "telepathy", "data": {}}]},
        )
        msg = assert_error(resp, 422)["message"]
        assert "events[1]" in msg and "telepathy" in msg
        resp = await http.post(
            url,
            headers=bearer(share["secret"]),
            json={"events": [{"type": "status", "data": {"status": 3}}]},
        )
        msg = assert_error(resp, 422)["message"]
        assert "status" in msg and "int" in msg
        resp = await http.post(
            url,
            headers=bearer(share["secret"]),
            json={"events": [{"type": "status", "data": {"status": "x" * 5000}}]},
        )
        assert "4096" in assert_error(resp, 413)["message"]


async def test_bad_queries_and_unknown_sessions(server: Any, http: httpx.AsyncClient) -> None:
    share = await create_share(http)
    sid = share["session_id"]
    await append(http, share, [GOOD])
    url = f"/v1/sessions/{sid}/events"
    for params in (
        {"since": "abc"},
        {"since": -1},
        {"limit": 0},
        {"limit": "x"},
        {"wait": -1},
        {"wait": "soon"},
        {"wait": 1000},
    ):
        assert_error(await http.get(url, params=params), 400)
    assert_error(await http.get(f"/v1/sessions/{sid}/stream", params={"since": "x"}), 400)

    for method, path in [
        ("GET", f"/v1/sessions/{MISSING}"),
        ("GET", f"/v1/sessions/{MISSING}/events"),
        ("POST", f"/v1/sessions/{MISSING}/events"),
        ("GET", f"/v1/sessions/{MISSING}/stream"),
        ("GET", f"/v1/sessions/{MISSING}/export"),
        ("DELETE", f"/v1/shares/{MISSING}"),
        ("GET", "/v1/nothing-here"),
    ]:
        resp = await http.request(
            method, path, headers=bearer(share["secret"]), json={"events": [GOOD]}
        )
        assert_error(resp, 404, "not_found")
    assert (await ws_rejected(server, MISSING))[0] == 4504

    for body in (
        {"ttl_seconds": 0},
        {"ttl_seconds": "1"},
        {"ttl_seconds": 10**12},
        {"read": "secret"},
        {"title": 5},
    ):
        assert_error(await http.post("/v1/shares", json=body), 400)
    assert_error(
        await http.post(
            "/v1/shares", content=b"{nope", headers={"Content-Type": "application/json"}
        ),
        400,
    )
    assert_error(await http.post("/v1/shares", json=["x"]), 400)
    assert seqs_of(await read_log(http, sid)) == [1]


async def test_bad_websocket_frames(server: Any, http: httpx.AsyncClient) -> None:
    share = await create_share(http)
    sid, secret = share["session_id"], share["secret"]
    await append(http, share, [message("m", role="user", id="m0")])

    # the first frame must be a hello; a bad hello is a protocol error (terminal)
    for first in (
        "not json",
        json.dumps({"op": "publish", "events": [GOOD]}),
        json.dumps([1]),
        json.dumps({"op": "hello", "since": "3"}),
        json.dumps({"op": "hello", "token": 5}),
    ):
        async with websockets.connect(
            f"{server.ws_url}/v1/sessions/{sid}/ws", open_timeout=T
        ) as ws:
            await ws.send(first)
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4500, (first, ws.close_code)
            assert ws.close_reason

    writer = await ws_open(server, sid, token=secret)
    bad_batches: list[tuple[Any, str]] = [
        ([GOOD, {"type": "telepathy", "data": {}}], "unknown_type"),
        ([GOOD, delta("ghost", "x")], "unknown_message"),
        ("nope", "wrong_type"),
        ([], "bad_request"),
        (None, "wrong_type"),
    ]
    for events, code in bad_batches:
        ref = f"r-{code}"
        await writer.ws.send(json.dumps({"op": "publish", "ref": ref, "events": events}))
        await writer.wait_until(lambda ref=ref: ref in writer.replies)
        reply = writer.replies.pop(ref)
        assert reply["op"] == "error" and reply["code"] == code and reply["message"], reply
    await writer.ws.send(json.dumps({"op": "dance", "ref": "d"}))
    await writer.wait_until(lambda: "d" in writer.replies)
    assert writer.replies["d"]["op"] == "error"
    await writer.ws.send(json.dumps({"op": "ping", "ref": "p"}))
    await writer.wait_until(lambda: any(f.get("op") == "pong" for f in writer.frames))
    # still usable after errors
    ack = await writer.publish([GOOD])
    assert ack["op"] == "ack" and ack["seqs"] == [2]
    # garbage mid-stream ends the connection with a protocol error
    await writer.ws.send("}{")
    assert await writer.wait_closed() == 4500
    assert ids_of(await read_log(http, sid)) == ["m0", "good"]


async def test_rate_limit_429_with_retry_after(server_factory: Any) -> None:
    srv = server_factory(rate_limit=2, rate_burst=5)
    async with client_for(srv) as http:
        share = await create_share(http)
        other = await create_share(http)
        sid = share["session_id"]
        assert (await append(http, share, [status(str(i), id=f"ok{i}") for i in range(5)]))[
            "seqs"
        ] == [1, 2, 3, 4, 5]
        resp = await http.post(
            f"/v1/sessions/{sid}/events",
            headers=bearer(share["secret"]),
            json={"events": [status("x", id="limited")]},
        )
        err = assert_error(resp, 429, "rate_limited")
        assert err["message"]
        retry_after = resp.headers.get("Retry-After")
        assert retry_after is not None and retry_after.isdigit() and 1 <= int(retry_after) <= 5, (
            retry_after
        )
        ws = await ws_open(srv, sid, token=share["secret"])
        reply = await ws.publish([status("y", id="limited-ws")])
        assert reply["op"] == "error" and reply["code"] == "rate_limited", reply
        assert reply["retry_after"] > 0
        await ws.close()
        # the limit is per session: another share still writes
        assert (await append(http, other, [status("z")]))["seqs"] == [1]
        # nothing of the limited requests was stored; after Retry-After the write succeeds
        assert ids_of(await read_log(http, sid)) == [f"ok{i}" for i in range(5)]
        await asyncio.sleep(float(retry_after))
        assert (await append(http, share, [status("x", id="limited")]))["seqs"] == [6]
