"""Several hubs over one store and one bus, in one process: the multi-node rules of
hub.py and relay.py without processes or sockets. (tests/e2e/test_cluster.py runs real
nodes over PostgreSQL and Redis.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentsync.bus.local import LocalBroker, LocalBus
from agentsync.hub import Hub
from agentsync.metrics import Metrics
from agentsync.protocol import CLOSE_GONE, Gone, InvalidEvent, NewEvent, parse_event
from agentsync.store.sqlite import SQLiteStore
from in_process import http_client, sse_first, ws_greeting
from test_hub import attach, config, new_share


def event(id: str, i: int) -> NewEvent:
    return parse_event({"id": id, "type": "status", "data": {"status": str(i)}})


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.cfg = config(tmp_path, idle_evict_seconds=3600.0)
        self.broker = LocalBroker()
        self.hubs: list[Hub] = []

    async def node(self) -> Hub:
        bus = LocalBus(self.broker)
        hub = Hub(self.cfg, SQLiteStore(self.cfg.sqlite_path), Metrics(), bus)
        await hub.start()
        self.hubs.append(hub)
        return hub


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    for hub in c.hubs:
        await hub.stop()


async def settle(hubs: list[Hub], session_id: str) -> int:
    """Wait until every hub that holds the session is at the store's last seq."""
    last = await hubs[0].store.last_seq(session_id)
    for _ in range(200):
        if all(h.sessions[session_id].core.last_seq == last for h in hubs):
            return last
        await asyncio.sleep(0.01)
    raise AssertionError([h.sessions[session_id].core.last_seq for h in hubs] + [last])


async def test_concurrent_writes_through_every_node_get_one_order(cluster: Cluster) -> None:
    hubs = [await cluster.node() for _ in range(3)]
    sid = await new_share(hubs[0])
    lives = [await h.get(sid) for h in hubs]
    links = [attach(h, live, 0) for h, live in zip(hubs, lives, strict=True)]
    acked: dict[str, int] = {}

    async def writer(w: int) -> None:
        for n in range(40):
            hub = hubs[(w + n) % 3]
            batch = [event(f"w{w}-{n}-{k}", n) for k in range(random.randint(1, 3))]
            result = await hub.append(await hub.get(sid), batch)
            for ev, seq in zip(batch, result.seqs, strict=True):
                acked[ev.id] = seq

    await asyncio.gather(*(writer(w) for w in range(6)))
    last = await settle(hubs, sid)
    assert sorted(acked.values()) == list(range(1, last + 1))  # one seq each, no gap
    stored = await hubs[0].store.read_events(sid, 0, 10_000)
    assert {e.id: e.seq for e in stored} == acked
    snapshots = [live.core.snapshot() for live in lives]
    assert snapshots[0] == snapshots[1] == snapshots[2]
    for hub, link in zip(hubs, links, strict=True):
        hub._fanout_round(hub.sessions[sid])
        assert link.reader.cursor == last
    assert sum(h.metrics.append_conflicts._value.get() for h in hubs) > 0  # type: ignore[attr-defined]


async def test_a_retry_through_another_node_keeps_its_seq(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    sid = await new_share(a)
    await b.get(sid)
    first = await a.append(await a.get(sid), [event("x", 1), event("y", 2)])
    # b may not have heard of x and y yet: it finds out from the store.
    again = await b.append(await b.get(sid), [event("y", 2), event("z", 3)])
    assert again.seqs == [first.seqs[1], first.seqs[1] + 1]
    assert await settle([a, b], sid) == 3


async def test_lost_bus_messages_are_read_from_the_store(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    sid = await new_share(a)
    live_b = await b.get(sid)
    assert b.relay is not None
    bus_b = b.relay.bus
    assert isinstance(bus_b, LocalBus)
    channels = set(bus_b.channels)
    bus_b.channels.clear()  # b stops hearing (a dropped connection)
    await a.append(await a.get(sid), [event(f"lost{i}", i) for i in range(5)])
    await asyncio.sleep(0.05)
    assert live_b.core.last_seq == 0
    bus_b.channels.update(channels)
    # The next message jumps past b's seq: b reads the gap from the store.
    await a.append(await a.get(sid), [event("heard", 9)])
    assert await settle([a, b], sid) == 6
    # And a reconnect alone (no new message) makes b catch up too.
    bus_b.channels.clear()
    await a.append(await a.get(sid), [event("lost-again", 10)])
    bus_b.channels.update(channels)
    bus_b.simulate_reconnect()
    assert await settle([a, b], sid) == 7


async def test_a_delete_on_one_node_ends_the_share_on_every_node(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    sid = await new_share(a)
    live_b = await b.get(sid)
    link = attach(b, live_b, 0)
    await a.get(sid)
    assert await a.delete(sid)
    for _ in range(100):
        if link.closed is not None:
            break
        await asyncio.sleep(0.01)
    assert link.closed == CLOSE_GONE
    with pytest.raises(Gone):
        await b.get(sid)


async def test_only_loaded_sessions_are_subscribed(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    mine, theirs = await new_share(a), await new_share(a)
    await a.get(mine)
    await b.get(theirs)
    assert a.relay is not None and b.relay is not None
    assert isinstance(a.relay.bus, LocalBus) and isinstance(b.relay.bus, LocalBus)
    assert a.relay.bus.channels == {f"agentsync:s:{mine}"}
    assert b.relay.bus.channels == {f"agentsync:s:{theirs}"}
    await b.drop(b.sessions[theirs], None)
    await asyncio.sleep(0.01)
    assert b.relay.bus.channels == set()


async def test_presence_spans_nodes_and_expires_with_its_node(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    sid = await new_share(a)
    live_a, live_b = await a.get(sid), await b.get(sid)
    alice = attach(a, live_a, 0)
    alice.reader.name = "alice"
    a.broadcast_presence(live_a, joined=alice.reader)
    bob = attach(b, live_b, 0)
    bob.reader.name = "bob"
    b.broadcast_presence(live_b, joined=bob.reader)
    await asyncio.sleep(0.05)
    names = sorted(p["name"] for p in a.participants(live_a))
    assert names == sorted(p["name"] for p in b.participants(live_b)) == ["alice", "bob"]
    # A node that loads the session later asks, and hears about both.
    c = await cluster.node()
    live_c = await c.get(sid)
    await asyncio.sleep(0.05)
    assert sorted(p["name"] for p in c.participants(live_c)) == ["alice", "bob"]
    # bob leaves: everyone hears it.
    b.detach(live_b, bob)
    await asyncio.sleep(0.05)
    assert [p["name"] for p in a.participants(live_a)] == ["alice"]
    assert [p["name"] for p in c.participants(live_c)] == ["alice"]
    # A node that stops says its readers are gone.
    await a.stop()
    cluster.hubs.remove(a)
    await asyncio.sleep(0.05)
    assert c.participants(live_c) == []


async def test_concurrent_batches_of_one_session_share_a_transaction(cluster: Cluster) -> None:
    a = await cluster.node()
    sid = await new_share(a)
    live = await a.get(sid)
    calls: list[int] = []
    append = a.store.append

    async def counting(session_id: str, events: Any) -> None:
        calls.append(len(events))
        await append(session_id, events)

    a.store.append = counting  # type: ignore[method-assign]
    bad = parse_event({"id": "bad", "type": "message.delta", "data": {"id": "nope", "delta": "x"}})
    batches = [[event(f"c{i}", i)] for i in range(50)]
    results = await asyncio.gather(
        *(a.append(live, b) for b in batches[:25]),
        a.append(live, [bad]),
        *(a.append(live, b) for b in batches[25:]),
        return_exceptions=True,
    )
    assert isinstance(results[25], InvalidEvent)  # refused alone; the others are stored
    seqs = [r.seqs[0] for r in results if not isinstance(r, BaseException)]
    assert seqs == list(range(1, 51))  # in the order they were submitted
    assert len(calls) < 10 and sum(calls) == 50


# --- reading a write acknowledged by another node --------------------------------------


@pytest.fixture
async def two_nodes(cluster: Cluster) -> tuple[Hub, Hub, str]:
    """Nodes a and b and a session both hold."""
    a, b = await cluster.node(), await cluster.node()
    sid = await new_share(a)
    await a.get(sid)
    await b.get(sid)
    return a, b, sid


async def unheard_write(nodes: tuple[Hub, Hub, str], count: int) -> int:
    """Node a acknowledges ``count`` events that node b has not heard of (b lost its bus
    subscription); a's last seq."""
    a, b, sid = nodes
    assert b.relay is not None and isinstance(b.relay.bus, LocalBus)
    b.relay.bus.channels.clear()
    before = b.sessions[sid].core.last_seq
    result = await a.append(a.sessions[sid], [event(f"u{before + i}", i) for i in range(count)])
    await asyncio.sleep(0.05)
    assert b.sessions[sid].core.last_seq == before  # b is behind: the fix must not rely on it
    return result.last_seq


async def test_long_poll_on_another_node_reads_its_writers_seq(
    two_nodes: tuple[Hub, Hub, str],
) -> None:
    _, b, sid = two_nodes
    seq = await unheard_write(two_nodes, 5)
    async with http_client(b) as http:
        resp = await http.get(f"/v1/sessions/{sid}/events", params={"since": seq})
        assert resp.status_code == 200, resp.text  # not 409 seq_ahead
        assert resp.json()["events"] == [] and resp.json()["last_seq"] == seq
        seq = await unheard_write(two_nodes, 2)
        resp = await http.get(f"/v1/sessions/{sid}/events", params={"since": seq - 1})
        assert resp.status_code == 200, resp.text
        assert [e["seq"] for e in resp.json()["events"]] == [seq]
        # Beyond what any node stored: still a conflict.
        resp = await http.get(f"/v1/sessions/{sid}/events", params={"since": seq + 1})
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "seq_ahead"


async def test_websocket_resume_on_another_node_reads_its_writers_seq(
    two_nodes: tuple[Hub, Hub, str],
) -> None:
    _, b, sid = two_nodes
    seq = await unheard_write(two_nodes, 3)
    greeting = await ws_greeting(b, sid, {"op": "hello", "since": seq - 1, "epoch": "e"})
    assert greeting["op"] == "events", greeting  # a catch-up, not a snapshot
    assert [e["seq"] for e in greeting["events"]] == [seq] and greeting["seq"] == seq


async def test_sse_resume_on_another_node_reads_its_writers_seq(
    two_nodes: tuple[Hub, Hub, str],
) -> None:
    _, b, sid = two_nodes
    seq = await unheard_write(two_nodes, 3)
    first = await sse_first(b, sid, {"Last-Event-ID": str(seq - 1)})
    assert [(kind, id) for kind, id, _ in first] == [("message", str(seq))]  # no init
