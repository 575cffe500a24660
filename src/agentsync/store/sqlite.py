"""The embedded Store: one SQLite database file in WAL mode.

Theory of operation:

* One writer thread owns the only write connection and drains a queue of write jobs.
  Every job queued while the previous transaction was committing goes into the next
  transaction (group commit), so N concurrent appends cost one commit, not N. Each job
  runs inside its own SAVEPOINT: a job that fails (SeqConflict) is rolled back alone and
  the others in the group still commit. A caller's future is resolved only after COMMIT
  has returned, so an acknowledged append is durable: with ``synchronous=NORMAL`` it
  survives SIGKILL of the process, with ``FULL`` it also survives power loss.
* Jobs run in the order they were queued, so a caller may pipeline appends to one session
  (seqs 1-5, then 6-10) without awaiting the first.
* The writer keeps each session's last seq in memory, so an append costs no query. The
  cache is dropped whenever ``PRAGMA data_version`` shows that another connection (another
  process) committed, and entries changed by a group are kept only if the group commits.
* Reads run on a small thread pool, one read-only connection per thread; WAL lets them
  proceed while the writer commits, and the event loop never blocks on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import orjson

from agentsync.protocol import Conflict, Event, Unavailable, now_ms
from agentsync.store.base import SeqConflict, SessionArchived, ShareRecord, Snapshot

T = TypeVar("T")

SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
BUSY_TIMEOUT_MS: Final = 5000
MAX_JOBS_PER_TRANSACTION: Final = 1000
LAST_SEQ_CACHE_SIZE: Final = 65536
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
ARCHIVED: Final = -2  # a session's last seq (in the writer's cache) while it is archived


@dataclass(slots=True)
class _Job(Generic[T]):
    """One write: ``run`` executes on the writer thread inside a SAVEPOINT."""

    run: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller was cancelled; the write happened (or not) regardless
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # each connection is used by one thread at a time
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot use WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


def tombstone_key(share_id: str) -> str:
    """What a tombstone keeps of a deleted share: a one-way hash of its id, enough to
    answer 410 for the link and refuse reuse of the id, and nothing readable."""
    return hashlib.sha256(share_id.encode()).hexdigest()


class _Checkpointer:
    """Copies the WAL back into the database from its own thread and connection.

    SQLite's automatic checkpoint runs inside a committing transaction and syncs the
    files, which put a few milliseconds on one commit in a few hundred: the p99 of
    appends. PASSIVE checkpoints from here never block the writer; the writer keeps a
    large automatic threshold only as a backstop should this thread fall behind.
    """

    def __init__(self, path: Path, synchronous: str, interval: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.interval = interval
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.truncate = False  # set after a delete: empty the WAL of the deleted pages
        self.thread = threading.Thread(target=self._run, name="agentsync-sqlite-checkpoint")

    def request_truncate(self) -> None:
        self.truncate = True
        self.wake.set()

    def _run(self) -> None:
        conn = _connect(self.path, self.synchronous)
        try:
            while not self.stop.is_set():
                self.wake.wait(self.interval)
                self.wake.clear()
                mode = "TRUNCATE" if self.truncate else "PASSIVE"
                self.truncate = False
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()


class _Writer:
    """The writer thread: owns the write connection, the queue and the last-seq cache."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self.commits = 0
        self._last_seq: dict[str, int] = {}  # committed state, oldest entry first
        self._pending: dict[str, int] = {}  # changes of the group being written
        self._data_version = self._read_data_version()
        self.deleted = False  # a job of the current group deleted a share
        self.on_delete: Callable[[], None] | None = None  # called after such a group commits
        self.thread = threading.Thread(target=self._run, name="agentsync-sqlite-writer")

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                first = self.jobs.get()
                if first is None:
                    break
                group: list[_Job[Any]] = [first]
                while len(group) < MAX_JOBS_PER_TRANSACTION:
                    try:
                        job = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                        break
                    group.append(job)
                self._commit_group(group)
        finally:
            self.conn.close()

    def _commit_group(self, group: list[_Job[Any]]) -> None:
        conn = self.conn
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = self._read_data_version()
            if version != self._data_version:  # another process wrote: distrust the cache
                self._last_seq.clear()
                self._data_version = version
            for job in group:
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (e.g. disk full); running
                    # on would commit the remaining jobs one by one.
                    raise sqlite3.OperationalError("the group transaction was rolled back")
                conn.execute("SAVEPOINT job")
                try:
                    result = job.run(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((True, result))
            conn.execute("COMMIT")
        except Exception as exc:
            self._pending.clear()
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            outcomes = [(False, exc)] * len(group)
        else:
            self.commits += 1
            for session_id, seq in self._pending.items():
                self._remember(session_id, seq)
            self._pending.clear()
            if self.deleted and self.on_delete is not None:
                self.on_delete()
        self.deleted = False
        for job, (ok, value) in zip(group, outcomes, strict=True):
            # RuntimeError: the caller's loop is closed, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_resolve, job.future, ok, value)

    def _read_data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- the last-seq cache -----------------------------------------------------------

    def _remember(self, session_id: str, seq: int) -> None:
        self._last_seq.pop(session_id, None)
        self._last_seq[session_id] = seq
        if len(self._last_seq) > LAST_SEQ_CACHE_SIZE:
            del self._last_seq[next(iter(self._last_seq))]

    def _cached_last_seq(self, session_id: str) -> int | None:
        seq = self._pending.get(session_id)
        return seq if seq is not None else self._last_seq.get(session_id)

    def _query_last_seq(self, conn: sqlite3.Connection, session_id: str) -> int:
        row = conn.execute(
            "SELECT (SELECT MAX(seq) FROM events WHERE session_id = ?),"
            " EXISTS (SELECT 1 FROM shares WHERE id = ? AND archive IS NOT NULL)",
            (session_id, session_id),
        ).fetchone()
        seq = ARCHIVED if row[1] else int(row[0] or 0)
        self._pending[session_id] = seq
        return seq

    # -- jobs (run on this thread, inside a SAVEPOINT) --------------------------------

    def append(
        self, conn: sqlite3.Connection, session_id: str, rows: list[tuple[Any, ...]]
    ) -> None:
        first_seq: int = rows[0][1]
        last = self._cached_last_seq(session_id)
        if last is None:
            last = self._query_last_seq(conn, session_id)
        if last == ARCHIVED:
            raise SessionArchived(f"session {session_id} is archived; restore it first")
        if first_seq != last + 1:
            raise SeqConflict(
                f"session {session_id}: append starts at seq {first_seq}, "
                f"but the log ends at {last}"
            )
        try:
            conn.executemany(
                "INSERT INTO events (session_id, seq, event_id, type, ts, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        except sqlite3.IntegrityError as exc:
            self._pending.pop(session_id, None)
            self._last_seq.pop(session_id, None)
            raise SeqConflict(f"session {session_id}: seq or event id already stored") from exc
        self._pending[session_id] = rows[-1][1]

    def delete_share(self, conn: sqlite3.Connection, share_id: str) -> bool:
        if conn.execute("DELETE FROM shares WHERE id = ?", (share_id,)).rowcount == 0:
            return False
        conn.execute("DELETE FROM events WHERE session_id = ?", (share_id,))
        conn.execute("DELETE FROM snapshots WHERE session_id = ?", (share_id,))
        conn.execute(
            "INSERT OR REPLACE INTO tombstones (id, deleted_at) VALUES (?, ?)",
            (tombstone_key(share_id), now_ms()),
        )
        self._pending[share_id] = 0
        self.deleted = True
        return True

    def archive_session(
        self, conn: sqlite3.Connection, session_id: str, last_seq: int, archive: str
    ) -> bool:
        row = conn.execute(
            "SELECT archive IS NULL,"
            " (SELECT COALESCE(MAX(seq), 0) FROM events WHERE session_id = ?)"
            " FROM shares WHERE id = ?",
            (session_id, session_id),
        ).fetchone()
        if row is None or not row[0] or row[1] != last_seq:
            return False
        conn.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
        conn.execute("DELETE FROM snapshots WHERE session_id = ?", (session_id,))
        conn.execute("UPDATE shares SET archive = ? WHERE id = ?", (archive, session_id))
        self._pending[session_id] = ARCHIVED
        self.deleted = True  # let the checkpointer drop the deleted pages from the WAL
        return True

    def restore_session(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        archive: str,
        rows: list[tuple[Any, ...]],
        snapshot: Snapshot,
    ) -> bool:
        row = conn.execute("SELECT archive FROM shares WHERE id = ?", (session_id,)).fetchone()
        if row is None or row[0] != archive:
            return False
        try:
            conn.executemany(
                "INSERT INTO events (session_id, seq, event_id, type, ts, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        except sqlite3.IntegrityError as exc:
            raise SeqConflict(f"session {session_id}: rows left beside its archive") from exc
        conn.execute(
            "INSERT INTO snapshots (session_id, seq, state) VALUES (?, ?, ?)"
            " ON CONFLICT (session_id) DO UPDATE SET seq = excluded.seq, state = excluded.state",
            (session_id, snapshot.seq, snapshot.state),
        )
        conn.execute(
            "UPDATE shares SET archive = NULL, active_at = ? WHERE id = ?",
            (now_ms(), session_id),
        )
        self._pending[session_id] = rows[-1][1] if rows else 0
        return True


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
        self._writer: _Writer | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._checkpointer: _Checkpointer | None = None
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
            self._writer = _Writer(conn)
            self._writer.thread.start()
            self._checkpointer = _Checkpointer(self.path, self.synchronous, CHECKPOINT_SECONDS)
            self._checkpointer.thread.start()
            self._writer.on_delete = self._checkpointer.request_truncate
            self._readers = ThreadPoolExecutor(READ_THREADS, "agentsync-sqlite-reader")

    def _open_write_connection(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, self.synchronous)
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

    def _write(self, run: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        writer = self._writer
        if writer is None:
            raise Unavailable("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        writer.jobs.put(_Job(run, future, loop))
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
            conn = _connect(self.path, self.synchronous)
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
        self, session_id: str, archive: str, events: Sequence[Event], snapshot: Snapshot
    ) -> bool:
        for seq, event in enumerate(events, start=1):
            if event.seq != seq:
                raise SeqConflict(f"session {session_id}: a restored log must be dense from 1")
        rows = [(session_id, e.seq, e.id, e.type, e.ts, orjson.dumps(e.data)) for e in events]
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
