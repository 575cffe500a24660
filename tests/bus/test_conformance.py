"""One suite for every Bus backend (bus/base.py): in-process and Redis.

The Redis cases use the machine's Redis (127.0.0.1:6379, or AGENTSYNC_TEST_REDIS) with
channel names unique to each test; they skip when it is not there, except under
AGENTSYNC_REQUIRE_SERVICES=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from agentsync.bus.base import (
    Bus,
    channel_of,
    decode,
    encode_committed,
    encode_ended,
    last_seq_of,
)
from agentsync.bus.local import LocalBroker, LocalBus
from agentsync.bus.redis import RedisBus
from agentsync.protocol import Event, NewEvent
from conftest import service_missing

REDIS_URL = os.environ.get("AGENTSYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def redis_available() -> str | None:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
        return None
    except Exception as exc:
        return f"Redis at {REDIS_URL} is not reachable: {exc}"
    finally:
        await client.aclose()


class Node:
    """One bus as a hub would hold it, recording what it receives."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.received: list[tuple[str, bytes]] = []
        self.resyncs = 0
        self.changed = asyncio.Event()

    def on_message(self, channel: str, payload: bytes) -> None:
        self.received.append((channel, payload))
        self.changed.set()

    def on_resync(self) -> None:
        self.resyncs += 1
        self.changed.set()

    async def wait(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), within)

    def payloads(self, channel: str) -> list[bytes]:
        return [p for c, p in self.received if c == channel]


@pytest.fixture(params=["local", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Any]]:
    """A factory of connected nodes on one bus backend."""
    if request.param == "redis":
        reason = await redis_available()
        if reason is not None:
            service_missing(reason)
    broker = LocalBroker()
    opened: list[Node] = []

    async def make() -> Node:
        name = f"agentsync-test-{uuid.uuid4().hex[:8]}"
        bus: Bus = LocalBus(broker) if request.param == "local" else RedisBus(REDIS_URL, name=name)
        node = Node(bus)
        await bus.open(node.on_message, node.on_resync)
        opened.append(node)
        return node

    yield make
    for node in opened:
        await node.bus.close()


def channel() -> str:
    return channel_of(uuid.uuid4().hex)


async def test_only_subscribers_receive_in_publish_order(nodes: Any) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    mine, other = channel(), channel()
    await b.bus.subscribe(mine)
    await c.bus.subscribe(other)
    messages = [(mine, b"E%d" % i) for i in range(200)]
    for i in range(0, 200, 20):
        await a.bus.publish(messages[i : i + 20])
    await a.bus.publish([(other, b"Gdeleted")])
    await b.wait(lambda: len(b.received) == 200)
    await c.wait(lambda: len(c.received) == 1)
    assert b.payloads(mine) == [p for _, p in messages]
    assert c.received == [(other, b"Gdeleted")]
    assert a.received == []


async def test_subscribe_is_active_when_it_returns_and_unsubscribe_stops(nodes: Any) -> None:
    a, b = await nodes(), await nodes()
    for _ in range(20):
        ch = channel()
        await b.bus.subscribe(ch)
        await a.bus.publish([(ch, b"first")])  # published right after subscribe returned
        await b.wait(lambda ch=ch: b.payloads(ch) == [b"first"])
        await b.bus.unsubscribe(ch)
        await a.bus.publish([(ch, b"after")])
    marker = channel()
    await b.bus.subscribe(marker)
    await a.bus.publish([(marker, b"marker")])
    await b.wait(lambda: b.payloads(marker) == [b"marker"])
    assert b"after" not in [p for _, p in b.received]


async def test_every_subscriber_of_a_channel_receives(nodes: Any) -> None:
    publisher = await nodes()
    readers = [await nodes() for _ in range(3)]
    ch = channel()
    for reader in readers:
        await reader.bus.subscribe(ch)
    await publisher.bus.publish([(ch, b"x"), (ch, b"y")])
    for reader in readers:
        await reader.wait(lambda r=reader: r.payloads(ch) == [b"x", b"y"])


async def test_a_dropped_connection_resubscribes_and_asks_for_a_resync(nodes: Any) -> None:
    a, b = await nodes(), await nodes()
    ch = channel()
    await b.bus.subscribe(ch)
    if isinstance(b.bus, LocalBus):
        b.bus.simulate_reconnect()
    else:
        admin = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            # Only this test's subscriber: the machine's Redis may have other users.
            clients = await admin.client_list()
            ours = [c["id"] for c in clients if c.get("name") == b.bus.name]
            assert len(ours) == 1, clients
            await admin.client_kill_filter(_id=ours[0])
        finally:
            await admin.aclose()
    await b.wait(lambda: b.resyncs >= 1)
    if isinstance(b.bus, RedisBus):
        await asyncio.wait_for(b.bus.connected.wait(), 5)
    await a.bus.publish([(ch, b"after the drop")])
    await b.wait(lambda: b.payloads(ch) == [b"after the drop"])


def test_events_survive_the_wire_format() -> None:
    events = [
        Event.make(7, NewEvent("e7", "message", 1700000000000, {"id": "m", "role": "user",
                                                              "content": "a\nb \u2028 ✓"})),
        Event.make(8, NewEvent("e8", "status", 1700000000001, {"status": "idle"})),
    ]  # fmt: skip
    decoded = decode(encode_committed(events))
    assert [e.to_json() for e in decoded.events] == [e.to_json() for e in events]  # type: ignore[union-attr]
    assert [e.encoded for e in decoded.events] == [e.encoded for e in events]  # type: ignore[union-attr]
    assert decode(encode_ended("deleted")).why == "deleted"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        decode(b"Xnonsense")


def test_the_last_seq_is_read_without_decoding() -> None:
    one = Event.make(41, NewEvent("a", "status", 1, {"status": "x"}))
    two = Event.make(42, NewEvent("b", "status", 2, {"status": "y,\n"}))
    assert last_seq_of(encode_committed([one])) == 41
    assert last_seq_of(encode_committed([one, two])) == 42
    assert last_seq_of(encode_ended("deleted")) is None
