"""Issue 3: every limit answers with its documented refusal and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
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
    db_rows,
    last_seq,
    message,
    status,
    ws_open,
)

ADMIN = "operator-key-for-tests"


async def test_per_address_request_limit(server_factory: Any) -> None:
    srv = server_factory(address_limits=True, ip_rate_limit=1, ip_rate_burst=5)
    async with client_for(srv) as http:
        answers = [(await http.get("/v1/sessions/unknown")).status_code for _ in range(5)]
        assert answers == [404] * 5
        refused = await http.get("/v1/sessions/unknown")
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1


async def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(server_factory: Any) -> None:
    untrusted = server_factory(address_limits=True, ip_rate_limit=1, ip_rate_burst=2)
    async with client_for(untrusted) as http:
        codes = [
            (await http.get("/nope", headers={"X-Forwarded-For": f"10.0.0.{i}"})).status_code
            for i in range(4)
        ]
        assert codes[2:] == [429, 429]  # spoofed addresses do not escape the limit
    trusted = server_factory(
        address_limits=True, ip_rate_limit=1, ip_rate_burst=2, trusted_proxies="127.0.0.1"
    )
    async with client_for(trusted) as http:
        codes = [
            (await http.get("/nope", headers={"X-Forwarded-For": f"10.0.0.{i}"})).status_code
            for i in range(4)
        ]
        assert codes == [404] * 4  # each forwarded client has its own bucket
        same = [
            (await http.get("/nope", headers={"X-Forwarded-For": "10.9.9.9"})).status_code
            for _ in range(3)
        ]
        assert same[-1] == 429


async def test_websocket_connect_limit_closes_resumably(server_factory: Any) -> None:
    srv = server_factory(address_limits=True, ws_connect_rate=0.5, ws_connect_burst=2, rate_limit=0)
    async with client_for(srv) as http:
        share = await create_share(http)
    opened = [await ws_open(srv, share["session_id"]) for _ in range(2)]
    ws = await websockets.connect(f"{srv.ws_url}/v1/sessions/{share['session_id']}/ws")
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 4029
    for client in opened:
        await client.close()


async def test_connections_per_address_and_per_session(server_factory: Any) -> None:
    srv = server_factory(
        address_limits=True, max_connections_per_address=3, max_connections_per_session=2
    )
    async with client_for(srv) as http:
        a = await create_share(http)
        b = await create_share(http)
        first = [await ws_open(srv, a["session_id"]) for _ in range(2)]
        # the session is full: a third reader is closed with 4003 (resumable)
        ws = await websockets.connect(f"{srv.ws_url}/v1/sessions/{a['session_id']}/ws")
        await ws.send(json.dumps({"op": "hello"}))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 4003
        # the address has 2 open; one more is allowed, the next is refused before hello
        third = await ws_open(srv, b["session_id"])
        ws2 = await websockets.connect(f"{srv.ws_url}/v1/sessions/{b['session_id']}/ws")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws2.recv(), T)
        assert ws2.close_code == 4003
        sse = await http.get(f"/v1/sessions/{b['session_id']}/stream")
        assert_error(sse, 429, "too_many_connections")
        for client in [*first, third]:
            await client.close()
        # closing frees the slots
        again = await ws_open(srv, a["session_id"])
        await again.close()


async def test_share_creation_per_hour(server_factory: Any) -> None:
    srv = server_factory(address_limits=True, shares_per_hour=2)
    async with client_for(srv) as http:
        await create_share(http)
        await create_share(http)
        refused = await http.post("/v1/shares", json={})
        assert_error(refused, 429, "rate_limited")
        assert "retry-after" in refused.headers


async def test_events_per_session(server_factory: Any) -> None:
    srv = server_factory(max_session_events=3, rate_limit=0)
    async with client_for(srv) as http:
        share = await create_share(http)
        sid, secret = share["session_id"], share["secret"]
        await append(http, share, [status("a"), status("b")])
        resp = await http.post(
            f"/v1/sessions/{sid}/events",
            headers=bearer(secret),
            json={"events": [status("c"), status("d")]},
        )
        assert_error(resp, 413, "session_full")
        assert await last_seq(http, sid) == 2


async def test_websocket_frame_size(server_factory: Any) -> None:
    srv = server_factory(max_frame_bytes=4096, rate_limit=0)
    async with client_for(srv) as http:
        share = await create_share(http)
        client = await ws_open(srv, share["session_id"], token=share["secret"])
        big = message("m", "x" * 10_000)
        with contextlib.suppress(websockets.ConnectionClosed):
            await client.ws.send(json.dumps({"op": "publish", "ref": 1, "events": [big]}))
        assert await client.wait_closed() == 1009
        assert await last_seq(http, share["session_id"]) == 0


async def test_websocket_publish_rate_per_address(server_factory: Any) -> None:
    srv = server_factory(address_limits=True, ws_publish_rate=1, ws_publish_burst=2, rate_limit=0)
    async with client_for(srv) as http:
        share = await create_share(http)
        client = await ws_open(srv, share["session_id"], token=share["secret"])
        acks = [await client.publish([status(str(i))]) for i in range(3)]
        assert [a["op"] for a in acks] == ["ack", "ack", "error"]
        assert acks[2]["code"] == "rate_limited" and acks[2]["retry_after"] > 0
        assert await last_seq(http, share["session_id"]) == 2
        await client.close()


async def test_origin_check(server_factory: Any) -> None:
    srv = server_factory()
    async with client_for(srv) as http:
        sid = (await create_share(http))["session_id"]
    own = await ws_open(srv, sid, headers={"Origin": srv.url})
    await own.close()
    ws = await websockets.connect(
        f"{srv.ws_url}/v1/sessions/{sid}/ws", additional_headers={"Origin": "https://evil.test"}
    )
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 4503
    open_srv = server_factory(allowed_origins="https://app.test")
    async with client_for(open_srv) as http:
        sid2 = (await create_share(http))["session_id"]
    listed = await ws_open(open_srv, sid2, headers={"Origin": "https://app.test"})
    await listed.close()


async def test_cors_and_security_headers(server: Any, http: httpx.AsyncClient) -> None:
    preflight = await http.options(
        "/v1/shares",
        headers={
            "Origin": "https://app.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://app.test")
    share = await create_share(http)
    page = await http.get(f"/share/{share['session_id']}")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    api = await http.get("/healthz")
    assert api.headers["x-content-type-options"] == "nosniff"


async def test_tokens_never_reach_the_log(server_factory: Any) -> None:
    srv = server_factory(log_level="debug")
    async with client_for(srv) as http:
        share = await create_share(http, read="token")
        token = share["read_token"]
        sid = share["session_id"]
        assert (await http.get(f"/v1/sessions/{sid}?token={token}")).status_code == 200
        client = await ws_open(srv, sid, token=token)
        await client.close()
        await http.get(f"/v1/sessions/{sid}/events?since=0&token={token}")
    await asyncio.sleep(0.3)
    logs = srv.logs()
    assert f"/v1/sessions/{sid}" in logs  # the access log is on
    assert token not in logs and share["secret"] not in logs
    assert "token=***" in logs


async def test_admin_api(server_factory: Any) -> None:
    srv = server_factory(admin_key=ADMIN)
    admin = bearer(ADMIN)
    async with client_for(srv) as http:
        # with an admin key, creation needs it
        assert_error(await http.post("/v1/shares", json={}), 401)
        assert_error(await http.post("/v1/shares", json={}, headers=bearer("nope")), 403)
        shares = [await create_share(http, headers=admin) for _ in range(3)]
        listing = (await http.get("/v1/admin/shares", headers=admin)).json()
        assert {s["session_id"] for s in listing["shares"]} == {s["session_id"] for s in shares}
        assert_error(await http.get("/v1/admin/shares"), 401)
        assert_error(await http.get("/v1/admin/shares", headers=bearer("x")), 403)
        sid = shares[0]["session_id"]
        await append(http, shares[0], [status("x")])
        shown = (await http.get(f"/v1/admin/shares/{sid}", headers=admin)).json()
        assert shown["seq"] == 1 and "secret" not in json.dumps(shown)
        reader = await ws_open(srv, sid)
        assert (await http.post(f"/v1/admin/shares/{sid}/expire", headers=admin)).status_code == 204
        assert await reader.wait_closed() == 4510
        assert_error(await http.get(f"/v1/sessions/{sid}"), 410)
        other = shares[1]["session_id"]
        assert (await http.delete(f"/v1/admin/shares/{other}", headers=admin)).status_code == 204
        assert_error(await http.get(f"/v1/sessions/{other}"), 410)
        assert (
            db_rows(srv, "SELECT COUNT(*) FROM events WHERE session_id IN (?, ?)", sid, other)[0][0]
            == 0
        )


async def test_admin_cli(server_factory: Any) -> None:
    srv = server_factory(admin_key=ADMIN)
    async with client_for(srv) as http:
        share = await create_share(http, headers=bearer(ADMIN), title="cli title")
    env = {**os.environ, "AGENTSYNC_ADMIN_KEY": ADMIN, "AGENTSYNC_URL": srv.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentsync.cli", "admin", *args],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert share["session_id"] in listed.stdout and "cli title" in listed.stdout
    shown = cli("show", share["session_id"])
    assert shown.returncode == 0, shown.stderr  # (once seen failing in CI, with no output)
    assert json.loads(shown.stdout)["session_id"] == share["session_id"]
    assert cli("delete", share["session_id"]).returncode == 0
    missing = cli("show", share["session_id"])
    assert missing.returncode == 1 and "404" in missing.stderr
    wrong = subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-m", "agentsync.cli", "admin", "--admin-key", "bad", "list"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert wrong.returncode == 1 and "403" in wrong.stderr


def test_public_bind_without_admin_key_refuses_to_start() -> None:
    # Checked before binding: nothing listens on a public address.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSYNC_")}
    result = subprocess.run(
        [sys.executable, "-m", "agentsync.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--admin-key" in result.stderr
