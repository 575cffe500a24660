"""Archiving through the hub, on every store backend and every archive backend:
idle sessions leave the store, come back on read and on write with their seqs and ids,
and leave nothing behind when deleted. Then two hubs over one store and one bus."""

from __future__ import annotations

import asyncio
import dataclasses
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest

from agentsync import archiver as archiver_module
from agentsync import protocol
from agentsync.archive.base import Archive
from agentsync.archive.local import LocalArchive
from agentsync.archive.s3 import S3Archive
from agentsync.auth import new_share_id
from agentsync.bus.local import LocalBroker, LocalBus
from agentsync.hub import Hub
from agentsync.metrics import Metrics
from agentsync.protocol import Event, NewEvent, Unavailable, parse_event
from agentsync.store import postgres as postgres_module
from agentsync.store.sqlite import SQLiteStore
from conftest import service_missing
from in_process import http_client
from store.test_conformance import BACKENDS, Backend
from test_hub import attach, config, new_share


def message(i: int) -> NewEvent:
    return parse_event(
        {
            "id": f"m{i}",
            "type": "message",
            "data": {"id": f"msg{i}", "role": "user", "content": "hi"},
        }
    )


def delta(i: int, to: int) -> NewEvent:
    return parse_event(
        {"id": f"d{i}", "type": "message.delta", "data": {"id": f"msg{to}", "delta": f" {i}"}}
    )


def status(i: int) -> NewEvent:
    return parse_event({"id": f"ev{i}", "type": "status", "data": {"status": str(i)}})


def counter(metric: object) -> float:
    return float(metric._value.get())  # type: ignore[attr-defined]


@dataclasses.dataclass
class Setup:
    backend: Backend
    archive_kind: str
    tmp_path: Path
    s3_url: str | None = None

    def make_archive(self) -> Archive:
        if self.s3_url is None:
            return LocalArchive(self.tmp_path / "archive")
        return S3Archive.from_url(self.s3_url)

    async def hub(self) -> Hub:
        cfg = config(self.tmp_path, archive_after=0.0)
        hub = Hub(cfg, self.backend.make(self.tmp_path), Metrics(), archive=self.make_archive())
        await hub.store.open()
        assert hub.archiver is not None
        await hub.archiver.start()
        return hub


LOCAL = [("sqlite", "local"), ("postgres", "local")]


@pytest.fixture(params=[*LOCAL, ("sqlite", "s3")])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    async for chosen in _setup(request, tmp_path):
        yield chosen


@pytest.fixture(params=LOCAL)
async def local_setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    """Every store with a local archive: the S3 server of the tests runs in this process."""
    async for chosen in _setup(request, tmp_path):
        yield chosen


async def _setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    store_name, archive_kind = request.param
    backend = BACKENDS[store_name]
    reason = await backend.missing() if backend.missing is not None else None
    if reason is not None:
        service_missing(f"the {backend.name} store needs its service: {reason}")
    chosen = Setup(backend, archive_kind, tmp_path)
    if archive_kind == "s3":
        chosen.s3_url = request.getfixturevalue("s3_archive_url")
    yield chosen
    if backend.cleanup is not None:
        await backend.cleanup(tmp_path)


async def test_archive_read_write_delete_round_trip(setup: Setup) -> None:
    hub = await setup.hub()
    assert hub.archiver is not None
    archive = hub.archiver.archive
    try:
        sid = await new_share(hub)
        live = await hub.get(sid)
        await hub.append(live, [message(1)])
        for i in range(2, 26):
            await hub.append(live, [delta(i, 1) if i % 3 else status(i)])
        before_state = live.core.snapshot()
        before_log = [e.encoded for e in await hub.store.read_events(sid, 0, 100)]
        assert len(before_log) == 25

        await hub.evict_idle()  # unloads it, then archives it: idle for 0 s already
        assert sid not in hub.sessions
        share = await hub.store.get_share(sid)
        assert share is not None and share.archive is not None
        assert counter(hub.metrics.sessions_archived) == 1
        assert await archive.names(sid) == [share.archive]
        left = await setup.backend.leftovers(setup.tmp_path, sid)
        assert set(left) == {"shares"}, left  # no event or snapshot row left in the store
        assert await hub.store.last_seq(sid) == 25  # the store reports the archived log

        # Read: restored on load, the same state and log.
        live = await hub.get(sid)
        assert counter(hub.metrics.sessions_restored) == 1
        assert live.core.snapshot() == before_state
        assert [e.encoded for e in await hub.store.read_events(sid, 0, 100)] == before_log
        assert await archive.names(sid) == []  # the store holds the log again

        # Write: new seqs follow on, a retried id keeps its original seq.
        assert (await hub.append(live, [status(26)])).seqs == [26]
        assert (await hub.append(live, [status(3), status(27)])).seqs == [3, 27]

        # Archived again while still loaded here (as by another node): a write restores.
        assert await hub.archiver.archive_session(sid)
        assert (await hub.append(live, [status(28)])).seqs == [28]
        assert counter(hub.metrics.sessions_restored) == 2
        # Archived again: a retried old id, unknown in memory (loaded from a snapshot),
        # gets its original seq, at worst after one retryable 503.
        await hub.drop(live, None)
        live = await hub.get(sid)
        assert not live.core.all_ids_known
        assert await hub.archiver.archive_session(sid)
        for _attempt in range(2):
            try:
                result = await hub.append(await hub.get(sid), [status(6), status(29)])
                break
            except Unavailable:
                continue
        assert result.seqs == [6, 29]
        stored = await hub.store.read_events(sid, 0, 100)
        assert [e.seq for e in stored] == list(range(1, 30))
        assert [e.encoded for e in stored[:25]] == before_log

        # Delete: the store rows and every archive object go.
        assert await hub.archiver.archive_session(sid)
        assert await hub.delete(sid)
        assert await archive.names(sid) == []
        assert await setup.backend.leftovers(setup.tmp_path, sid) == {}
    finally:
        await hub.stop()


async def test_a_missing_archive_object_is_an_error_never_an_empty_log(setup: Setup) -> None:
    hub = await setup.hub()
    assert hub.archiver is not None
    try:
        sid = await new_share(hub)
        await hub.append(await hub.get(sid), [status(1), status(2)])
        await hub.evict_idle()
        share = await hub.store.get_share(sid)
        assert share is not None and share.archive is not None
        await hub.archiver.archive.delete(sid, share.archive)  # lost by the object store
        with pytest.raises(Unavailable):
            await hub.get(sid)
        assert (await hub.store.get_share(sid)).archive == share.archive  # type: ignore[union-attr]
    finally:
        await hub.stop()


async def test_an_archive_put_that_loses_the_race_is_discarded(setup: Setup) -> None:
    hub = await setup.hub()
    assert hub.archiver is not None
    archiver = hub.archiver
    try:
        sid = await new_share(hub)
        live = await hub.get(sid)
        await hub.append(live, [status(1)])
        put_file = archiver.archive.put_file

        async def slow_put(session_id: str, name: str, source: IO[bytes]) -> None:
            await hub.append(live, [status(2)])  # a write lands while the object uploads
            await put_file(session_id, name, source)

        archiver.archive.put_file = slow_put  # type: ignore[method-assign]
        assert not await archiver.archive_session(sid)
        assert await archiver.archive.names(sid) == []
        assert [e.seq for e in await hub.store.read_events(sid, 0, 10)] == [1, 2]
        assert (await hub.store.get_share(sid)).archive is None  # type: ignore[union-attr]
    finally:
        await hub.stop()


async def test_deleting_an_archived_share_does_not_restore_it(setup: Setup) -> None:
    hub = await setup.hub()
    assert hub.archiver is not None
    archive = hub.archiver.archive
    try:
        sid = await new_share(hub)  # its secret is "s"
        await hub.append(await hub.get(sid), [status(i) for i in range(5)])
        await hub.evict_idle()
        share = await hub.store.get_share(sid)
        assert share is not None and share.archive is not None
        reads: list[str] = []
        get, get_file = archive.get, archive.get_file

        async def counting_get(session_id: str, name: str) -> bytes | None:
            reads.append(name)
            return await get(session_id, name)

        async def counting_get_file(session_id: str, name: str, sink: IO[bytes]) -> bool:
            reads.append(name)
            return await get_file(session_id, name, sink)

        archive.get = counting_get  # type: ignore[method-assign]
        archive.get_file = counting_get_file  # type: ignore[method-assign]
        async with http_client(hub) as http:
            wrong = await http.delete(f"/v1/shares/{sid}", headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 403, wrong.text
            assert await archive.names(sid) == [share.archive]  # kept, still archived
            resp = await http.delete(f"/v1/shares/{sid}", headers={"Authorization": "Bearer s"})
            assert resp.status_code == 204, resp.text
            assert reads == []  # the archive object was never read back
            assert counter(hub.metrics.sessions_restored) == 0
            assert sid not in hub.sessions
            assert await archive.names(sid) == []
            assert await setup.backend.leftovers(setup.tmp_path, sid) == {}
            for resp in (
                await http.get(f"/v1/sessions/{sid}"),
                await http.delete(f"/v1/shares/{sid}", headers={"Authorization": "Bearer s"}),
            ):
                assert resp.status_code == 410, resp.text
            resp = await http.delete(
                f"/v1/shares/{new_share_id()}", headers={"Authorization": "Bearer s"}
            )
            assert resp.status_code == 404, resp.text
    finally:
        await hub.stop()


async def test_the_expiry_sweep_deletes_an_archived_share_without_restoring_it(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await setup.hub()
    assert hub.archiver is not None
    archive = hub.archiver.archive
    try:
        expires_at = protocol.now_ms() + 3_600_000
        sid = await new_share(hub, expires_at=expires_at)
        await hub.append(await hub.get(sid), [status(1)])
        await hub.evict_idle()
        assert len(await archive.names(sid)) == 1

        async def no_get(*args: object) -> bool:
            raise AssertionError("an expired share's archive was read")

        archive.get = archive.get_file = no_get  # type: ignore[method-assign,assignment]
        monkeypatch.setattr(protocol, "now_ms", lambda: expires_at + 1)
        assert await hub.sweep_expired() == 1
        assert await archive.names(sid) == []
        assert await setup.backend.leftovers(setup.tmp_path, sid) == {}
        assert await hub.store.is_tombstoned(sid)
    finally:
        await hub.stop()


async def test_archiving_and_restoring_hold_a_page_not_the_log(
    local_setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = local_setup  # the S3 server's objects would count: it runs in this process
    # Small pages, so that the log is a hundred of them; peaks then show whether memory
    # follows the page or the log.
    monkeypatch.setattr(archiver_module, "READ_PAGE", 200)
    monkeypatch.setattr(archiver_module, "SPOOL_BYTES", 256 * 1024)
    monkeypatch.setattr(postgres_module, "RESTORE_PAGE", 200)
    hub = await setup.hub()
    assert hub.archiver is not None
    try:
        sid = await new_share(hub)
        count, size = 20_000, 0
        for first in range(1, count + 1, 2000):
            page = [
                Event.make(seq, NewEvent(f"e{seq}", "status", seq, {"status": f"{seq:08}" * 100}))
                for seq in range(first, first + 2000)
            ]
            size += sum(len(e.encoded) for e in page)
            await hub.store.append(sid, page)
        tracemalloc.start()
        try:
            assert await hub.archiver.archive_session(sid)
            archiving = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            assert await hub.archiver.restore(sid)
            restoring = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # Holding the log (as encoded lines, or decoded) would take several times its size.
        assert archiving < size / 4 and restoring < size / 4, (archiving, restoring, size)
        assert await hub.store.last_seq(sid) == count
        back = await hub.store.read_events(sid, count - 1, 10)
        assert [(e.seq, e.id, e.data) for e in back] == [
            (count, f"e{count}", {"status": f"{count:08}" * 100})
        ]
    finally:
        await hub.stop()


# --- two nodes -------------------------------------------------------------------------


def bus_event(id: str, i: int) -> NewEvent:
    return parse_event({"id": id, "type": "status", "data": {"status": str(i)}})


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[Hub]]:
    cfg = config(tmp_path, idle_evict_seconds=3600.0, archive_after=0.0)
    broker = LocalBroker()
    hubs = []
    for _ in range(2):
        hub = Hub(
            cfg,
            SQLiteStore(cfg.sqlite_path),
            Metrics(),
            LocalBus(broker),
            archive=LocalArchive(tmp_path / "shared-archive"),  # as one bucket
        )
        await hub.start()
        hubs.append(hub)
    yield hubs
    for hub in hubs:
        await hub.stop()


async def test_archived_on_one_node_written_on_another(nodes: list[Hub]) -> None:
    a, b = nodes
    assert a.archiver is not None
    sid = await new_share(a)
    live_b = await b.get(sid)
    link = attach(b, live_b, 0)
    first = await b.append(live_b, [bus_event(f"x{i}", i) for i in range(5)])
    assert first.seqs == [1, 2, 3, 4, 5]
    assert await a.archiver.archive_session(sid)  # a does not hold it; b does, idle

    # b still holds the session: its write restores the log and follows on.
    again = await b.append(live_b, [bus_event("x2", 2), bus_event("y", 6)])
    assert again.seqs == [3, 6]
    assert counter(b.metrics.sessions_restored) == 1
    stored = await a.store.read_events(sid, 0, 100)
    assert [(e.seq, e.id) for e in stored] == [
        (1, "x0"), (2, "x1"), (3, "x2"), (4, "x3"), (5, "x4"), (6, "y")
    ]  # fmt: skip
    b._fanout_round(live_b)
    assert link.reader.cursor == 6

    # Archived again; a loads it (restores) and writes; b catches up through the bus.
    assert await a.archiver.archive_session(sid)
    live_a = await a.get(sid)
    assert (await a.append(live_a, [bus_event("z", 7)])).seqs == [7]
    for _ in range(200):
        if live_b.core.last_seq == 7:
            break
        await asyncio.sleep(0.01)
    assert live_b.core.last_seq == 7
    # And a write on b after that goes on from 7, with no duplicate of x0.
    assert (await b.append(live_b, [bus_event("x0", 0), bus_event("w", 8)])).seqs == [1, 8]
    assert [e.seq for e in await b.store.read_events(sid, 0, 100)] == list(range(1, 9))
