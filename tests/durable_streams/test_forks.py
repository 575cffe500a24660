"""Forks beyond the official suite: reference counts, soft delete and cascading removal
kept exactly by the store, across SIGKILL and restart, through expiry, and for refusals."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentsync.config import Config
from agentsync.store.sqlite import SQLiteStore
from agentsync.streams.manager import StreamManager
from agentsync.streams.postgres import PostgresStreamStore
from agentsync.streams.rules import AppendRequest, CreateRequest, ForkRequest, StreamError
from agentsync.streams.sqlite import UNITS, SQLiteStreamStore

from ._backends import BACKENDS, open_manager, read_all

TEXT = CreateRequest("text/plain", None, None, None, False, None)


def fork_of(source: str, offset: int | None = None, sub: int = 0, **kw: Any) -> CreateRequest:
    fields: dict[str, Any] = {"content_type": None, **kw}
    return dataclasses.replace(TEXT, fork=ForkRequest(source, offset, sub), **fields)


def append(body: bytes) -> AppendRequest:
    return AppendRequest(body, "text/plain", None, None, close=False)


@pytest.fixture(params=BACKENDS)
async def manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StreamManager]:
    async with open_manager(request.param, tmp_path) as manager:
        yield manager


async def rows(manager: StreamManager) -> tuple[dict[str, tuple[int, int]], int]:
    """Every stream row as path -> (refs, deleted), and the number of stored units."""
    store = manager.store
    if isinstance(store, PostgresStreamStore):

        async def fetch(conn: Any) -> tuple[dict[str, tuple[int, int]], int]:
            found = await conn.fetch("SELECT path, refs, deleted FROM streams")
            count = await conn.fetchval("SELECT count(*) FROM stream_units")
            return {p: (r, int(d)) for p, r, d in found}, count

        return await store.store._read(fetch)
    assert isinstance(store, SQLiteStreamStore)

    def run(conn: Any) -> tuple[dict[str, tuple[int, int]], int]:
        streams = {p: (r, d) for p, r, d in conn.execute("SELECT path, refs, deleted FROM streams")}
        return streams, conn.execute(f"SELECT COUNT(*) FROM ({UNITS})").fetchone()[0]

    return await store.store._read(run)


async def status(manager: StreamManager, path: str) -> int:
    try:
        await manager.current(path)
    except StreamError as err:
        return err.status
    return 200


async def test_rejected_forks_take_no_reference(manager: StreamManager) -> None:
    await manager.create("src", dataclasses.replace(TEXT, body=b"hi"))
    await manager.create("taken", TEXT)
    refusals = [
        ("f", fork_of("src", content_type="application/json"), 409),
        ("f", fork_of("src", offset=2), 400),
        ("f", fork_of("src", offset=0, sub=3), 400),
        ("f", fork_of("src", sub=1), 400),  # at the tail: nothing to take from
        ("f", fork_of("nowhere"), 404),
        ("taken", fork_of("src"), 409),  # the path holds a plain stream
    ]
    for path, req, expected in refusals:
        with pytest.raises(StreamError) as info:
            await manager.create(path, req)
        assert info.value.status == expected, req
    streams, _units = await rows(manager)
    assert streams == {"src": (0, 0), "taken": (0, 0)}
    await manager.delete("src")  # no leaked reference: removed, not soft-deleted
    assert await status(manager, "src") == 404


async def test_a_repeated_fork_put_is_idempotent_after_the_source_grew(
    manager: StreamManager,
) -> None:
    """A fork created at the source's tail (no Stream-Fork-Offset) and PUT again with the
    same headers is the same fork (200), even though the tail has moved since."""
    await manager.create("src", dataclasses.replace(TEXT, body=b"a"))
    first = await manager.create("f", fork_of("src"))
    await manager.append("src", append(b"b"))
    again = await manager.create("f", fork_of("src"))
    assert first.new and not again.new and again.state.id == first.state.id
    assert not (await manager.create("f", fork_of("src", offset=1))).new  # its offset
    with pytest.raises(StreamError) as info:
        await manager.create("f", fork_of("src", offset=2))  # another offset: not the same
    assert info.value.status == 409
    assert await read_all(manager, "f") == b"a"


async def test_a_chain_is_removed_whole_when_its_last_fork_goes(manager: StreamManager) -> None:
    await manager.create("l0", dataclasses.replace(TEXT, body=b"abcdef"))
    await manager.create("l1", fork_of("l0", offset=0, sub=4))  # "abcd"
    await manager.append("l1", append(b"X"))
    await manager.create("l2", fork_of("l1", offset=1))  # "abcd", not "X"
    await manager.append("l2", append(b"Y"))
    await manager.create("other", fork_of("l0"))
    assert await read_all(manager, "l2") == b"abcdY"
    await manager.delete("l0")
    await manager.delete("l1")
    assert (await status(manager, "l0"), await status(manager, "l1")) == (410, 410)
    assert await read_all(manager, "l2") == b"abcdY"
    await manager.delete("l2")  # l1 goes with it; l0 stays for "other"
    streams, units = await rows(manager)
    assert streams == {"l0": (1, 1), "other": (0, 0)}
    assert units == 1  # l0's "abcdef": l1's and l2's units went with their rows
    await manager.delete("other")
    assert await rows(manager) == ({}, 0)
    assert (await manager.create("l0", TEXT)).new  # the path is free again


async def test_expiry_soft_deletes_a_source_and_releases_a_fork(manager: StreamManager) -> None:
    await manager.create("src", dataclasses.replace(TEXT, ttl_seconds=1, body=b"kept"))
    await manager.create("fork", fork_of("src", ttl_seconds=3600))
    assert (await manager.current("fork"))[1].ttl_seconds == 3600  # its own, not capped
    await asyncio.sleep(1.05)
    assert await manager.sweep_expired() == 1
    assert await status(manager, "src") == 410  # expired, but the fork reads through it
    assert await read_all(manager, "fork") == b"kept"
    with pytest.raises(StreamError) as info:
        await manager.create("src", TEXT)
    assert info.value.status == 409
    short = await manager.create("short", fork_of("fork", ttl_seconds=1))
    assert short.state.ttl_seconds == 1
    await manager.delete("fork")  # soft: "short" holds it
    await asyncio.sleep(1.05)
    await manager.sweep_expired()  # "short" expires: "fork", then "src", go with it
    assert await rows(manager) == ({}, 0)


async def test_forks_and_soft_deletes_survive_sigkill(server_factory: Any) -> None:
    srv = server_factory()
    text = {"content-type": "text/plain"}
    async with httpx.AsyncClient(base_url=srv.url + "/v1/stream/", timeout=10.0) as client:
        assert (await client.put("src", headers=text, content=b"A")).status_code == 201
        assert (await client.post("src", headers=text, content=b"BC")).status_code == 204
        mid = await client.put(
            "mid",
            headers={
                "stream-forked-from": "/v1/stream/src",
                "stream-fork-offset": "0000000000000000_0000000000000001",
                "stream-fork-sub-offset": "1",
            },
        )
        assert mid.status_code == 201
        leaf = await client.put("leaf", headers={"stream-forked-from": "/v1/stream/mid"})
        assert leaf.status_code == 201
        assert (await client.post("leaf", headers=text, content=b"Z")).status_code == 204
        assert (await client.delete("src")).status_code == 204
        assert (await client.delete("mid")).status_code == 204
    await srv.arestart()  # SIGKILL, then start on the same data directory
    async with httpx.AsyncClient(base_url=srv.url + "/v1/stream/", timeout=10.0) as client:
        assert (await client.head("src")).status_code == 410
        assert (await client.get("mid")).status_code == 410
        assert (await client.put("src", headers=text)).status_code == 409
        gone = await client.put("again", headers={"stream-forked-from": "/v1/stream/mid"})
        assert gone.status_code == 409
        read = await client.get("leaf", params={"offset": "-1"})
        assert (read.status_code, read.text) == (200, "ABZ")
        assert (await client.delete("leaf")).status_code == 204
    await srv.arestart()
    async with httpx.AsyncClient(base_url=srv.url + "/v1/stream/", timeout=10.0) as client:
        for path in ("leaf", "mid", "src"):
            assert (await client.head(path)).status_code == 404, path
        assert (await client.put("src", headers=text)).status_code == 201
        assert (await client.get("src")).text == ""


async def test_a_step_one_database_gains_the_fork_columns(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "agentsync.db")
    await store.open()
    try:

        def old_schema(conn: Any) -> None:
            conn.execute(
                "CREATE TABLE streams (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL"
                " UNIQUE, content_type TEXT NOT NULL, ttl_seconds INTEGER, expires_at TEXT,"
                " expires_at_ms INTEGER, created_at INTEGER NOT NULL, accessed_at INTEGER NOT"
                " NULL, tail INTEGER NOT NULL, closed INTEGER NOT NULL, closed_by TEXT,"
                " stream_seq TEXT)"
            )
            conn.execute(
                "INSERT INTO streams (path, content_type, created_at, accessed_at, tail, closed)"
                " VALUES ('old', 'text/plain', 0, 0, 0, 0)"
            )

        await store._write(old_schema)
        manager = StreamManager(Config(data=str(tmp_path)), SQLiteStreamStore(store))
        await manager.start()
        try:
            assert (await manager.create("f", fork_of("old"))).new
            assert (await manager.current("old"))[1].refs == 1
        finally:
            await manager.stop()
    finally:
        await store.close()
