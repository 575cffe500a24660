"""The hub over a real SQLite store, in-process: load, snapshot, evict, idempotency."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agentsync import auth, protocol
from agentsync.config import Config
from agentsync.hub import Hub, LiveSession
from agentsync.metrics import Metrics
from agentsync.protocol import (
    Event,
    Gone,
    InvalidEvent,
    NewEvent,
    NotFound,
    RateLimited,
    Unavailable,
    parse_event,
)
from agentsync.session import Reader
from agentsync.store.base import ShareRecord
from agentsync.store.sqlite import SQLiteStore


def config(tmp_path: Path, **overrides: object) -> Config:
    base = Config(data=str(tmp_path), snapshot_every=10, idle_evict_seconds=0.0, rate_limit=0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


async def make_hub(cfg: Config) -> Hub:
    hub = Hub(cfg, SQLiteStore(cfg.sqlite_path), Metrics())
    await hub.store.open()
    return hub


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h = await make_hub(config(tmp_path))
    yield h
    await h.stop()


async def new_share(hub: Hub, expires_at: int | None = None) -> str:
    share = ShareRecord(
        id=auth.new_share_id(),
        title="t",
        created_at=protocol.now_ms(),
        expires_at=expires_at,
        read="public",
        secret_hash=auth.hash_secret("s"),
        read_token_hash=None,
        epoch="e",
    )
    await hub.store.create_share(share)
    return share.id


def status(i: int) -> NewEvent:
    return parse_event({"id": f"ev{i}", "type": "status", "data": {"status": str(i)}})


async def test_reload_from_snapshot_keeps_state_and_idempotency(hub: Hub) -> None:
    sid = await new_share(hub)
    live = await hub.get(sid)
    for i in range(25):
        await hub.append(live, [status(i)])
    await hub.evict_idle()  # snapshot at 25, unload
    assert sid not in hub.sessions
    snap = await hub.store.load_snapshot(sid)
    assert snap is not None and snap.seq == 25

    reloaded = await hub.get(sid)
    assert reloaded is not live
    assert reloaded.core.last_seq == 25
    assert reloaded.core.snapshot()["status"] == "24"
    # ev3 is older than the snapshot: its id is not in memory, the store must answer.
    result = await hub.append(reloaded, [status(3), status(99)])
    assert result.seqs == [4, 26]
    events = await hub.store.read_events(sid, 0, 100)
    assert [e.seq for e in events] == list(range(1, 27))


async def test_events_after_reads_the_store_behind_the_backlog(tmp_path: Path) -> None:
    hub = await make_hub(config(tmp_path, backlog_events=5))
    try:
        sid = await new_share(hub)
        live = await hub.get(sid)
        await hub.append(live, [status(i) for i in range(20)])
        got = await hub.events_after(live, 2, 100)
        assert [e.seq for e in got] == list(range(3, 21))
    finally:
        await hub.stop()


async def test_unknown_and_deleted_and_expired(hub: Hub) -> None:
    with pytest.raises(NotFound):
        await hub.get("nope")
    sid = await new_share(hub)
    await hub.get(sid)
    assert await hub.delete(sid)
    with pytest.raises(Gone):
        await hub.get(sid)
    expired = await new_share(hub, expires_at=protocol.now_ms() - 1)
    with pytest.raises(Gone):
        await hub.get(expired)
    assert await hub.sweep_expired() == 1
    assert await hub.store.get_share(expired) is None


async def test_rejected_batch_stores_nothing(hub: Hub) -> None:
    sid = await new_share(hub)
    live = await hub.get(sid)
    bad = parse_event({"type": "message.delta", "data": {"id": "missing", "delta": "x"}})
    with pytest.raises(InvalidEvent):
        await hub.append(live, [status(1), bad])
    assert await hub.store.last_seq(sid) == 0
    assert (await hub.append(live, [status(1)])).seqs == [1]


async def test_rate_limit_answers_retry_after(tmp_path: Path) -> None:
    hub = await make_hub(config(tmp_path, rate_limit=1.0, rate_burst=3.0))
    try:
        live = await hub.get(await new_share(hub))
        await hub.append(live, [status(1), status(2), status(3)])
        with pytest.raises(RateLimited) as info:
            await hub.append(live, [status(4)])
        assert 0 < info.value.retry_after <= 1.0
        assert await hub.store.last_seq(live.id) == 3
    finally:
        await hub.stop()


class RecordingLink:
    """A reader link that accepts pushes only while ``writable``."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.writable = True
        self.frames: list[bytes] = []
        self.woken = 0
        self.closed: int | None = None

    def push(self, payload: bytes, wire: bytes | None, end_seq: int) -> bool:
        if not self.writable:
            return False
        self.frames.append(payload)
        self.reader.cursor = end_seq
        return True

    def wake(self) -> None:
        self.woken += 1

    def send_presence(self, payload: bytes) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        self.closed = code


def attach(hub: Hub, live: LiveSession, cursor: int) -> RecordingLink:
    link = RecordingLink(Reader(protocol.new_id(4), cursor=cursor, idle=True))
    hub.attach(live, link)
    return link


async def test_idle_readers_get_one_shared_frame_and_busy_ones_are_woken(hub: Hub) -> None:
    live = await hub.get(await new_share(hub))
    fast = [attach(hub, live, 0) for _ in range(3)]
    slow = attach(hub, live, 0)
    slow.writable = False
    await hub.append(live, [status(1), status(2)])
    assert all(link.frames and link.reader.cursor == 2 for link in fast)
    assert fast[0].frames[0] is fast[1].frames[0]  # encoded once, shared
    assert slow.frames == [] and slow.woken == 1 and slow.reader.cursor == 0


async def test_busy_session_coalesces_into_later_rounds(hub: Hub) -> None:
    live = await hub.get(await new_share(hub))
    link = attach(hub, live, 0)
    live.fanout_next = float("inf")  # as if a long round had just ended
    for i in range(5):
        await hub.append(live, [status(i)])
    assert link.frames == [] and live.fanout_timer is not None
    live.fanout_timer.cancel()
    hub._fanout_round(live)
    assert len(link.frames) == 1 and link.reader.cursor == 5


async def test_pipelined_batches_keep_their_order_when_ids_are_looked_up(hub: Hub) -> None:
    sid = await new_share(hub)
    live = await hub.get(sid)
    for i in range(12):
        await hub.append(live, [status(i)])
    await hub.evict_idle()  # reloaded from a snapshot: old ids live only in the store
    live = await hub.get(sid)
    assert not live.core.all_ids_known
    results = await asyncio.gather(*(hub.append(live, [status(100 + i)]) for i in range(20)))
    assert [r.seqs[0] for r in results] == list(range(13, 33))


class FlakyStore(SQLiteStore):
    """The real SQLite store, with appends that fail (or wait) when a test says so."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail_next = False
        self.gate: asyncio.Event | None = None

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("database or disk is full")
        await super().append(session_id, events)


async def flaky_hub(tmp_path: Path) -> tuple[Hub, FlakyStore]:
    cfg = config(tmp_path)
    store = FlakyStore(cfg.sqlite_path)
    hub = Hub(cfg, store, Metrics())
    await store.open()
    return hub, store


async def test_a_failed_store_write_is_rolled_back_and_can_be_retried(tmp_path: Path) -> None:
    hub, store = await flaky_hub(tmp_path)
    try:
        live = await hub.get(await new_share(hub))
        await hub.append(live, [status(1)])
        store.fail_next = True
        with pytest.raises(Unavailable):
            await hub.append(live, [status(2)])
        live = await hub.get(live.id)
        assert (await hub.append(live, [status(2)])).seqs == [2]
        assert (await hub.append(live, [status(3)])).seqs == [3]
        assert [e.id for e in await store.read_events(live.id, 0, 10)] == ["ev1", "ev2", "ev3"]
    finally:
        await hub.stop()


async def test_a_retry_in_flight_fails_with_its_original(tmp_path: Path) -> None:
    hub, store = await flaky_hub(tmp_path)
    try:
        live = await hub.get(await new_share(hub))
        store.gate = asyncio.Event()
        store.fail_next = True
        original = asyncio.ensure_future(hub.append(live, [status(1)]))
        await asyncio.sleep(0.01)
        retry = asyncio.ensure_future(hub.append(live, [status(1)]))
        await asyncio.sleep(0.01)
        store.gate.set()
        store.gate = None
        results = await asyncio.gather(original, retry, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), results
        live = await hub.get(live.id)
        assert (await hub.append(live, [status(1)])).seqs == [1]
        assert [e.seq for e in await store.read_events(live.id, 0, 10)] == [1]
    finally:
        await hub.stop()
