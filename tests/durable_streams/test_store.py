"""The stream store and manager in-process, on a real SQLite file and on PostgreSQL:
ordering of pipelined jobs, the cache fed in commit order, expiry and the coarse
access-time persistence."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentsync.streams import forks, rules
from agentsync.streams.manager import StreamManager
from agentsync.streams.rules import (
    AppendRequest,
    CreateRequest,
    Producer,
    Segment,
    StreamError,
    Write,
)

from ._backends import BACKENDS, open_manager, read_all

TEXT = CreateRequest("text/plain", None, None, None, False, None)


def producer_append(seq: int, body: bytes = b"x", epoch: int = 0) -> AppendRequest:
    return AppendRequest(body, "text/plain", None, Producer("p", epoch, seq), close=False)


@pytest.fixture(params=BACKENDS)
async def manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StreamManager]:
    async with open_manager(request.param, tmp_path) as manager:
        yield manager


async def test_pipelined_producer_appends_keep_their_order(manager: StreamManager) -> None:
    await manager.create("s", TEXT)
    # All queued before any commits: the writer runs them in queue order, so a producer
    # that pipelines (as the official IdempotentProducer does) never sees a false gap.
    results = await asyncio.gather(
        *(manager.append("s", producer_append(i, b"%d," % i)) for i in range(200))
    )
    assert all(isinstance(r.outcome, Write) for r in results)
    assert [r.state.tail for r in results] == list(range(1, 201))
    assert await read_all(manager, "s") == b"".join(b"%d," % i for i in range(200))


async def test_retries_in_the_same_group_are_duplicates(manager: StreamManager) -> None:
    await manager.create("s", TEXT)
    first, again, gap = await asyncio.gather(
        manager.append("s", producer_append(0)),
        manager.append("s", producer_append(0, b"other")),
        manager.append("s", producer_append(5)),
        return_exceptions=True,
    )
    assert not isinstance(first, BaseException) and isinstance(first.outcome, Write)
    assert not isinstance(again, BaseException)
    assert again.outcome == rules.Duplicate(0, 0, closed=False)
    assert isinstance(gap, StreamError) and gap.status == 409
    assert await read_all(manager, "s") == b"x"


async def test_the_cache_hears_of_a_write_whose_caller_went_away(manager: StreamManager) -> None:
    await manager.create("s", TEXT)
    live = await manager.get("s")
    waiter = asyncio.ensure_future(manager.wait_beyond(live, 0, 5.0))
    task = asyncio.ensure_future(manager.append("s", producer_append(0)))
    await asyncio.sleep(0)  # the job is queued
    task.cancel()
    assert await waiter is True  # woken by the committed append, not by a timeout
    assert live.state is not None and live.state.tail == 1


async def test_expired_streams_answer_404_and_can_be_created_again(
    manager: StreamManager,
) -> None:
    await manager.create("s", dataclasses.replace(TEXT, ttl_seconds=1, body=b"old"))
    first_id = (await manager.current("s"))[1].id
    await asyncio.sleep(1.05)
    with pytest.raises(StreamError) as info:
        await manager.current("s")
    assert info.value.status == 404
    created = await manager.create("s", dataclasses.replace(TEXT, ttl_seconds=1))
    assert created.new and created.state.id != first_id
    assert await read_all(manager, "s") == b""


async def test_reads_renew_the_ttl_in_memory_and_persist_it_coarsely(
    manager: StreamManager,
) -> None:
    await manager.create("s", dataclasses.replace(TEXT, ttl_seconds=1))
    live, state = await manager.current("s")
    manager.accessed(live)
    assert not live.touching  # just written: nothing to persist yet
    await asyncio.sleep(0.3)  # a quarter of the TTL
    manager.accessed(live)
    assert live.touching
    await asyncio.sleep(0)  # the touch job is queued...
    assert manager.store is not None
    await manager.store.load("s")  # ...and committed before this one
    assert live.state is not None and live.state.accessed_at > state.accessed_at
    await asyncio.sleep(0.8)  # past the TTL counted from creation, not from the read
    manager.accessed(live)
    await manager.current("s")


async def test_read_units_pages_through_long_streams_and_stops_at_max_bytes(
    manager: StreamManager,
) -> None:
    await manager.create("long", TEXT)
    for i in range(600):
        await manager.append("long", AppendRequest(b"%03d" % i, "text/plain", None, None, False))
    _live, state = await manager.current("long")
    assert manager.store is not None
    pieces = forks.segments(state, 0, state.tail)
    units = await manager.store.read_units(pieces, 1 << 30)
    assert [seq for seq, _ in units] == list(range(1, 601))
    assert b"".join(u for _, u in units) == b"".join(b"%03d" % i for i in range(600))
    assert len(await manager.store.read_units(pieces, 10)) == 3
    assert len(await manager.store.read_units(pieces, 1)) == 1  # at least one


async def test_sqlite_appends_see_rows_another_process_changed(tmp_path: Path) -> None:
    """The SQLite writer keeps the rows its appends left, to skip reading them again; a
    change by another process (here: another connection closing the stream) must win."""
    import sqlite3

    async with open_manager("sqlite", tmp_path) as manager:
        await manager.create("s", TEXT)
        await manager.append("s", AppendRequest(b"a", "text/plain", None, None, False))
        other = sqlite3.connect(tmp_path / "agentsync.db", isolation_level=None)
        try:
            other.execute("UPDATE streams SET closed = 1 WHERE path = 's'")
        finally:
            other.close()
        with pytest.raises(StreamError) as info:
            await manager.append("s", AppendRequest(b"b", "text/plain", None, None, False))
        assert info.value.status == 409
        assert await read_all(manager, "s") == b"a"


async def test_sqlite_units_read_whole_across_folds(tmp_path: Path) -> None:
    """SQLite writes units to a small recent table and folds them into the main one:
    reads, forks and deletes must see one log either way, also after a restart."""
    import sqlite3

    from agentsync.streams.sqlite import FOLD_UNITS

    def counts() -> tuple[int, int]:
        conn = sqlite3.connect(tmp_path / "agentsync.db")
        try:
            main = conn.execute("SELECT COUNT(*) FROM stream_units").fetchone()[0]
            recent = conn.execute("SELECT COUNT(*) FROM stream_units_recent").fetchone()[0]
            return main, recent
        finally:
            conn.close()

    def unit(path: str, i: int) -> bytes:
        return b"%s%05d," % (path.encode(), i)

    total = FOLD_UNITS * 2 + FOLD_UNITS // 3  # two folds, and units left in recent
    async with open_manager("sqlite", tmp_path) as manager:
        for path in ("a", "b", "gone"):
            await manager.create(path, TEXT)
        for start in range(0, total, 150):
            end = min(start + 150, total)
            await asyncio.gather(
                *(
                    manager.append(
                        path, AppendRequest(unit(path, i), "text/plain", None, None, False)
                    )
                    for i in range(start, end)
                    for path in ("a", "b", "gone")
                )
            )
            want = b"".join(unit("a", i) for i in range(end))
            assert await read_all(manager, "a") == want  # before, across and after a fold
        main, recent = counts()
        assert main >= 2 * FOLD_UNITS and 0 < recent < FOLD_UNITS
        fork = rules.ForkRequest("a", total - 5, 0)  # from a folded unit on
        await manager.create("fork", dataclasses.replace(TEXT, fork=fork))
        await manager.append("fork", AppendRequest(b"own", "text/plain", None, None, False))
        await manager.delete("gone")
        assert sum(counts()) == 2 * total + 1  # a, b and the fork's own; none of "gone"
    async with open_manager("sqlite", tmp_path) as manager:
        assert await read_all(manager, "b") == b"".join(unit("b", i) for i in range(total))
        fork_wants = b"".join(unit("a", i) for i in range(total - 5)) + b"own"
        assert await read_all(manager, "fork") == fork_wants


async def test_appends_of_one_turn_each_get_their_own_answer(manager: StreamManager) -> None:
    """Appends made together (SQLite writes them as one batch) are decided one by one,
    in order: a refusal refuses only its own append, and a close shuts out the rest."""
    await manager.create("a", TEXT)
    await manager.create("b", TEXT)

    def plain(body: bytes, close: bool = False) -> AppendRequest:
        return AppendRequest(body, "text/plain", None, None, close)

    results = await asyncio.gather(
        manager.append("a", plain(b"1")),
        manager.append("missing", plain(b"?")),
        manager.append("b", producer_append(0, b"x")),
        manager.append("a", plain(b"2", close=True)),
        manager.append("b", producer_append(0, b"again")),
        manager.append("a", plain(b"3")),
        manager.append("b", producer_append(1, b"y")),
        return_exceptions=True,
    )
    statuses = [
        r.status if isinstance(r, StreamError) else type(getattr(r, "outcome", r)).__name__
        for r in results
    ]
    assert statuses == ["Write", 404, "Write", "Write", "Duplicate", 409, "Write"]
    assert await read_all(manager, "a") == b"12"
    assert await read_all(manager, "b") == b"xy"
    _live, state_a = await manager.current("a")
    assert state_a.closed and state_a.tail == 2


async def test_readers_asking_for_the_same_units_at_once_share_one_read(
    manager: StreamManager,
) -> None:
    """Every SSE reader woken by an append asks for just that append: one store read."""
    await manager.create("s", dataclasses.replace(TEXT, body=b"abc"))
    _live, state = await manager.current("s")
    assert manager.store is not None
    store = manager.store
    calls = 0
    read_units = store.read_units

    async def counting(pieces: Sequence[Segment], max_bytes: int) -> list[tuple[int, bytes]]:
        nonlocal calls
        calls += 1
        return await read_units(pieces, max_bytes)

    store.read_units = counting  # type: ignore[method-assign]
    reads = await asyncio.gather(
        *(manager.read_units(state, 0, state.tail, 1 << 20) for _ in range(100))
    )
    assert calls == 1
    assert all(units == [(1, b"abc")] for units in reads)
    assert await manager.read_units(state, 0, state.tail, 1 << 20) == [(1, b"abc")]
    assert calls == 2  # shared only while in flight, never cached


async def test_a_chain_of_forks_ends_at_the_lineage_limit(manager: StreamManager) -> None:
    """Each fork reads through every stream above it: the chain is refused past 64."""
    await manager.create("f0", dataclasses.replace(TEXT, body=b"0"))
    depth = 0
    while True:
        fork = rules.ForkRequest(f"f{depth}", None, 0)
        try:
            await manager.create(f"f{depth + 1}", dataclasses.replace(TEXT, fork=fork))
        except StreamError as refused:
            assert (refused.status, refused.code) == (400, "fork_too_deep")
            break
        depth += 1
        await manager.append(
            f"f{depth}", AppendRequest(b"%d" % depth, "text/plain", None, None, False)
        )
        assert depth <= forks.MAX_LINEAGE, "no limit"
    assert depth == forks.MAX_LINEAGE
    assert await read_all(manager, f"f{depth}") == b"".join(b"%d" % i for i in range(depth + 1))
    with pytest.raises(StreamError):
        await manager.current(f"f{depth + 1}")


async def test_lookups_of_missing_paths_are_not_cached(manager: StreamManager) -> None:
    store: Any = manager.store
    commits = store.store.commits
    for i in range(200):
        with pytest.raises(StreamError):
            await manager.current(f"missing/{i}")
    assert not any(path.startswith("missing/") for path in manager.entries)
    # A read told them apart: no writer job, so a scan never queues behind appends.
    assert store.store.commits == commits
    await manager.create("missing/7", TEXT)  # and a later create is seen at once
    assert (await manager.current("missing/7"))[1].tail == 0
