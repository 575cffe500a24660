"""The SDK's API against a real server: collaboration, reading, terminal errors, threads."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentsync.client import (
    AsyncShare,
    Outbox,
    ReceivedEvent,
    Share,
    ShareGone,
    Snapshot,
    parse_share_url,
)
from agentsync.client.connection import backoff_delay, error_for_close
from agentsync.protocol import CLOSE_FORBIDDEN, CLOSE_GONE, Forbidden

from ._support import read_log

pytestmark = pytest.mark.timeout(60)


def snapshot(srv: Any, session_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{srv.url}/v1/sessions/{session_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def test_two_writers_interleave_without_loss(srv: Any, tmp_path: Path) -> None:
    a = await AsyncShare.create(srv.url, outbox=tmp_path / "a.db", name="a")
    assert a.secret is not None
    b = await AsyncShare.open(a.url, a.secret, outbox=tmp_path / "b.db", name="b")
    ma, mb = a.add_message("assistant", id="ma"), b.add_message("assistant", id="mb")
    await asyncio.gather(a.flush(), b.flush())
    for i in range(500):
        a.stream_text(ma, f"a{i} ")
        b.stream_text(mb, f"b{i} ")
        if i % 50 == 0:
            await asyncio.sleep(0.005)
    async with asyncio.timeout(20):
        await asyncio.gather(a.flush(), b.flush())
    await asyncio.gather(a.close(), b.close())
    contents = {m["id"]: m["content"] for m in snapshot(srv, a.session_id)["messages"]}
    assert contents == {
        "ma": "".join(f"a{i} " for i in range(500)),
        "mb": "".join(f"b{i} " for i in range(500)),
    }


async def test_continue_on_another_device(srv: Any, tmp_path: Path) -> None:
    laptop = await AsyncShare.create(srv.url, title="t", outbox=tmp_path / "laptop.db")
    mid = laptop.add_message("assistant", "started on the laptop. ")
    await laptop.close()
    assert laptop.secret is not None
    desktop = await AsyncShare.open(laptop.url, laptop.secret, outbox=tmp_path / "desk.db")
    desktop.stream_text(mid, "continued on the desktop")
    desktop.update_session(title="moved")
    await desktop.close()
    snap = snapshot(srv, laptop.session_id)
    assert snap["messages"][0]["content"] == "started on the laptop. continued on the desktop"
    assert snap["session"]["title"] == "moved"


async def test_collaborator_prompts_the_agent(srv: Any, tmp_path: Path) -> None:
    agent = await AsyncShare.create(srv.url, name="agent", outbox=tmp_path / "agent.db")
    got: list[ReceivedEvent] = []
    agent.on_user_message(got.append)
    prompts = agent.user_messages()
    agent.add_message("user", "my own prompt is not echoed to me")
    await agent.flush()
    assert agent.secret is not None
    person = await AsyncShare.open(agent.url, agent.secret, name="person",
                                   outbox=tmp_path / "person.db")  # fmt: skip
    person.add_message("user", "please also fix the docs")
    async with asyncio.timeout(10):
        first = await anext(prompts)
    assert first.data["content"] == "please also fix the docs"
    assert [e.data["content"] for e in got] == ["please also fix the docs"]
    names = {p.get("name") for p in agent.participants}
    assert {"agent", "person"} <= names
    await prompts.aclose()
    await asyncio.gather(agent.close(), person.close())


async def test_subscribe_gives_snapshot_then_events(srv: Any, tmp_path: Path) -> None:
    share = await AsyncShare.create(srv.url, outbox=tmp_path / "o.db", read="token")
    mid = share.add_message("assistant", "hello")
    await share.flush()
    assert share.read_token is not None
    viewer = await AsyncShare.open(share.url, token=share.read_token)
    items = viewer.subscribe()
    async with asyncio.timeout(10):
        snap = await anext(items)
        assert isinstance(snap, Snapshot)
        assert snap.messages[0]["content"] == "hello" and snap.seq == 1
        share.stream_text(mid, " world")
        event = await anext(items)
    assert isinstance(event, ReceivedEvent)
    assert (event.seq, event.type, event.data["delta"]) == (2, "message.delta", " world")
    await items.aclose()
    await share.close()


async def test_http_fallback_publishes_and_reads(srv: Any, tmp_path: Path) -> None:
    share = await AsyncShare.create(srv.url, outbox=tmp_path / "o.db", transport="http")
    mid = share.add_message("assistant")
    for i in range(200):
        share.stream_text(mid, f"{i} ")
    items = share.subscribe()
    async with asyncio.timeout(15):
        await share.flush()
        assert isinstance(await anext(items), Snapshot)
        share.set_status("idle")
        while True:
            item = await anext(items)
            if isinstance(item, ReceivedEvent) and item.type == "status":
                break
    await items.aclose()
    await share.close()
    assert snapshot(srv, share.session_id)["messages"][0]["content"] == "".join(
        f"{i} " for i in range(200)
    )


async def test_deleted_share_stops_with_a_clear_error(srv: Any, tmp_path: Path) -> None:
    agent = await AsyncShare.create(srv.url, outbox=tmp_path / "agent.db")
    mid = agent.add_message("assistant")
    await agent.flush()
    assert agent.secret is not None
    other = await AsyncShare.open(agent.url, agent.secret, outbox=tmp_path / "other.db")
    await other.delete()
    agent.stream_text(mid, "after the delete")
    with pytest.raises(ShareGone):
        async with asyncio.timeout(10):
            await agent.flush()
    assert isinstance(agent.failed, ShareGone)
    with pytest.raises(ShareGone):
        agent.stream_text(mid, "x")
    await agent.close()


async def test_wrong_secret_is_forbidden(srv: Any, tmp_path: Path) -> None:
    share = await AsyncShare.create(srv.url, outbox=tmp_path / "a.db")
    await share.flush()
    bad = await AsyncShare.open(share.url, "not-the-secret", outbox=tmp_path / "b.db")
    bad.add_message("assistant", "x")
    with pytest.raises(Forbidden):
        async with asyncio.timeout(10):
            await bad.flush()
    await asyncio.gather(bad.close(), share.close())


def test_blocking_share_leaks_no_threads(srv: Any, tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with Share.create(srv.url, title="sync", outbox=tmp_path / "s.db", name="agent") as share:
        mid = share.add_message("assistant")
        for i in range(100):
            share.stream_text(mid, f"{i} ")
        share.tool_result(mid, share.tool_call(mid, "ls", {"path": "."}), "a\nb")
        share.set_status("idle")
        share.flush(timeout=10)
        items = share.subscribe(timeout=10)
        assert isinstance(next(items), Snapshot)
        items.close()
    assert set(threading.enumerate()) == before
    events = read_log(srv.url, share.session_id)
    assert [e["type"] for e in events] == [
        "message", "message.delta", "tool_call", "tool_result", "status"
    ]  # fmt: skip
    share.close()  # idempotent


def test_outbox_coalesces_only_uncommitted_deltas(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", group_delay=0.2)
    seen: list[list[Any]] = []
    assert outbox.attach("s", lambda rows, _gen: seen.append(rows)) == []
    outbox.enqueue("s", "e1", "message", {"id": "m", "role": "assistant"}, 1)
    for i, part in enumerate(["a", "b", "c"]):
        outbox.enqueue("s", f"d{i}", "message.delta", {"id": "m", "delta": part}, 2)
    outbox.enqueue("s", "d9", "message.delta", {"id": "other", "delta": "x"}, 3)
    deadline = time.monotonic() + 5
    while not seen:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    rows = seen[0]
    assert [(r.id, r.type) for r in rows] == [
        ("e1", "message"), ("d0", "message.delta"), ("d9", "message.delta")
    ]  # fmt: skip
    assert rows[1].data["delta"] == "abc"
    outbox.enqueue("s", "d10", "message.delta", {"id": "other", "delta": "y"}, 4)
    outbox.close()
    reopened = Outbox(tmp_path / "o.db")
    left = reopened.attach("s", lambda rows, _gen: None)
    assert [r.id for r in left] == ["e1", "d0", "d9", "d10"]  # committed rows never change
    assert left[2].data["delta"] == "x"
    reopened.ack([r.ord for r in left[:3]])
    reopened.close()
    assert [r.id for r in Outbox(tmp_path / "o.db").attach("s", lambda r, g: None)] == ["d10"]


def test_close_codes_and_backoff() -> None:
    assert isinstance(error_for_close(CLOSE_GONE, "deleted"), ShareGone)
    assert isinstance(error_for_close(CLOSE_FORBIDDEN, ""), Forbidden)
    assert all(backoff_delay(0) < 0.5 for _ in range(100))
    assert all(backoff_delay(50) <= 30 for _ in range(100))
    assert parse_share_url("http://h:1/p/share/ABC") == ("http://h:1/p", "ABC")
    with pytest.raises(ValueError):
        parse_share_url("http://h/nothing")
