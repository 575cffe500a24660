"""The SQLite store's threads: the writer (group commit) and the checkpointer.

Theory of operation (the writes of :mod:`agentsync.store.sqlite`):

* One writer thread owns the only write connection and drains a queue of write jobs.
  Every job queued while the previous transaction was committing goes into the next
  transaction (group commit), so N concurrent appends cost one commit, not N. Each job
  runs inside its own SAVEPOINT: a job that fails (SeqConflict) is rolled back alone and
  the others in the group still commit. A caller's future is resolved only after COMMIT
  has returned, so an acknowledged append is durable.
* Jobs run in the order they were queued, so a caller may pipeline appends to one session
  (seqs 1-5, then 6-10) without awaiting the first.
* The writer keeps each session's last seq in memory, so an append costs no query. The
  cache is dropped whenever ``PRAGMA data_version`` shows that another connection (another
  process) committed, and entries changed by a group are kept only if the group commits.
* The checkpointer copies the WAL back into the database from a thread and connection of
  its own, so that no commit pays for a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from agentsync.protocol import now_ms
from agentsync.store.base import (
    SeqConflict,
    SessionArchived,
    Snapshot,
    resolve,
    tombstone_key,
)

T = TypeVar("T")

BUSY_TIMEOUT_MS: Final = 5000
MAX_JOBS_PER_TRANSACTION: Final = 1000
LAST_SEQ_CACHE_SIZE: Final = 65536
ARCHIVED: Final = -2  # a session's last seq (in the writer's cache) while it is archived


@dataclass(slots=True)
class Job(Generic[T]):
    """One write: ``run`` executes on the writer thread inside a SAVEPOINT."""

    run: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    # Called with the result on the loop, in commit order, even if the caller has gone
    # away (its future cancelled): what must hear of every committed write.
    committed: Callable[[T], None] | None = None


def _resolve_all(batch: list[tuple[Job[Any], bool, Any]]) -> None:
    """Answer a group's jobs in commit order (their done-callbacks run in that order)."""
    for job, ok, value in batch:
        if ok and job.committed is not None:
            job.committed(value)
        resolve(job.future, ok, value)


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
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


class Checkpointer:
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
        conn = connect(self.path, self.synchronous)
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


class Writer:
    """The writer thread: owns the write connection, the queue and the last-seq cache."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.jobs: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self.commits = 0
        self._last_seq: dict[str, int] = {}  # committed state, oldest entry first
        self._pending: dict[str, int] = {}  # changes of the group being written
        self._data_version = self._read_data_version()
        self.deleted = False  # a job of the current group deleted a share
        # Bumped whenever caches of committed rows must be dropped: another process
        # wrote, or a group rolled back. Other caches on this thread compare it.
        self.generation = 0
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
                group: list[Job[Any]] = [first]
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

    def _commit_group(self, group: list[Job[Any]]) -> None:
        conn = self.conn
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = self._read_data_version()
            if version != self._data_version:  # another process wrote: distrust the cache
                self._last_seq.clear()
                self._data_version = version
                self.generation += 1
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
            self.generation += 1
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
        # One wake-up per event loop for the whole group, not one per job.
        answers: dict[asyncio.AbstractEventLoop, list[tuple[Job[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(group, outcomes, strict=True):
            answers.setdefault(job.loop, []).append((job, ok, value))
        for loop, batch in answers.items():
            # RuntimeError: the caller's loop is closed, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_all, batch)

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
        rows: Iterable[tuple[Any, ...]],
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
        self._query_last_seq(conn, session_id)  # the rows were consumed: ask what they were
        return True
