"""SPEC §2.5 Isolation: no secret, no write; nothing of a token share without its token; a
deleted or expired share serves nothing and its live connections are closed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ._support import (
    SseClient,
    append,
    assert_error,
    bearer,
    client_for,
    create_share,
    db_rows,
    delta,
    message,
    read_log,
    seqs_of,
    status,
    ws_open,
    ws_rejected,
)


async def test_no_secret_no_write(server: Any, http: httpx.AsyncClient) -> None:
    share = await create_share(http)
    other = await create_share(http)
    sid = share["session_id"]
    url = f"/v1/sessions/{sid}/events"
    body = {"events": [message("m", role="user", id="intruder")]}
    assert_error(await http.post(url, json=body), 401, "unauthorized")
    assert_error(await http.post(url, json=body, headers={"Authorization": "Bearer"}), 401)
    assert_error(
        await http.post(url, json=body, headers={"Authorization": f"Basic {share['secret']}"}), 401
    )
    assert_error(await http.post(url, json=body, headers=bearer("wrong")), 403, "forbidden")
    assert_error(await http.post(url, json=body, headers=bearer(other["secret"])), 403)
    assert_error(await http.post(url, json=body, headers=bearer(share["secret"] + "x")), 403)
    assert_error(await http.post(url, json=body, params={"token": share["secret"]}), 401)
    # the delete endpoint too
    assert_error(await http.delete(f"/v1/shares/{sid}"), 401)
    assert_error(await http.delete(f"/v1/shares/{sid}", headers=bearer(other["secret"])), 403)

    # WebSocket: reading a public share is allowed, publishing is not
    for hello in ({}, {"token": "wrong"}, {"token": other["secret"]}):
        ws = await ws_open(server, sid, **hello)
        assert ws.greeting["reader"]["can_write"] is False
        reply = await ws.publish(body["events"])
        assert reply["op"] == "error" and reply["code"] == "forbidden", reply
        assert reply["message"]
        await ws.close()

    assert await read_log(http, sid) == []
    assert (await http.get(f"/v1/sessions/{sid}")).json()["seq"] == 0
    # the real secret works, and the id the intruder used was not taken
    assert (await append(http, share, body["events"]))["seqs"] == [1]


async def test_token_share_needs_its_token(server: Any, http: httpx.AsyncClient) -> None:
    share = await create_share(http, read="token", title="private")
    assert share["read"] == "token" and share["read_token"]
    sid, token, secret = share["session_id"], share["read_token"], share["secret"]
    other = await create_share(http, read="token")
    await append(http, share, [message("m", role="user", content="top secret", id="s1")])

    paths = [
        f"/v1/sessions/{sid}",
        f"/v1/sessions/{sid}/events",
        f"/v1/sessions/{sid}/export",
        f"/v1/sessions/{sid}/stream",
    ]
    for path in paths:
        resp = await http.get(path)
        assert_error(resp, 401)
        assert "top secret" not in resp.text
        assert_error(await http.get(path, headers=bearer("nope")), 403)
        assert_error(await http.get(path, headers=bearer(other["read_token"])), 403)
        assert_error(await http.get(path, params={"token": other["secret"]}), 403)
    resp = await http.get(f"/v1/sessions/{sid}/events", params={"since": 0, "wait": 1})
    assert_error(resp, 401)

    # readable with the read token (header or ?token=) or the secret
    for creds in (
        {"headers": bearer(token)},
        {"params": {"token": token}},
        {"headers": bearer(secret)},
    ):
        snap = await http.get(f"/v1/sessions/{sid}", **creds)
        assert snap.status_code == 200
        assert snap.json()["messages"][0]["content"] == "top secret"
        resp = await http.get(f"/v1/sessions/{sid}/events", **creds)
        assert seqs_of(resp.json()["events"]) == [1]
        resp = await http.get(f"/v1/sessions/{sid}/export", **creds)
        assert resp.status_code == 200 and "top secret" in resp.text
    sse = SseClient(http, f"/v1/sessions/{sid}/stream", params={"token": token, "since": 0})
    await sse.wait_seq(1)
    await sse.close()

    # the read token reads but does not write
    assert_error(
        await http.post(
            f"/v1/sessions/{sid}/events",
            json={"events": [message("x", role="user")]},
            headers=bearer(token),
        ),
        403,
    )

    # WebSocket: no token -> 4501, wrong token -> 4503, read token -> read only
    code, reason = await ws_rejected(server, sid)
    assert code == 4501 and reason
    assert (await ws_rejected(server, sid, token="nope"))[0] == 4503
    assert (await ws_rejected(server, sid, token=other["read_token"]))[0] == 4503
    assert (await ws_rejected(server, sid, since=0, epoch=share["epoch"]))[0] == 4501
    reader = await ws_open(server, sid, token=token)
    assert reader.greeting["op"] == "init"
    assert reader.greeting["snapshot"]["messages"][0]["content"] == "top secret"
    denied = await reader.publish([delta("m", "!", id="r1")])
    assert denied["op"] == "error" and denied["code"] == "forbidden"
    header_reader = await ws_open(server, sid, headers=bearer(token), since=0)
    await header_reader.wait_seq(1)
    writer = await ws_open(server, sid, token=secret)
    ack = await writer.publish([delta("m", "!", id="w1")])
    assert ack["op"] == "ack" and ack["seqs"] == [2]
    for c in (reader, header_reader, writer):
        await c.wait_seq(2)
        await c.close()
    log = await read_log(http, sid, token=token)
    assert [e["id"] for e in log] == ["s1", "w1"]


async def test_delete_closes_readers_and_serves_nothing(
    server: Any, http: httpx.AsyncClient
) -> None:
    share = await create_share(http)
    sid, secret = share["session_id"], share["secret"]
    await append(http, share, [message("m", role="user", id="e1")])
    readers = [await ws_open(server, sid), await ws_open(server, sid, since=0, name="bob")]
    writer = await ws_open(server, sid, token=secret)
    sse = SseClient(http, f"/v1/sessions/{sid}/stream", params={"since": 0})
    await sse.wait_seq(1)
    resp = await http.delete(f"/v1/shares/{sid}", headers=bearer(secret))
    assert resp.status_code == 204
    for ws in [*readers, writer]:
        code = await ws.wait_closed(5)
        assert code == 4510, (code, ws.close_reason)
    await sse.wait_ended(5)
    assert sse.messages[-1]["event"] == "error"
    assert sse.messages[-1]["data"]["error"]["code"] == "gone"

    for method, path in [
        ("GET", f"/v1/sessions/{sid}"),
        ("GET", f"/v1/sessions/{sid}/events"),
        ("GET", f"/v1/sessions/{sid}/stream"),
        ("GET", f"/v1/sessions/{sid}/export"),
        ("POST", f"/v1/sessions/{sid}/events"),
        ("DELETE", f"/v1/shares/{sid}"),
    ]:
        resp = await http.request(
            method, path, headers=bearer(secret), json={"events": [message("m2", role="user")]}
        )
        assert_error(resp, 410)
        assert "e1" not in resp.text
    assert (await ws_rejected(server, sid))[0] == 4510
    assert (await ws_rejected(server, sid, token=secret, since=0))[0] == 4510

    # nothing was left behind in the store, and it stays gone after a restart
    await server.arestart()
    assert db_rows(server, "SELECT count(*) FROM events WHERE session_id = ?", sid) == [(0,)]
    assert db_rows(server, "SELECT count(*) FROM shares WHERE id = ?", sid) == [(0,)]
    assert db_rows(server, "SELECT count(*) FROM snapshots WHERE session_id = ?", sid) == [(0,)]
    async with client_for(server) as http2:
        assert_error(await http2.get(f"/v1/sessions/{sid}"), 410)
        assert_error(await http2.get(f"/v1/sessions/{sid}/export"), 410)
        assert_error(
            await http2.post(
                f"/v1/sessions/{sid}/events",
                headers=bearer(secret),
                json={"events": [message("m3", role="user")]},
            ),
            410,
        )
    assert (await ws_rejected(server, sid))[0] == 4510


async def test_delete_while_long_polls_wait(server: Any, http: httpx.AsyncClient) -> None:
    """Long-polls waiting on a share when it is deleted answer 410, and the share stays
    deleted: no request in flight may bring it back. The store is kept busy with another
    session's appends so that the delete takes a moment to commit."""
    busy = await create_share(http)
    for trial in range(5):
        share = await create_share(http)
        sid = share["session_id"]
        await append(http, share, [message("m", role="user", id="e1")])
        url = f"/v1/sessions/{sid}/events"
        polls = [
            asyncio.ensure_future(http.get(url, params={"since": 1, "wait": 10}, timeout=20))
            for _ in range(5)
        ]
        await asyncio.sleep(0.1)
        assert not any(p.done() for p in polls)
        load = [
            asyncio.ensure_future(append(http, busy, [status("x" * 4000) for _ in range(500)]))
            for _ in range(4)
        ]
        await asyncio.sleep(0.01)
        resp = await http.delete(f"/v1/shares/{sid}", headers=bearer(share["secret"]))
        assert resp.status_code == 204
        polled = await asyncio.wait_for(asyncio.gather(*polls), 20)
        await asyncio.wait_for(asyncio.gather(*load), 20)
        assert [p.status_code for p in polled] == [410] * 5, f"trial {trial}: {polled[0].text}"
        assert_error(await http.get(f"/v1/sessions/{sid}"), 410)
        post = await http.post(
            url, headers=bearer(share["secret"]), json={"events": [status("zombie")]}
        )
        assert_error(post, 410)
        rows = db_rows(server, "SELECT count(*) FROM events WHERE session_id = ?", sid)
        assert rows == [(0,)], f"trial {trial}: events stored for a deleted share"


async def test_expired_share_closes_readers_and_serves_nothing(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, sweep_interval_seconds=0.2)
    async with client_for(srv) as http:
        share = await create_share(http, ttl_seconds=1)
        sid = share["session_id"]
        keep = await create_share(http)
        await append(http, share, [message("m", role="user", id="e1")])
        await append(http, keep, [message("m", role="user", id="k1")])
        ws = await ws_open(srv, sid, since=0)
        kept_reader = await ws_open(srv, keep["session_id"], since=0)
        sse = SseClient(http, f"/v1/sessions/{sid}/stream", params={"since": 0})
        await sse.wait_seq(1)
        code = await ws.wait_closed(5)
        assert code == 4510, (code, ws.close_reason)
        await sse.wait_ended(5)
        assert sse.messages[-1]["event"] == "error"
        assert_error(await http.get(f"/v1/sessions/{sid}"), 410)
        assert_error(await http.get(f"/v1/sessions/{sid}/events"), 410)
        assert_error(
            await http.post(
                f"/v1/sessions/{sid}/events",
                headers=bearer(share["secret"]),
                json={"events": [message("x", role="user")]},
            ),
            410,
        )
        assert (await ws_rejected(srv, sid))[0] == 4510
        # the sweeper deleted its data
        for _ in range(100):
            if db_rows(srv, "SELECT count(*) FROM events WHERE session_id = ?", sid) == [(0,)]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the expired share's events are still stored")
        # another share is untouched
        assert kept_reader.close_code is None
        await append(http, keep, [delta("m", "!", id="k2")])
        await kept_reader.wait_seq(2)
        await kept_reader.close()


async def test_expiry_without_sweeper(server_factory: Any) -> None:
    """Expiry is enforced on access even before the sweeper runs."""
    srv = server_factory(rate_limit=0, sweep_interval_seconds=3600)
    async with client_for(srv) as http:
        share = await create_share(http, ttl_seconds=1)
        sid = share["session_id"]
        await append(http, share, [message("m", role="user")])
        ws = await ws_open(srv, sid, since=0)
        await ws.wait_seq(1)
        await asyncio.sleep(1.1)
        assert_error(await http.get(f"/v1/sessions/{sid}/export"), 410)
        assert_error(
            await http.post(
                f"/v1/sessions/{sid}/events",
                headers=bearer(share["secret"]),
                json={"events": [delta("m", "x")]},
            ),
            410,
        )
        assert await ws.wait_closed(5) == 4510
        assert_error(await http.get(f"/v1/sessions/{sid}/events", params={"wait": 1}), 410)
