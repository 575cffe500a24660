"""Findings of a review of the stream store, each pinned by a test: open reads must not
cost the writer more than they must."""

from __future__ import annotations

from pathlib import Path

from agentsync.store.sqlite import SQLiteStore
from agentsync.streams.rules import CreateRequest
from agentsync.streams.sqlite import SQLiteStreamStore


async def test_looking_up_unknown_paths_never_truncates_the_wal(tmp_path: Path) -> None:
    """A 404 read is open to anyone: it must not ask for a WAL truncation (a checkpoint
    that blocks writers), which only a removed stream needs."""
    store = SQLiteStore(tmp_path / "agentsync.db")
    await store.open()
    streams = SQLiteStreamStore(store)
    await streams.open()
    truncations: list[int] = []
    writer = store._writer
    assert writer is not None
    writer.on_delete = lambda: truncations.append(1)
    try:
        for i in range(20):
            assert await streams.load(f"missing-{i}") is None
        assert truncations == []
        req = CreateRequest("text/plain", None, None, None, closed=False, body=None)
        await streams.create("real", req, 1, 1)
        await streams.delete("real", 2, 2)
        assert truncations, "deleting a stream must still truncate the WAL"
    finally:
        await store.close()
