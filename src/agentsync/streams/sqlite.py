"""Durable Streams on the node's SQLite store: same file, same writer thread, same group
commit as sessions (see :mod:`agentsync.store.sqlite`).

Every write is one job of :meth:`SQLiteStore._write`: it runs on the writer thread inside
its own SAVEPOINT, reads the stream's row (and the producer's), asks
:func:`rules.decide_append` what to do, writes it, and returns; the caller's future
resolves after COMMIT. A refusal is *returned* by the job, not raised, so that what the
job wrote before deciding (an expired stream removed) still commits. A SIGKILL therefore
finds either the unit and the producer state it advanced, or neither.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, Final, TypeVar

import orjson

from agentsync.store.sqlite import SQLiteStore
from agentsync.streams import rules
from agentsync.streams.rules import (
    AppendRequest,
    CreateRequest,
    Duplicate,
    Producer,
    ProducerState,
    StreamError,
    StreamState,
    Write,
)
from agentsync.streams.store import Appended, Created, Listener

T = TypeVar("T")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    ttl_seconds INTEGER,
    expires_at TEXT,
    expires_at_ms INTEGER,
    created_at INTEGER NOT NULL,
    accessed_at INTEGER NOT NULL,
    tail INTEGER NOT NULL,
    closed INTEGER NOT NULL,
    closed_by TEXT,
    stream_seq TEXT
);
CREATE TABLE IF NOT EXISTS stream_units (
    stream_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE TABLE IF NOT EXISTS stream_producers (
    stream_id INTEGER NOT NULL,
    producer TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (stream_id, producer)
) WITHOUT ROWID;
"""

COLUMNS: Final = (
    "id, path, content_type, ttl_seconds, expires_at, expires_at_ms, created_at,"
    " accessed_at, tail, closed, closed_by, stream_seq"
)

# A job's result: the stream's state after it (for the listener) and the answer.
Result = tuple[StreamState | None, Any]


def _state(row: tuple[Any, ...] | None) -> StreamState | None:
    if row is None:
        return None
    closed_by = None
    if row[10] is not None:
        pid, epoch, seq = orjson.loads(row[10])
        closed_by = Producer(pid, epoch, seq)
    return StreamState(
        id=row[0],
        path=row[1],
        content_type=row[2],
        ttl_seconds=row[3],
        expires_at=row[4],
        expires_at_ms=row[5],
        created_at=row[6],
        accessed_at=row[7],
        tail=row[8],
        closed=bool(row[9]),
        closed_by=closed_by,
        stream_seq=row[11],
    )


def _select(conn: sqlite3.Connection, path: str) -> StreamState | None:
    return _state(conn.execute(f"SELECT {COLUMNS} FROM streams WHERE path = ?", (path,)).fetchone())


def _remove(conn: sqlite3.Connection, stream_id: int) -> None:
    conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
    conn.execute("DELETE FROM stream_units WHERE stream_id = ?", (stream_id,))
    conn.execute("DELETE FROM stream_producers WHERE stream_id = ?", (stream_id,))


def _unexpired(
    conn: sqlite3.Connection, path: str, now_ms: int, accessed_ms: int
) -> StreamState | None:
    """The stream at ``path``, or None; an expired one is removed on the way."""
    state = _select(conn, path)
    if state is not None and state.expired(now_ms, accessed_ms):
        _remove(conn, state.id)
        return None
    return state


def _create(
    conn: sqlite3.Connection, path: str, req: CreateRequest, now_ms: int, accessed_ms: int
) -> Result:
    state = _unexpired(conn, path, now_ms, accessed_ms)
    if state is not None:
        if rules.same_config(state, req):
            return state, Created(state, new=False)
        return state, StreamError(
            409, "stream_exists", f"stream {path!r} exists with another configuration"
        )
    tail = 1 if req.unit else 0
    cursor = conn.execute(
        "INSERT INTO streams (path, content_type, ttl_seconds, expires_at, expires_at_ms,"
        " created_at, accessed_at, tail, closed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            path,
            req.content_type,
            req.ttl_seconds,
            req.expires_at,
            req.expires_at_ms,
            now_ms,
            now_ms,
            tail,
            int(req.closed),
        ),
    )
    if req.unit:
        conn.execute(
            "INSERT INTO stream_units (stream_id, seq, data) VALUES (?, 1, ?)",
            (cursor.lastrowid, req.unit),
        )
    created = _select(conn, path)
    assert created is not None
    return created, Created(created, new=True)


def _append(
    conn: sqlite3.Connection, path: str, req: AppendRequest, now_ms: int, accessed_ms: int
) -> Result:
    state = _unexpired(conn, path, now_ms, accessed_ms)
    if state is None:
        return None, rules.not_found(path)
    current: ProducerState | None = None
    if req.producer is not None:
        row = conn.execute(
            "SELECT epoch, seq FROM stream_producers WHERE stream_id = ? AND producer = ?",
            (state.id, req.producer.id),
        ).fetchone()
        current = None if row is None else ProducerState(row[0], row[1])
    try:
        outcome = rules.decide_append(state, current, req)
    except StreamError as refusal:
        return state, refusal
    if isinstance(outcome, Duplicate):
        conn.execute(
            "UPDATE streams SET accessed_at = MAX(accessed_at, ?) WHERE id = ?", (now_ms, state.id)
        )
    else:
        _write(conn, state, req, outcome, now_ms)
    after = _select(conn, path)
    assert after is not None
    return after, Appended(after, outcome)


def _write(
    conn: sqlite3.Connection, state: StreamState, req: AppendRequest, plan: Write, now_ms: int
) -> None:
    tail = state.tail
    if plan.unit is not None:
        tail += 1
        conn.execute(
            "INSERT INTO stream_units (stream_id, seq, data) VALUES (?, ?, ?)",
            (state.id, tail, plan.unit),
        )
    closed_by = state.closed_by
    if plan.close and not state.closed:
        closed_by = req.producer
    conn.execute(
        "UPDATE streams SET tail = ?, closed = ?, closed_by = ?, stream_seq = ?,"
        " accessed_at = MAX(accessed_at, ?) WHERE id = ?",
        (
            tail,
            int(state.closed or plan.close),
            None
            if closed_by is None
            else orjson.dumps([closed_by.id, closed_by.epoch, closed_by.seq]).decode(),
            plan.stream_seq,
            now_ms,
            state.id,
        ),
    )
    if plan.producer_state is not None and req.producer is not None:
        conn.execute(
            "INSERT INTO stream_producers (stream_id, producer, epoch, seq, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id, producer) DO UPDATE SET"
            " epoch = excluded.epoch, seq = excluded.seq, updated_at = excluded.updated_at",
            (
                state.id,
                req.producer.id,
                plan.producer_state.epoch,
                plan.producer_state.seq,
                now_ms,
            ),
        )


def _delete(conn: sqlite3.Connection, path: str, now_ms: int, accessed_ms: int) -> Result:
    state = _unexpired(conn, path, now_ms, accessed_ms)
    if state is None:
        return None, False
    _remove(conn, state.id)
    return None, True


def _delete_expired(
    conn: sqlite3.Connection, path: str, stream_id: int, now_ms: int, accessed_ms: int
) -> Result:
    state = _select(conn, path)
    if state is None or state.id != stream_id or not state.expired(now_ms, accessed_ms):
        return state, False
    _remove(conn, state.id)
    return None, True


def _touch(conn: sqlite3.Connection, path: str, stream_id: int, accessed_ms: int) -> Result:
    conn.execute(
        "UPDATE streams SET accessed_at = MAX(accessed_at, ?) WHERE id = ?",
        (accessed_ms, stream_id),
    )
    return _select(conn, path), None


class SQLiteStreamStore:
    """The :class:`~agentsync.streams.store.StreamStore` of a :class:`SQLiteStore`."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._listener: Listener | None = None

    def observe(self, listener: Listener) -> None:
        self._listener = listener

    async def _job(self, path: str, run: Callable[[sqlite3.Connection], Result]) -> Any:
        future = self.store._write(run)
        # Registered before anyone awaits the future, so it runs first, in commit order.
        future.add_done_callback(lambda done: self._committed(path, done))
        # Shielded: a caller that goes away must not cancel the future (the write
        # happens regardless, and the listener must still hear of it).
        _state, answer = await asyncio.shield(future)
        if isinstance(answer, StreamError):
            raise answer
        return answer

    def _committed(self, path: str, done: asyncio.Future[Result]) -> None:
        if done.cancelled() or done.exception() is not None or self._listener is None:
            return
        self._listener(path, done.result()[0])

    async def open(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

        await self.store._write(run)

    async def load(self, path: str) -> StreamState | None:
        def run(conn: sqlite3.Connection) -> Result:
            state = _select(conn, path)
            return state, state

        result: StreamState | None = await self._job(path, run)
        return result

    async def create(self, path: str, req: CreateRequest, now_ms: int, accessed_ms: int) -> Created:
        result: Created = await self._job(
            path, lambda conn: _create(conn, path, req, now_ms, accessed_ms)
        )
        return result

    async def append(
        self, path: str, req: AppendRequest, now_ms: int, accessed_ms: int
    ) -> Appended:
        result: Appended = await self._job(
            path, lambda conn: _append(conn, path, req, now_ms, accessed_ms)
        )
        return result

    def _truncating(
        self, run: Callable[[sqlite3.Connection], Result]
    ) -> Callable[[sqlite3.Connection], Result]:
        """A deleting job: once its group commits, the writer has the WAL truncated, so
        nothing of a deleted stream can be read back from the disk (as for shares)."""

        def job(conn: sqlite3.Connection) -> Result:
            result = run(conn)
            writer = self.store._writer
            if result[1] is True and writer is not None:
                writer.deleted = True  # on the writer thread, for the current group
            return result

        return job

    async def delete(self, path: str, now_ms: int, accessed_ms: int) -> bool:
        result: bool = await self._job(
            path, self._truncating(lambda conn: _delete(conn, path, now_ms, accessed_ms))
        )
        return result

    async def delete_expired(
        self, path: str, stream_id: int, now_ms: int, accessed_ms: int
    ) -> bool:
        result: bool = await self._job(
            path,
            self._truncating(
                lambda conn: _delete_expired(conn, path, stream_id, now_ms, accessed_ms)
            ),
        )
        return result

    async def touch(self, path: str, stream_id: int, accessed_ms: int) -> None:
        await self._job(path, lambda conn: _touch(conn, path, stream_id, accessed_ms))

    async def read_units(
        self, stream_id: int, after_seq: int, up_to_seq: int, max_bytes: int
    ) -> list[tuple[int, bytes]]:
        def run(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            rows = conn.execute(
                "SELECT seq, data FROM stream_units WHERE stream_id = ? AND seq > ?"
                " AND seq <= ? ORDER BY seq",
                (stream_id, after_seq, up_to_seq),
            )
            units: list[tuple[int, bytes]] = []
            size = 0
            for seq, data in rows:
                if units and size + len(data) > max_bytes:
                    break
                units.append((seq, bytes(data)))
                size += len(data)
            return units

        return await self.store._read(run)

    async def expired(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(
                "SELECT path, id FROM streams WHERE expires_at_ms <= ?"
                " OR accessed_at + ttl_seconds * 1000 <= ? LIMIT ?",
                (now_ms, now_ms, limit),
            ).fetchall()
            return [(row[0], row[1]) for row in rows]

        return await self.store._read(run)
