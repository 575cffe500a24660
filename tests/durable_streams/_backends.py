"""The stream stores the tests run on: SQLite (a file in the test's directory) and
PostgreSQL (a schema of its own per test, dropped after; skipped when unreachable)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agentsync.config import Config
from agentsync.store.postgres import PostgresStore
from agentsync.store.sqlite import SQLiteStore
from agentsync.streams import forks
from agentsync.streams.manager import StreamManager
from agentsync.streams.postgres import PostgresStreamStore
from agentsync.streams.sqlite import SQLiteStreamStore
from conftest import PG_URL, fresh_pg_schema

BACKENDS = ["sqlite", "postgres"]


def pg_schema() -> contextlib.AbstractAsyncContextManager[str]:
    """A fresh schema name, dropped (with everything in it) afterwards."""
    return fresh_pg_schema("streams_")


@contextlib.asynccontextmanager
async def open_manager(backend: str, tmp_path: Path) -> AsyncIterator[StreamManager]:
    """A started manager on ``backend``'s stream store; stopped and closed after."""
    async with contextlib.AsyncExitStack() as stack:
        store: Any
        if backend == "postgres":
            schema = await stack.enter_async_context(pg_schema())
            store = PostgresStore(PG_URL, schema=schema, pool_size=4)
            await store.open()
            streams: Any = PostgresStreamStore(store)
        else:
            store = SQLiteStore(tmp_path / "agentsync.db")
            await store.open()
            streams = SQLiteStreamStore(store)
        stack.push_async_callback(store.close)
        manager = StreamManager(Config(data=str(tmp_path)), streams)
        await manager.start()
        stack.push_async_callback(manager.stop)
        yield manager


async def read_all(manager: StreamManager, path: str) -> bytes:
    """Every byte of the stream at ``path``, straight from the store."""
    _live, state = await manager.current(path)
    assert manager.store is not None
    units = await manager.store.read_units(forks.segments(state, 0, state.tail), 1 << 30)
    return b"".join(u for _, u in units)
