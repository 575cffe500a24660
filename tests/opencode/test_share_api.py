"""opencode's share API on a real server, driven by the traffic opencode 1.18.33 sent.

``fixtures/capture-1.18.33.json`` is every request a real opencode made to a share server
(see ``record_fixture.py``). Replaying its syncs here checks the translation both ways
without needing opencode itself: ``/data`` must give back exactly what opencode's client
would have merged, and the log must hold ordinary agentsync events that the viewer, the
export and every reader use. ``test_opencode_e2e.py`` runs the real binary.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from agentsync.cli_view import Transcript, render_message
from agentsync.opencode import item_key
from conftest import ServerFactory, ServerProcess
from e2e.test_archive import ARCHIVE_FLAGS, wait_archived
from e2e.test_cluster import PG_URL, pg_schema, redis_server  # noqa: F401  (fixtures)

CAPTURE = json.loads((Path(__file__).parent / "fixtures" / "capture-1.18.33.json").read_text())


def captured_syncs(phases: tuple[str, ...] = ("run", "revert")) -> list[list[dict[str, Any]]]:
    """The ``data`` arrays of the first share's syncs, in the order opencode sent them."""
    share_id = CAPTURE["meta"]["share_id"]
    return [
        r["body"]["data"]
        for r in CAPTURE["requests"]
        if r["method"] == "POST"
        and r["path"] == f"/api/share/{share_id}/sync"
        and r["phase"] in phases
    ]


def reshare_sync() -> list[dict[str, Any]]:
    """The one sync of a re-share: every item, all messages first, then all parts."""
    data: list[dict[str, Any]] = next(
        r["body"]["data"]
        for r in CAPTURE["requests"]
        if r["phase"] == "reshare" and r["path"].endswith("/sync")
    )
    return data


def merge(syncs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """What opencode's own share server holds: the last item per key."""
    merged: dict[str, Any] = {}
    for batch in syncs:
        for item in batch:
            merged[item_key(item["type"], item["data"])] = item["data"]
    return merged


async def create(http: httpx.AsyncClient) -> dict[str, Any]:
    res = await http.post("/api/share", json={"sessionID": CAPTURE["meta"]["session_id"]})
    assert res.status_code == 200, res.text
    share = res.json()
    assert set(share) == {"id", "secret", "url"}
    assert share["url"] == f"{str(http.base_url).rstrip('/')}/share/{share['id']}"
    return share


async def sync(http: httpx.AsyncClient, share: dict[str, Any], data: Any) -> httpx.Response:
    return await http.post(
        f"/api/share/{share['id']}/sync", json={"secret": share["secret"], "data": data}
    )


async def items_of(http: httpx.AsyncClient, share: dict[str, Any]) -> dict[str, Any]:
    res = await http.get(f"/api/share/{share['id']}/data")
    assert res.status_code == 200, res.text
    items = res.json()
    assert isinstance(items, list)
    out = {item_key(i["type"], i["data"]): i["data"] for i in items}
    assert len(out) == len(items), "an item key appears twice"
    return out


async def snapshot(http: httpx.AsyncClient, share: dict[str, Any]) -> dict[str, Any]:
    res = await http.get(f"/v1/sessions/{share['id']}")
    assert res.status_code == 200
    body: dict[str, Any] = res.json()
    return body


async def test_replayed_syncs_read_back_as_opencode_merged_them(
    http: httpx.AsyncClient,
) -> None:
    share = await create(http)
    syncs = captured_syncs()
    for batch in syncs:
        res = await sync(http, share, batch)
        assert res.status_code == 200, res.text
    assert await items_of(http, share) == merge(syncs)

    # The items are ordinary agentsync events: the snapshot, in order, with live status.
    snap = await snapshot(http, share)
    assert snap["session"]["title"] == "Fake session title"
    assert snap["status"] == "idle"
    orders = [m["metadata"]["order"] for m in snap["messages"]]
    assert orders == sorted(orders), "messages were stored out of creation order"
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for m in snap["messages"]:
        oc = m["metadata"]["opencode"]
        kind = oc["info"]["role"] if oc["kind"] == "message" else oc["part"]["type"]
        by_kind.setdefault(kind, []).append(m)
    assert [m["role"] for m in by_kind["user"]] == ["user"]
    prompt = next(m for m in by_kind["text"] if m["role"] == "user")
    assert prompt["content"] == "Read notes.txt and count its lines"
    assert any("hello from the fixture" in m["content"] for m in by_kind["text"])
    assert len(by_kind["reasoning"]) == 3
    tools = {m["toolCalls"][0]["name"]: m for m in by_kind["tool"] if m["toolCalls"]}
    bash = tools["bash"]
    assert bash["toolCalls"][0]["state"]["status"] == "completed"
    assert bash["toolCalls"][0]["arguments"]["command"].endswith("tee count.txt")
    assert bash["toolResults"][0]["output"] == "3 notes.txt\n"
    failed = [m for m in by_kind["tool"] if m["toolCalls"][0]["state"]["status"] == "error"]
    assert len(failed) == 1 and "File not found" in failed[0]["toolResults"][0]["error"]

    # The export carries the same log, seq by seq.
    export = await http.get(f"/v1/sessions/{share['id']}/export")
    lines = [json.loads(line) for line in export.text.splitlines() if line]
    seqs = [line["seq"] for line in lines if "seq" in line]
    assert seqs == list(range(1, snap["seq"] + 1))


async def test_a_resync_of_the_same_items_stores_nothing(http: httpx.AsyncClient) -> None:
    share = await create(http)
    for batch in captured_syncs():
        await sync(http, share, batch)
    before = (await snapshot(http, share))["seq"]
    # Sending back exactly what /data holds changes nothing.
    held = (await http.get(f"/api/share/{share['id']}/data")).json()
    res = await sync(http, share, held)
    assert res.status_code == 200 and res.json()["seqs"] == []
    assert (await snapshot(http, share))["seq"] == before


async def test_a_full_sync_in_one_batch_is_ordered_by_creation(http: httpx.AsyncClient) -> None:
    """A re-share sends every message first, then every part: the log is still ordered
    (messages, each followed by its parts) and every part has its message's role."""
    share = await create(http)
    full = reshare_sync()
    assert (await sync(http, share, full)).status_code == 200
    snap = await snapshot(http, share)
    orders = [m["metadata"]["order"] for m in snap["messages"]]
    assert orders == sorted(orders)
    prompt = next(m for m in snap["messages"] if m["content"].startswith("Read notes.txt"))
    assert prompt["role"] == "user"
    assert await items_of(http, share) == merge([full])


async def test_a_part_before_its_message_takes_the_role_when_the_message_comes(
    http: httpx.AsyncClient,
) -> None:
    share = await create(http)
    user = {"id": "msg_1", "sessionID": "ses_x", "role": "user", "time": {"created": 1}}
    part = {"id": "prt_1", "messageID": "msg_1", "sessionID": "ses_x", "type": "text"}
    await sync(http, share, [{"type": "part", "data": {**part, "text": "hi"}}])
    assert (await snapshot(http, share))["messages"][0]["role"] == "assistant"
    await sync(http, share, [{"type": "message", "data": user}])
    roles = {m["id"]: m["role"] for m in (await snapshot(http, share))["messages"]}
    assert roles == {"prt_1": "user", "msg_1": "user"}


async def test_growing_text_is_stored_as_deltas(http: httpx.AsyncClient) -> None:
    share = await create(http)
    info = {"id": "msg_a", "sessionID": "ses_x", "role": "assistant", "time": {"created": 1}}
    part = {"id": "prt_a", "messageID": "msg_a", "sessionID": "ses_x", "type": "text"}
    await sync(http, share, [{"type": "message", "data": info}])
    text = ""
    for word in ["The ", "answer ", "is ", "42."]:
        text += word
        assert (
            await sync(http, share, [{"type": "part", "data": {**part, "text": text}}])
        ).is_success
    done = {**info, "time": {"created": 1, "completed": 2}}
    await sync(http, share, [{"type": "message", "data": done}])
    res = await http.get(f"/v1/sessions/{share['id']}/events")
    types = [e["type"] for e in res.json()["events"]]
    assert types.count("message.delta") == 3
    assert [e["data"]["status"] for e in res.json()["events"] if e["type"] == "status"] == [
        "thinking",
        "idle",
    ]
    assert (await items_of(http, share))["part/msg_a/prt_a"]["text"] == "The answer is 42."


async def test_wrong_or_missing_secret_and_bad_items_store_nothing(
    http: httpx.AsyncClient,
) -> None:
    share = await create(http)
    first = captured_syncs()[0]
    assert (await sync(http, share, first)).status_code == 200
    seq = (await snapshot(http, share))["seq"]
    url = f"/api/share/{share['id']}/sync"
    wrong = await http.post(url, json={"secret": "nope", "data": first})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"]
    missing = await http.post(url, json={"data": first})
    assert missing.status_code == 401 and "secret" in missing.json()["error"]["message"]
    bad_items: list[Any] = [
        "not a list",
        [{"type": "part", "data": {"id": "prt_1"}}],  # no messageID
        [{"type": "message", "data": {"id": "msg_1"}}],  # no role
        [{"type": "Bad Type", "data": {}}],
        [{"type": "session", "data": []}],
        [{"data": {}}],
        [*first, {"type": "message", "data": {"id": "", "role": "user"}}],  # last one bad
    ]
    for data in bad_items:
        res = await http.post(url, json={"secret": share["secret"], "data": data})
        assert res.status_code == 422, (data, res.text)
        assert res.json()["error"]["message"]
    assert (await http.post(url, content=b"{not json")).status_code == 400
    assert (await snapshot(http, share))["seq"] == seq
    assert (
        await http.post("/api/share/nosuchshare/sync", json={"secret": "x", "data": []})
    ).status_code == 404
    assert (await http.get("/api/share/nosuchshare/data")).status_code == 404
    assert (await http.post("/api/share", json={})).status_code == 400


async def test_unshare_needs_the_secret_and_removes_the_share(http: httpx.AsyncClient) -> None:
    share = await create(http)
    await sync(http, share, captured_syncs()[0])
    url = f"/api/share/{share['id']}"
    assert (await http.request("DELETE", url, json={"secret": "nope"})).status_code == 403
    assert (await http.request("DELETE", url)).status_code == 401
    assert (await http.get(f"{url}/data")).status_code == 200
    assert (await http.request("DELETE", url, json={"secret": share["secret"]})).status_code == 204
    assert (await http.get(f"{url}/data")).status_code == 410
    assert (await http.get(f"/v1/sessions/{share['id']}")).status_code == 410
    # opencode may unshare twice (or after expiry): it is done, so 204 again.
    assert (await http.request("DELETE", url, json={"secret": share["secret"]})).status_code == 204
    assert (
        await http.request("DELETE", "/api/share/nosuchshare", json={"secret": "x"})
    ).status_code == 404


@pytest.mark.parametrize("limit", [4096])
async def test_an_oversized_tool_output_is_cut_not_refused(
    server_factory: ServerFactory, limit: int
) -> None:
    srv: ServerProcess = server_factory(rate_limit=0, max_event_bytes=limit)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create(http)
        info = {"id": "msg_a", "sessionID": "ses_x", "role": "assistant", "time": {"created": 1}}
        state = {"status": "completed", "input": {"filePath": "big.txt"}, "output": "x" * 50_000}
        tool = {
            "id": "prt_t", "messageID": "msg_a", "sessionID": "ses_x", "type": "tool",
            "tool": "read", "callID": "call_1", "state": state,
        }  # fmt: skip
        res = await sync(
            http, share, [{"type": "message", "data": info}, {"type": "part", "data": tool}]
        )
        assert res.status_code == 200, res.text
        output = (await items_of(http, share))["part/msg_a/prt_t"]["state"]["output"]
        assert output.startswith("xxxx") and "cut by agentsync" in output
        assert len(output) < limit


async def test_credentials_in_opencode_items_are_redacted(http: httpx.AsyncClient) -> None:
    share = await create(http)
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3
    info = {"id": "msg_a", "sessionID": "ses_x", "role": "user", "time": {"created": 1}}
    part = {"id": "prt_a", "messageID": "msg_a", "sessionID": "ses_x", "type": "text"}
    data = [
        {"type": "message", "data": info},
        {"type": "part", "data": {**part, "text": f"use {key}"}},
    ]
    assert (await sync(http, share, data)).status_code == 200
    body = (await http.get(f"/api/share/{share['id']}/data")).text
    assert key not in body and "use " in body
    page = (await http.get(f"/share/{share['id']}")).text
    assert key not in page


async def test_an_archived_opencode_share_reads_back_whole(server_factory: ServerFactory) -> None:
    """Archived when idle, restored on read: /data and the log come back unchanged, and
    syncing continues where it left off."""
    srv = server_factory(**ARCHIVE_FLAGS)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create(http)
        syncs = captured_syncs()
        for batch in syncs[:-1]:
            assert (await sync(http, share, batch)).status_code == 200
        before = await items_of(http, share)
        await wait_archived(http)
        assert await items_of(http, share) == before
        assert (await sync(http, share, syncs[-1])).status_code == 200
        assert await items_of(http, share) == merge(syncs)


async def test_the_session_write_limit_applies_to_syncs(server_factory: ServerFactory) -> None:
    srv = server_factory(rate_limit=1, rate_burst=20)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create(http)
        syncs = captured_syncs()
        statuses = [(await sync(http, share, batch)).status_code for batch in syncs[:4]]
        assert statuses[0] == 200 and 429 in statuses, statuses
        limited = await sync(http, share, syncs[4])
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # what was refused was not stored: the share holds the accepted syncs only
        accepted = [batch for batch, status in zip(syncs, statuses, strict=False) if status == 200]
        assert await items_of(http, share) == merge(accepted)


async def test_syncs_through_two_nodes_read_back_whole(
    server_factory: ServerFactory,
    redis_server: Any,  # noqa: F811
    pg_schema: str,  # noqa: F811
) -> None:
    """Behind a load balancer consecutive syncs land on different nodes, each of which may
    not have applied the other's last write yet: the merged items still come out exact."""
    flags = {"rate_limit": 0, "store": f"{PG_URL}?schema={pg_schema}", "bus": redis_server.url}
    nodes = [server_factory(**flags), server_factory(**flags)]
    clients = [httpx.AsyncClient(base_url=n.url, timeout=10.0) for n in nodes]
    try:
        share = await create(clients[0])
        syncs = captured_syncs()
        last_seq = 0
        for i, batch in enumerate(syncs):
            res = await sync(clients[i % 2], share, batch)
            assert res.status_code == 200, res.text
            last_seq = max(last_seq, res.json()["last_seq"])
        # Text that grows with every sync, through alternating nodes.
        info = {"id": "msg_z", "sessionID": "ses_x", "role": "assistant", "time": {"created": 9}}
        part = {"id": "prt_z", "messageID": "msg_z", "sessionID": "ses_x", "type": "text"}
        text = ""
        growing = [[{"type": "message", "data": info}]]
        for i in range(40):
            text += f"word{i} "
            growing.append([{"type": "part", "data": {**part, "text": text}}])
        for i, batch in enumerate(growing):
            res = await sync(clients[i % 2], share, batch)
            assert res.status_code == 200, res.text
            last_seq = max(last_seq, res.json()["last_seq"])
        syncs += growing
        for http in clients:
            for _ in range(100):
                if (await snapshot(http, share))["seq"] >= last_seq:
                    break
                await asyncio.sleep(0.05)
            assert await items_of(http, share) == merge(syncs)
    finally:
        for http in clients:
            await http.aclose()


async def test_the_terminal_view_shows_an_opencode_share_compactly(
    http: httpx.AsyncClient,
) -> None:
    share = await create(http)
    for batch in captured_syncs():
        await sync(http, share, batch)
    transcript = Transcript()
    transcript.load(await snapshot(http, share))
    console = Console(record=True, width=120, color_system=None)
    for message in transcript.messages():
        shown = render_message(message)
        if shown is not None:
            console.print(shown)
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    heads = [line for line in lines if line.startswith(("user", "assistant"))]
    assert heads[0] == "user · build · fake/fake-model"
    assert len(heads) == 5 and all("fake/fake-model" in h for h in heads)
    assert "assistant" not in lines, "an empty message was printed as a bare role line"
    text = "\n".join(lines)
    assert text.index("Read notes.txt") < text.index("Let me read") < text.index("I have")
    assert "✗ error: File not found" in text and "null" not in text
    assert "step: tool-calls · 100 in · 19 out · $0.0000" in text


async def test_a_part_sent_twice_in_one_sync_counts_once(http: httpx.AsyncClient) -> None:
    share = await create(http)
    info = {"id": "msg_a", "sessionID": "ses_x", "role": "assistant", "time": {"created": 1}}
    part = {"id": "prt_a", "messageID": "msg_a", "sessionID": "ses_x", "type": "text"}
    await sync(http, share, [{"type": "message", "data": info}])
    await sync(http, share, [{"type": "part", "data": {**part, "text": "ab"}}])
    twice = [{"type": "part", "data": {**part, "text": t}} for t in ("abc", "abcd")]
    assert (await sync(http, share, twice)).status_code == 200
    assert (await items_of(http, share))["part/msg_a/prt_a"]["text"] == "abcd"
