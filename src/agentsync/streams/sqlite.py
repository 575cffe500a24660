"""Durable Streams on the node's SQLite store: same file, same writer thread, same group
commit as sessions (see :mod:`agentsync.store.sqlite`).

Every write is one job of :meth:`SQLiteStore._write`: it runs on the writer thread inside
its own SAVEPOINT, reads the rows it needs (the stream's, the producer's, a fork's
source), asks :mod:`rules` and :mod:`forks` what to do, writes it, and returns; the
caller's future resolves after COMMIT. A refusal is *returned* by the job, not raised, so
that what the job wrote before deciding (an expired stream removed) still commits. A
SIGKILL therefore finds either the unit and the producer state it advanced, or neither;
a fork with the reference it holds on its source, or neither; a removed stream together
with the release of its source's reference and the cascade that follows, or none of it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import orjson

from agentsync.store.sqlite import SQLiteStore
from agentsync.streams import forks, rules
from agentsync.streams.batch import (
    AppendBatch,
    AppendItem,
    AppendQueue,
    Changes,
    Futures,
    Result,
    answer_all,
    fail_unless_committed,
)
from agentsync.streams.rules import (
    AppendRequest,
    CreateRequest,
    Fork,
    ForkRequest,
    Producer,
    ProducerState,
    Segment,
    StreamError,
    StreamState,
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
CREATE TABLE IF NOT EXISTS stream_units_recent (
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

# Added for forks (step 2); ALTERed into tables created by step 1.
FORK_COLUMNS: Final = {
    "fork_of": "INTEGER",  # the source's id
    "fork_path": "TEXT",  # the source's path as Stream-Forked-From named it
    "fork_offset": "INTEGER",
    "fork_sub": "INTEGER NOT NULL DEFAULT 0",
    "lineage": "TEXT",  # JSON [[id, after, up_to], ...]: Fork.inherited
    "refs": "INTEGER NOT NULL DEFAULT 0",
    "deleted": "INTEGER NOT NULL DEFAULT 0",
}

# A plain append to a stream without a TTL writes only its unit: the row's tail can lag
# behind the units still in stream_units_recent (a fold brings it up to date), so it is
# read as the larger of the two. Saves an UPDATE per append (about 3 us of writer time).
TAIL: Final = (
    "MAX(tail, IFNULL((SELECT MAX(seq) FROM stream_units_recent"
    " WHERE stream_units_recent.stream_id = streams.id), 0))"
)
COLUMNS: Final = (
    "id, path, content_type, ttl_seconds, expires_at, expires_at_ms, created_at,"
    f" accessed_at, {TAIL}, closed, closed_by, stream_seq,"
    " fork_of, fork_path, fork_offset, fork_sub, lineage, refs, deleted"
)

# Units are written to ``stream_units_recent`` and folded into ``stream_units`` every
# FOLD_UNITS units, in (stream, seq) order. Appends to many streams at once would
# otherwise dirty one B-tree leaf of ``stream_units`` per stream in every commit (and
# write each of those pages to the WAL); the small recent table keeps the pages a commit
# touches few (about 4x less writer time per append over 50 streams). Reads take both.
FOLD_UNITS: Final = 1024
INSERT_UNIT: Final = "INSERT INTO stream_units_recent (stream_id, seq, data) VALUES (?, ?, ?)"
UNITS: Final = (
    "SELECT stream_id, seq, data FROM stream_units"
    " UNION ALL SELECT stream_id, seq, data FROM stream_units_recent"
)
READ_UNITS: Final = (  # SQLite merges the two index scans (MERGE (UNION ALL))
    "SELECT seq, data FROM stream_units WHERE stream_id = ?1 AND seq > ?2 AND seq <= ?3"
    " UNION ALL SELECT seq, data FROM stream_units_recent"
    " WHERE stream_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq"
)


def _state(row: tuple[Any, ...] | None) -> StreamState | None:
    if row is None:
        return None
    closed_by = None
    if row[10] is not None:
        pid, epoch, seq = orjson.loads(row[10])
        closed_by = Producer(pid, epoch, seq)
    fork = None
    if row[12] is not None:
        inherited = tuple(Segment(*piece) for piece in orjson.loads(row[16]))
        fork = Fork(row[13], row[12], row[14], row[15], inherited)
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
        fork=fork,
        refs=row[17],
        deleted=bool(row[18]),
    )


def _select(conn: sqlite3.Connection, path: str) -> StreamState | None:
    return _state(conn.execute(f"SELECT {COLUMNS} FROM streams WHERE path = ?", (path,)).fetchone())


def _select_id(conn: sqlite3.Connection, stream_id: int) -> StreamState | None:
    return _state(
        conn.execute(f"SELECT {COLUMNS} FROM streams WHERE id = ?", (stream_id,)).fetchone()
    )


def _migrate(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    have = {row[1] for row in conn.execute("PRAGMA table_info(streams)")}
    for name, kind in FORK_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE streams ADD COLUMN {name} {kind}")


def _remove(conn: sqlite3.Connection, state: StreamState) -> Changes:
    """Remove the stream and release the reference it held on its source; a
    soft-deleted source left without references goes too, and so on up the chain."""
    changes: Changes = {}
    current: StreamState | None = state
    while current is not None:
        conn.execute("DELETE FROM streams WHERE id = ?", (current.id,))
        conn.execute("DELETE FROM stream_units WHERE stream_id = ?", (current.id,))
        conn.execute("DELETE FROM stream_units_recent WHERE stream_id = ?", (current.id,))
        conn.execute("DELETE FROM stream_producers WHERE stream_id = ?", (current.id,))
        changes[current.path] = None
        if current.fork is None:
            break
        conn.execute(
            "UPDATE streams SET refs = MAX(refs - 1, 0) WHERE id = ?", (current.fork.source_id,)
        )
        source = _select_id(conn, current.fork.source_id)
        if source is None:
            break
        changes[source.path] = source
        current = source if source.deleted and source.refs == 0 else None
    return changes


def _retire(conn: sqlite3.Connection, state: StreamState) -> Changes:
    """Delete or expire: soft-delete while forks hold references, else remove."""
    if state.refs > 0:
        conn.execute("UPDATE streams SET deleted = 1 WHERE id = ?", (state.id,))
        return {state.path: _select_id(conn, state.id)}
    return _remove(conn, state)


def _current(
    conn: sqlite3.Connection,
    path: str,
    now_ms: int,
    accessed_ms: int,
    changes: Changes,
    known: StreamState | None = None,
) -> StreamState | None:
    """The stream at ``path`` (maybe soft-deleted), or None; an expired one is retired
    on the way, recorded in ``changes``. ``known``: its row as the writer last left it."""
    state = known if known is not None else _select(conn, path)
    if state is not None and not state.deleted and state.expired(now_ms, accessed_ms):
        changes.update(_retire(conn, state))
        state = _select(conn, path)
    return state


HAS_ROW: Final = "SELECT 1 FROM streams WHERE path = ?"


def _insert_unit(conn: sqlite3.Connection, stream_id: int, seq: int, data: bytes) -> None:
    conn.execute(INSERT_UNIT, (stream_id, seq, data))


def _fold(conn: sqlite3.Connection) -> None:
    """Move the recent units into ``stream_units``, sorted: each stream's B-tree pages
    are touched once for all its recent units. Rows take the tails they imply first."""
    conn.execute(
        f"UPDATE streams SET tail = {TAIL} WHERE id IN (SELECT stream_id FROM stream_units_recent)"
    )
    conn.execute(
        "INSERT INTO stream_units (stream_id, seq, data) SELECT stream_id, seq, data"
        " FROM stream_units_recent ORDER BY stream_id, seq"
    )
    conn.execute("DELETE FROM stream_units_recent")


def _create(
    conn: sqlite3.Connection,
    path: str,
    req: CreateRequest,
    now_ms: int,
    accessed_ms: int,
    source_accessed_ms: int,
) -> Result:
    changes: Changes = {}
    try:
        times = (now_ms, accessed_ms, source_accessed_ms)
        created = _decide_create(conn, path, req, times, changes)
    except StreamError as refusal:
        return changes, refusal
    changes[path] = created.state
    fork = created.state.fork
    if created.new and fork is not None:
        source = _select_id(conn, fork.source_id)  # one reference more
        changes[fork.source_path] = source
    return changes, created


def _decide_create(
    conn: sqlite3.Connection,
    path: str,
    req: CreateRequest,
    times: tuple[int, int, int],
    changes: Changes,
) -> Created:
    """Everything is checked before anything is written (but expired streams retired),
    so a refused fork takes no reference. ``times``: now, and the latest accesses this
    node knows of the path and of the source."""
    now_ms, accessed_ms, source_accessed_ms = times
    state = _current(conn, path, now_ms, accessed_ms, changes)
    source: StreamState | None = None
    if req.fork is not None:
        if state is not None and state.fork is not None:
            # An existing fork is compared with what it would inherit from its source
            # (kept, maybe soft-deleted, for as long as the fork exists).
            source = _select_id(conn, state.fork.source_id)
        else:
            source = _current(conn, req.fork.source, now_ms, source_accessed_ms, changes)
    if state is not None:
        forks.check_repeat(path, state, source, req)  # else 409
        return Created(state, new=False)
    if req.fork is not None:
        if source is None:
            raise StreamError(404, "not_found", f"no stream at {req.fork.source!r} to fork")
        if source.deleted:
            raise StreamError(
                409, "source_gone", f"stream {req.fork.source!r} was deleted; it cannot be forked"
            )
        req = forks.resolve(source, req)
    content_type = req.content_type
    assert content_type is not None
    prefix: bytes | None = None
    if source is not None and req.fork is not None and req.fork.sub_offset > 0:
        prefix = _sub_offset_prefix(conn, source, req.fork, content_type)
    unit = rules.initial_unit(content_type, req.body)
    return _insert(conn, path, req, content_type, source, prefix, unit, now_ms)


def _sub_offset_prefix(
    conn: sqlite3.Connection, source: StreamState, fork: ForkRequest, content_type: str
) -> bytes:
    """What a sub-offset takes from the source's unit after the fork offset (400 when
    there is none or it is too short)."""
    assert fork.offset is not None
    pieces = forks.segments(source, fork.offset, source.tail)
    following = None
    if pieces:
        row = conn.execute(
            f"SELECT data FROM ({UNITS}) WHERE stream_id = ? AND seq = ?",
            (pieces[0].stream_id, pieces[0].after + 1),
        ).fetchone()
        following = None if row is None else bytes(row[0])
    return forks.sub_offset_prefix(following, fork.sub_offset, json=rules.is_json(content_type))


def _insert(
    conn: sqlite3.Connection,
    path: str,
    req: CreateRequest,
    content_type: str,
    source: StreamState | None,
    prefix: bytes | None,
    unit: bytes | None,
    now_ms: int,
) -> Created:
    fork = req.fork
    base = 0 if fork is None or fork.offset is None else fork.offset
    units = [u for u in (prefix, unit) if u]
    lineage = None
    if source is not None:
        lineage = orjson.dumps(
            [[p.stream_id, p.after, p.up_to] for p in forks.lineage(source, base)]
        ).decode()
        conn.execute("UPDATE streams SET refs = refs + 1 WHERE id = ?", (source.id,))
    cursor = conn.execute(
        "INSERT INTO streams (path, content_type, ttl_seconds, expires_at, expires_at_ms,"
        " created_at, accessed_at, tail, closed, fork_of, fork_path, fork_offset, fork_sub,"
        " lineage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            path,
            content_type,
            req.ttl_seconds,
            req.expires_at,
            req.expires_at_ms,
            now_ms,
            now_ms,
            base + len(units),
            int(req.closed),
            None if source is None else source.id,
            None if fork is None else fork.source,
            None if fork is None else base,
            0 if fork is None else fork.sub_offset,
            lineage,
        ),
    )
    stream_id = cursor.lastrowid
    assert stream_id is not None
    for i, data in enumerate(units, start=1):
        _insert_unit(conn, stream_id, base + i, data)
    created = _select_id(conn, stream_id)
    assert created is not None
    return Created(created, new=True)


def _append_batch(
    conn: sqlite3.Connection, items: Sequence[AppendItem], known: Mapping[str, StreamState]
) -> AppendBatch:
    """Appends in order, each decided as if it were its own job, written at the end (see
    :mod:`agentsync.streams.batch`). ``known``: rows as earlier appends left them (see
    SQLiteStreamStore._known_rows)."""
    batch = AppendBatch()
    for path, req, now_ms, accessed_ms in items:
        changes: Changes = {}
        if path not in batch.rows:
            state = _current(conn, path, now_ms, accessed_ms, changes, known.get(path))
            batch.rows.update(changes)
            batch.rows[path] = state
        key = batch.producer_to_load(path, req)
        if key is not None:
            row = conn.execute(
                "SELECT epoch, seq FROM stream_producers WHERE stream_id = ? AND producer = ?",
                key,
            ).fetchone()
            batch.producers[key] = None if row is None else ProducerState(row[0], row[1])
        batch.decide(path, req, now_ms, changes)
    conn.executemany(INSERT_UNIT, batch.units)
    conn.executemany(
        "UPDATE streams SET tail = ?, closed = ?, closed_by = ?, stream_seq = ?,"
        " accessed_at = ? WHERE id = ?",
        batch.stream_rows(tails_derived=True),
    )
    conn.executemany(
        "INSERT INTO stream_producers (stream_id, producer, epoch, seq, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id, producer) DO UPDATE SET"
        " epoch = excluded.epoch, seq = excluded.seq, updated_at = excluded.updated_at",
        batch.producer_rows(),
    )
    return batch


def _delete(conn: sqlite3.Connection, path: str, now_ms: int, accessed_ms: int) -> Result:
    changes: Changes = {}
    state = _current(conn, path, now_ms, accessed_ms, changes)
    if state is None:
        return changes, rules.not_found(path)
    if state.deleted:
        return changes, rules.gone(path)
    changes.update(_retire(conn, state))
    return changes, True


def _delete_expired(
    conn: sqlite3.Connection, path: str, stream_id: int, now_ms: int, accessed_ms: int
) -> Result:
    state = _select(conn, path)
    if (
        state is None
        or state.id != stream_id
        or state.deleted
        or not state.expired(now_ms, accessed_ms)
    ):
        return {path: state}, False
    return _retire(conn, state), True


def _touch(conn: sqlite3.Connection, path: str, stream_id: int, accessed_ms: int) -> Result:
    conn.execute(
        "UPDATE streams SET accessed_at = MAX(accessed_at, ?) WHERE id = ?",
        (accessed_ms, stream_id),
    )
    return {path: _select(conn, path)}, None


class SQLiteStreamStore:
    """The :class:`~agentsync.streams.store.StreamStore` of a :class:`SQLiteStore`."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._listener: Listener | None = None
        # Rows as the writer's appends left them, so the next append to a stream need
        # not read its row first (a fifth of an append's SQL). Writer thread only;
        # trusted while the writer's generation holds; any other job empties it.
        self._rows: dict[str, StreamState] = {}
        self._rows_generation = -1
        self._unfolded = 0  # units appended since the last fold (writer thread)
        self._appends = AppendQueue(self._write_appends)

    def observe(self, listener: Listener) -> None:
        self._listener = listener

    async def _job(self, run: Callable[[sqlite3.Connection], Result]) -> Any:
        return await self._submit(self._truncating(self._forgetting(run)))

    async def _submit(self, run: Callable[[sqlite3.Connection], Result]) -> Any:
        self._appends.flush()  # appends asked for earlier are written first
        # The listener hears of the commit (in commit order) even if this caller goes
        # away meanwhile: the write happens regardless.
        _changes, answer = await self.store._write(run, self._committed)
        if isinstance(answer, StreamError):
            raise answer
        return answer

    def _forgetting(
        self, run: Callable[[sqlite3.Connection], Result]
    ) -> Callable[[sqlite3.Connection], Result]:
        """A job other than an append: the rows it may change leave the cache."""

        def job(conn: sqlite3.Connection) -> Result:
            self._rows.clear()
            return run(conn)

        return job

    def _known_rows(self) -> dict[str, StreamState]:
        """The row cache, emptied first if the writer has distrusted its caches since."""
        writer = self.store._writer
        generation = -1 if writer is None else writer.generation
        if generation != self._rows_generation:
            self._rows.clear()
            self._rows_generation = generation
        return self._rows

    def _truncating(
        self, run: Callable[[sqlite3.Connection], Result]
    ) -> Callable[[sqlite3.Connection], Result]:
        """A job that removed a stream has the WAL truncated once its group commits, so
        nothing of a deleted stream can be read back from the disk (as for shares)."""

        def job(conn: sqlite3.Connection) -> Result:
            changes = conn.total_changes
            result = run(conn)
            writer = self.store._writer
            # A path that reads as None after the job changed rows was removed by it; a
            # lookup of a path that never existed changes nothing and truncates nothing.
            removed = conn.total_changes != changes and any(
                state is None for state in result[0].values()
            )
            if writer is not None and removed:
                writer.deleted = True  # on the writer thread, for the current group
            return result

        return job

    def _committed(self, result: Result) -> None:
        if self._listener is None:
            return
        for path, state in result[0].items():
            self._listener(path, state)

    async def open(self) -> None:
        await self.store._write(_migrate)

    async def load(self, path: str) -> StreamState | None:
        def run(conn: sqlite3.Connection) -> Result:
            state = _select(conn, path)
            return {path: state}, state

        result: StreamState | None = await self._job(run)
        return result

    async def has_row(self, path: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute(HAS_ROW, (path,)).fetchone() is not None

        return await self.store._read(run)

    async def create(
        self,
        path: str,
        req: CreateRequest,
        now_ms: int,
        accessed_ms: int,
        source_accessed_ms: int = 0,
    ) -> Created:
        result: Created = await self._job(
            lambda conn: _create(conn, path, req, now_ms, accessed_ms, source_accessed_ms)
        )
        return result

    def append(
        self, path: str, req: AppendRequest, now_ms: int, accessed_ms: int
    ) -> asyncio.Future[Appended]:
        """Appends made in one turn of the event loop go to the writer as one job (see
        _append_batch); each still gets its own answer, in order."""
        return self._appends.append((path, req, now_ms, accessed_ms))

    def _write_appends(self, items: list[AppendItem], futures: Futures) -> None:
        def run(conn: sqlite3.Connection) -> Result:
            rows = self._known_rows()
            batch = _append_batch(conn, items, rows)
            self._unfolded += len(batch.units)
            if self._unfolded >= FOLD_UNITS:
                _fold(conn)
                self._unfolded = 0
            for path, state in batch.rows.items():
                if state is None:
                    rows.pop(path, None)
                else:
                    rows[path] = state
            results = batch.results
            return {p: s for changes, _ in results for p, s in changes.items()}, results

        def committed(result: Result) -> None:
            answer_all(futures, result[1], self._committed)

        done = self.store._write(self._truncating(run), committed)
        done.add_done_callback(fail_unless_committed(futures))

    async def delete(self, path: str, now_ms: int, accessed_ms: int) -> None:
        await self._job(lambda conn: _delete(conn, path, now_ms, accessed_ms))

    async def delete_expired(
        self, path: str, stream_id: int, now_ms: int, accessed_ms: int
    ) -> bool:
        result: bool = await self._job(
            lambda conn: _delete_expired(conn, path, stream_id, now_ms, accessed_ms)
        )
        return result

    async def touch(self, path: str, stream_id: int, accessed_ms: int) -> None:
        await self._job(lambda conn: _touch(conn, path, stream_id, accessed_ms))

    async def read_units(
        self, pieces: Sequence[Segment], max_bytes: int
    ) -> list[tuple[int, bytes]]:
        def run(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            units: list[tuple[int, bytes]] = []
            size = 0
            for piece in pieces:
                rows = conn.execute(READ_UNITS, (piece.stream_id, piece.after, piece.up_to))
                for seq, data in rows:
                    if units and size + len(data) > max_bytes:
                        return units
                    units.append((seq, bytes(data)))
                    size += len(data)
            return units

        return await self.store._read(run)

    async def expired(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(
                "SELECT path, id FROM streams WHERE deleted = 0 AND (expires_at_ms <= ?"
                " OR accessed_at + ttl_seconds * 1000 <= ?) LIMIT ?",
                (now_ms, now_ms, limit),
            ).fetchall()
            return [(row[0], row[1]) for row in rows]

        return await self.store._read(run)
