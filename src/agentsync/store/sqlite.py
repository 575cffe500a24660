"""The embedded Store: one SQLite database file in WAL mode.

Theory of operation:

* Every write is a job for one writer thread, which commits the jobs queued meanwhile as
  one transaction (group commit), each job in its own SAVEPOINT, in the order they were
  queued: see :mod:`agentsync.store.sqlite_writer`. A caller's future is resolved only
  after COMMIT has returned, so an acknowledged append is durable: with
  ``synchronous=NORMAL`` it survives SIGKILL of the process, with ``FULL`` it also
  survives power loss.
* Reads run on a small thread pool, one read-only connection per thread; WAL lets them
  proceed while the writer commits, and the event loop never blocks on the database.
* Deleted rows are overwritten in the file (``secure_delete``) and the WAL is truncated
  after a delete, so nothing of a deleted share can be read back from the disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

import orjson

from agentsync.protocol import Conflict, Event, Unavailable
from agentsync.store.base import (
    SeqConflict,
    ShareRecord,
    Snapshot,
    restored_log,
    tombstone_key,
)
from agentsync.store.sqlite_writer import Checkpointer, Job, Writer, connect

T = TypeVar("T")

SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
READ_THREADS: Final = 4
CHECKPOINT_SECONDS: Final = 0.5
BACKSTOP_CHECKPOINT_PAGES: Final = 50_000  # ~200 MB of WAL
# SQLite builds before 3.32 allow 999 bound parameters per statement.
MAX_PARAMS: Final = 900

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS shares (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    read TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    read_token_hash BLOB,
    epoch TEXT NOT NULL,
    archive TEXT,
    active_at INTEGER
);
CREATE INDEX IF NOT EXISTS shares_expires_at ON shares (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (session_id, event_id);
CREATE TABLE IF NOT EXISTS snapshots (
    session_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (
    id TEXT PRIMARY KEY,
    deleted_at INTEGER NOT NULL
);
"""

# Databases made before archiving get the columns it needs.
MIGRATIONS: Final = {
    "archive": "ALTER TABLE shares ADD COLUMN archive TEXT",
    "active_at": "ALTER TABLE shares ADD COLUMN active_at INTEGER;"
    " UPDATE shares SET active_at = created_at",
}
INDEXES: Final = """
CREATE INDEX IF NOT EXISTS shares_idle ON shares (active_at) WHERE archive IS NULL;
"""

SHARE_COLUMNS: Final = (
    "id, title, created_at, expires_at, read, secret_hash, read_token_hash, epoch, archive"
)
INSERT_COLUMNS: Final = (
    "id, title, created_at, expires_at, read, secret_hash, read_token_hash, epoch, active_at"
)


class SQLiteStore:
    """The Store protocol (store/base.py) over one SQLite file; see the module docstring.

    ``synchronous`` is SQLite's PRAGMA: ``NORMAL`` (default) loses no acknowledged write
    when the process is killed, ``FULL`` none when the machine loses power either.
    One process should own a database file; another process writing to it stays correct
    (the last-seq cache is revalidated) but contends for the write lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        self.path = Path(path)
        self.synchronous = mode
        self._writer: Writer | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._checkpointer: Checkpointer | None = None
        self._read_conns: list[sqlite3.Connection] = []
        self._read_local = threading.local()
        self._lock = asyncio.Lock()

    @property
    def commits(self) -> int:
        """Write transactions committed so far (group commit makes it < appends)."""
        return self._writer.commits if self._writer is not None else 0

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            if self._writer is not None:
                return
            conn = await asyncio.to_thread(self._open_write_connection)
            self._writer = Writer(conn)
            self._writer.thread.start()
            self._checkpointer = Checkpointer(self.path, self.synchronous, CHECKPOINT_SECONDS)
            self._checkpointer.thread.start()
            self._writer.on_delete = self._checkpointer.request_truncate
            self._readers = ThreadPoolExecutor(READ_THREADS, "agentsync-sqlite-reader")

    def _open_write_connection(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self.synchronous)
        try:
            conn.executescript(SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(shares)")}
            for column, migration in MIGRATIONS.items():
                if column not in columns:
                    conn.executescript(migration)
            conn.executescript(INDEXES)
            conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
            # Deleted rows are overwritten, not just unlinked: after a delete nothing of
            # the share can be read back from the file (and the WAL is truncated).
            conn.execute("PRAGMA secure_delete = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        async with self._lock:
            writer, readers = self._writer, self._readers
            if writer is None or readers is None:
                return
            self._writer = self._readers = None
            writer.jobs.put(None)  # queued jobs run first: the queue is FIFO
            await asyncio.to_thread(writer.thread.join)
            if self._checkpointer is not None:
                self._checkpointer.stop.set()
                self._checkpointer.wake.set()
                await asyncio.to_thread(self._checkpointer.thread.join)
                self._checkpointer = None
            await asyncio.to_thread(readers.shutdown, wait=True)
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
            self._read_local = threading.local()

    async def ping(self) -> None:
        if self._writer is None or not self._writer.thread.is_alive():
            raise Unavailable("the SQLite store is not open")
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- plumbing -----------------------------------------------------------------------

    def _write(
        self,
        run: Callable[[sqlite3.Connection], T],
        committed: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        """Queue a write; its future resolves after the group commits. ``committed`` is
        called first, in commit order, even if the future was cancelled meanwhile."""
        writer = self._writer
        if writer is None:
            raise Unavailable("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        writer.jobs.put(Job(run, future, loop, committed))
        return future

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        readers = self._readers
        if readers is None:
            raise Unavailable("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(readers, self._run_read, run)

    def _run_read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = connect(self.path, self.synchronous)
            conn.execute("PRAGMA query_only = 1")
            self._read_local.conn = conn
            self._read_conns.append(conn)  # list.append is atomic; closed by close()
        return run(conn)

    # -- shares -------------------------------------------------------------------------

    async def create_share(self, share: ShareRecord) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if conn.execute(
                "SELECT 1 FROM tombstones WHERE id = ?", (tombstone_key(share.id),)
            ).fetchone():
                raise Conflict(f"share {share.id} was deleted; its id cannot be reused")
            try:
                conn.execute(
                    f"INSERT INTO shares ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        share.id,
                        share.title,
                        share.created_at,
                        share.expires_at,
                        share.read,
                        share.secret_hash,
                        share.read_token_hash,
                        share.epoch,
                        share.created_at,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"share {share.id} already exists") from exc

        await self._write(run)

    async def get_share(self, share_id: str) -> ShareRecord | None:
        def run(conn: sqlite3.Connection) -> ShareRecord | None:
            row = conn.execute(
                f"SELECT {SHARE_COLUMNS} FROM shares WHERE id = ?", (share_id,)
            ).fetchone()
            return None if row is None else ShareRecord(*row)

        return await self._read(run)

    async def is_tombstoned(self, share_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            sql = "SELECT 1 FROM tombstones WHERE id = ?"
            share_id_key = tombstone_key(share_id)
            return conn.execute(sql, (share_id_key,)).fetchone() is not None

        return await self._read(run)

    async def delete_share(self, share_id: str) -> bool:
        writer = self._writer
        if writer is None:
            raise Unavailable("the SQLite store is closed")
        return await self._write(lambda conn: writer.delete_share(conn, share_id))

    async def expired_shares(self, now_ms: int, limit: int) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM shares WHERE expires_at IS NOT NULL AND expires_at <= ?"
                " ORDER BY expires_at LIMIT ?",
                (now_ms, limit),
            ).fetchall()
            return [row[0] for row in rows]

        return await self._read(run)

    async def list_shares(self, limit: int, after: str | None = None) -> list[ShareRecord]:
        def run(conn: sqlite3.Connection) -> list[ShareRecord]:
            rows = conn.execute(
                f"SELECT {SHARE_COLUMNS} FROM shares WHERE id > ? ORDER BY id LIMIT ?",
                (after or "", limit),
            ).fetchall()
            return [ShareRecord(*row) for row in rows]

        return await self._read(run)

    async def count_shares(self) -> int:
        return await self._read(
            lambda conn: int(conn.execute("SELECT COUNT(*) FROM shares").fetchone()[0])
        )

    async def touch_share(self, share_id: str, now_ms: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE shares SET active_at = MAX(COALESCE(active_at, 0), ?) WHERE id = ?",
                (now_ms, share_id),
            )

        await self._write(run)

    async def idle_shares(self, before_ms: int, limit: int) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM shares WHERE archive IS NULL AND active_at <= ?"
                " ORDER BY active_at LIMIT ?",
                (before_ms, limit),
            ).fetchall()
            return [row[0] for row in rows]

        return await self._read(run)

    # -- archiving ----------------------------------------------------------------------

    async def archive_session(self, session_id: str, last_seq: int, archive: str) -> bool:
        writer = self._writer
        if writer is None:
            raise Unavailable("the SQLite store is closed")
        return await self._write(
            lambda conn: writer.archive_session(conn, session_id, last_seq, archive)
        )

    async def restore_session(
        self, session_id: str, archive: str, events: Iterable[Event], snapshot: Snapshot
    ) -> bool:
        # Made as the writer thread inserts them: the log is never in memory as a whole.
        rows = (
            (session_id, e.seq, e.id, e.type, e.ts, orjson.dumps(e.data))
            for e in restored_log(session_id, events)
        )
        writer = self._writer
        if writer is None:
            raise Unavailable("the SQLite store is closed")
        return await self._write(
            lambda conn: writer.restore_session(conn, session_id, archive, rows, snapshot)
        )

    # -- the log ------------------------------------------------------------------------

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        first = events[0].seq
        for offset, event in enumerate(events):
            if event.seq != first + offset:
                raise SeqConflict(f"session {session_id}: seqs of one append must be consecutive")
        rows = [(session_id, e.seq, e.id, e.type, e.ts, orjson.dumps(e.data)) for e in events]
        writer = self._writer
        if writer is None:
            raise Unavailable("the SQLite store is closed")
        await self._write(lambda conn: writer.append(conn, session_id, rows))

    async def read_events(self, session_id: str, after_seq: int, limit: int) -> list[Event]:
        def run(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT seq, event_id, type, ts, data FROM events"
                " WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (session_id, after_seq, limit),
            ).fetchall()
            return [Event.from_stored(*row) for row in rows]

        return await self._read(run)

    async def last_seq(self, session_id: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            sql = "SELECT MAX(seq) FROM events WHERE session_id = ?"
            return int(conn.execute(sql, (session_id,)).fetchone()[0] or 0)

        return await self._read(run)

    async def find_event_ids(self, session_id: str, ids: Sequence[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(ids))

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            found: dict[str, int] = {}
            for start in range(0, len(wanted), MAX_PARAMS):
                chunk = wanted[start : start + MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT event_id, seq FROM events"
                    f" WHERE session_id = ? AND event_id IN ({marks})",
                    (session_id, *chunk),
                )
                found.update(rows)
            return found

        if not wanted:
            return {}
        return await self._read(run)

    # -- snapshots ----------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        def run(conn: sqlite3.Connection) -> None:
            # Never beside an archive: a node that still holds the session must not
            # leave its state behind in the hot store.
            conn.execute(
                "INSERT INTO snapshots (session_id, seq, state) SELECT ?, ?, ?"
                " WHERE NOT EXISTS (SELECT 1 FROM shares WHERE id = ? AND archive IS NOT NULL)"
                " ON CONFLICT (session_id) DO UPDATE SET seq = excluded.seq,"
                " state = excluded.state WHERE excluded.seq > snapshots.seq",
                (snapshot.session_id, snapshot.seq, snapshot.state, snapshot.session_id),
            )

        await self._write(run)

    async def load_snapshot(self, session_id: str) -> Snapshot | None:
        def run(conn: sqlite3.Connection) -> Snapshot | None:
            row = conn.execute(
                "SELECT seq, state FROM snapshots WHERE session_id = ?", (session_id,)
            ).fetchone()
            return None if row is None else Snapshot(session_id, row[0], bytes(row[1]))

        return await self._read(run)
