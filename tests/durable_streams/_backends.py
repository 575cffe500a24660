"""The stream stores the tests run on: SQLite (a file in the test's directory) and
PostgreSQL (a schema of its own per test, dropped after; skipped when unreachable)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agentsync.config import Config
from agentsync.store.postgres import PostgresStore
from agentsync.store.sqlite import SQLiteStore
from agentsync.streams.manager import StreamManager
from agentsync.streams.postgres import PostgresStreamStore
from agentsync.streams.sqlite import SQLiteStreamStore
from conftest import service_missing

PG_URL = os.environ.get("AGENTSYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgres"]


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema name, dropped (with everything in it) afterwards."""
    try:
        import asyncpg
    except ImportError:
        service_missing("asyncpg is not installed")
    schema = "streams_" + uuid.uuid4().hex[:10]
    try:
        conn = await asyncpg.connect(PG_URL, timeout=3)
    except Exception as exc:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
    try:
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


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
