"""The PostgreSQL store's writer: one task, one connection, group commit.

Theory of operation (the writes of :mod:`agentsync.store.postgres`):

* Callers queue write jobs (``append``, ``call``) without awaiting anything first, and
  jobs run in queue order: appends to one session commit in the order of the calls, across
  transactions, and a delete queued after an append removes it.
* The writer task drains the FIFO queue: the jobs queued while the previous transaction
  was committing form the next one, within the limits below, so N concurrent appends
  cost one COMMIT, one WAL flush, not N. A job's future is resolved only after COMMIT has
  returned: an acknowledged append is durable (``synchronous_commit`` is turned back on
  should the server default to ``off``).
* A transaction first takes an advisory lock on every session it touches, all in one
  statement and in one sorted order (two nodes never deadlock), then reads those
  sessions' last seqs, tombstones and archive marks in one query. Until it commits no
  other node can append to or delete those sessions, so the seq checks made from that read
  hold; the primary key (session_id, seq) and the unique (session_id, event_id) still have
  the last word.
* The appends of a transaction are inserted with one statement (arrays unnested
  server-side, or COPY for thousands of rows). Should that statement fail (an event id the
  session already holds), the transaction is rolled back and run again job by job, each
  inside its own SAVEPOINT, so that only the offending append fails. Other jobs (shares,
  snapshots, deletes, archiving) always run in their own SAVEPOINT, after the appends
  queued before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeAlias, TypeVar

import asyncpg
import orjson

from agentsync.protocol import Event, Unavailable
from agentsync.store.base import SeqConflict, SessionArchived, resolve, tombstone_key

T = TypeVar("T")
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

log = logging.getLogger("agentsync.store.postgres")

MAX_JOBS_PER_TRANSACTION: Final = 1000
# Each advisory lock takes a slot of the server's shared lock table (sized by
# max_locks_per_transaction x max_connections, 6400 by default) until COMMIT.
MAX_SESSIONS_PER_TRANSACTION: Final = 256
MAX_EVENTS_PER_TRANSACTION: Final = 20_000
MAX_BYTES_PER_TRANSACTION: Final = 32 * 1024 * 1024
COPY_THRESHOLD: Final = 1000  # rows from which one COPY beats one INSERT of arrays
CONNECT_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 10.0
DELETED: Final = -1  # a session's last seq once its share was deleted
ARCHIVED: Final = -2  # a session's last seq while its log is in the archive

HEADS_SQL: Final = """
SELECT u.session_id,
       (SELECT max(e.seq) FROM events e WHERE e.session_id = u.session_id),
       EXISTS (SELECT 1 FROM tombstones t WHERE t.id = u.tombstone),
       EXISTS (SELECT 1 FROM shares s WHERE s.id = u.session_id AND s.archive IS NOT NULL)
FROM unnest($1::text[], $2::text[]) AS u(session_id, tombstone)
"""
EVENT_COLUMNS: Final = ["session_id", "seq", "event_id", "type", "ts", "data"]
INSERT_EVENTS_SQL: Final = """
INSERT INTO events (session_id, seq, event_id, type, ts, data)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                     $6::bytea[])
"""


def lock_key(schema: str, session_id: str) -> int:
    """The advisory lock that serializes the writes of one session across nodes."""
    digest = hashlib.blake2b(f"{schema}\0{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def unavailable(exc: BaseException) -> Unavailable:
    err = Unavailable(f"the PostgreSQL store failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


@dataclass(slots=True)
class Rows:
    """Events as columns, to be concatenated and inserted with one statement."""

    session_ids: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    tss: list[int] = field(default_factory=list)
    datas: list[bytes] = field(default_factory=list)

    @classmethod
    def of(cls, session_id: str, events: Sequence[Event]) -> Rows:
        rows = cls([session_id] * len(events))
        for e in events:
            rows.seqs.append(e.seq)
            rows.ids.append(e.id)
            rows.types.append(e.type)
            rows.tss.append(e.ts)
            rows.datas.append(orjson.dumps(e.data))
        return rows

    def columns(self) -> tuple[list[Any], ...]:
        return (self.session_ids, self.seqs, self.ids, self.types, self.tss, self.datas)

    def extend(self, other: Rows) -> None:
        for mine, theirs in zip(self.columns(), other.columns(), strict=True):
            mine.extend(theirs)

    async def insert(self, conn: Conn, schema: str) -> None:
        columns = self.columns()
        if not self.seqs:
            return
        if len(self.seqs) < COPY_THRESHOLD:
            await conn.execute(INSERT_EVENTS_SQL, *columns)
        else:  # COPY costs a round trip more, and a third less server time per row
            await conn.copy_records_to_table(
                "events",
                schema_name=schema,
                columns=EVENT_COLUMNS,
                records=zip(*columns, strict=True),
            )


@dataclass(slots=True)
class _Append:
    session_id: str
    first_seq: int
    last_seq: int
    rows: Rows
    nbytes: int
    future: asyncio.Future[None]

    @property
    def sessions(self) -> tuple[str, ...]:
        return (self.session_id,)


@dataclass(slots=True)
class _Call(Generic[T]):
    """Any other write: ``run`` executes on the writer's connection inside a SAVEPOINT."""

    run: Callable[[Conn], Awaitable[T]]
    future: asyncio.Future[T]
    session_id: str | None = None  # locked for the transaction when set
    deletes: bool = False  # a True result means the session's log was deleted
    nbytes: int = 0
    # The session's last seq after this job, from its result (None: unchanged).
    head: Callable[[T], int | None] | None = None
    locks: tuple[str, ...] = ()  # more keys locked for the transaction (a batch's streams)

    @property
    def sessions(self) -> tuple[str, ...]:
        return self.locks if self.session_id is None else (self.session_id, *self.locks)


_Job: TypeAlias = "_Append | _Call[Any]"


class _RunJobByJob(Exception):
    """The one-statement insert of a group failed: retry the group job by job."""


class GroupWriter:
    """The writer task and its connection; see the module docstring."""

    def __init__(self, dsn: str, schema: str, server_settings: dict[str, str]) -> None:
        self.dsn = dsn
        self.schema = schema
        self.server_settings = server_settings
        self.commits = 0  # write transactions committed (group commit makes it < appends)
        self._conn: Conn | None = None
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (so that a bad DSN fails now, not at the first write), then run."""
        await self._connection()
        self._task = asyncio.create_task(self._write_loop(), name="agentsync-pg-writer")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def close(self) -> None:
        """Refuse new jobs, run the queued ones, then close the connection."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=CLOSE_TIMEOUT)
            self._conn = None

    async def abort(self) -> None:
        """Drop the connection of a writer that failed to start."""
        await self._drop_connection()

    # -- queueing -----------------------------------------------------------------------

    def append(self, session_id: str, events: Sequence[Event]) -> asyncio.Future[None]:
        """Queue an append of consecutive seqs; resolved once committed (or SeqConflict)."""
        rows = Rows.of(session_id, events)
        if len(set(rows.ids)) != len(rows.ids):
            raise SeqConflict(f"session {session_id}: an event id repeats within the append")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        nbytes = sum(map(len, rows.datas))
        self._submit(_Append(session_id, events[0].seq, events[-1].seq, rows, nbytes, future))
        return future

    def call(
        self,
        run: Callable[[Conn], Awaitable[T]],
        *,
        session_id: str | None = None,
        deletes: bool = False,
        nbytes: int = 0,
        head: Callable[[T], int | None] | None = None,
        locks: tuple[str, ...] = (),
    ) -> asyncio.Future[T]:
        """Queue any other write (see :class:`_Call`); resolved with ``run``'s result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(_Call(run, future, session_id, deletes, nbytes, head, locks))
        return future

    def _submit(self, job: _Job) -> None:
        if self._task is None or self._closing:
            raise Unavailable("the PostgreSQL store is closed")
        self._jobs.append(job)
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            group = self._take_group()
            try:
                outcomes = await self._commit_group(group)
            except Exception as exc:
                log.error("a PostgreSQL write transaction failed: %r", exc)
                await self._drop_connection()
                error = exc if isinstance(exc, Unavailable) else unavailable(exc)
                outcomes = [(False, error)] * len(group)
            else:
                self.commits += 1
            for job, (ok, value) in zip(group, outcomes, strict=True):
                resolve(job.future, ok, value)

    def _take_group(self) -> list[_Job]:
        """The next jobs in queue order, within the limits of one transaction."""
        group: list[_Job] = []
        sessions: set[str] = set()
        events = nbytes = 0
        while self._jobs and len(group) < MAX_JOBS_PER_TRANSACTION:
            job = self._jobs[0]
            new = [s for s in job.sessions if s not in sessions]
            count = len(job.rows.seqs) if isinstance(job, _Append) else 0
            if group and (
                len(sessions) + len(new) > MAX_SESSIONS_PER_TRANSACTION
                or events + count > MAX_EVENTS_PER_TRANSACTION
                or nbytes + job.nbytes > MAX_BYTES_PER_TRANSACTION
            ):
                break
            self._jobs.popleft()
            group.append(job)
            sessions.update(new)
            events += count
            nbytes += job.nbytes
        return group

    async def _connection(self) -> Conn:
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = await asyncpg.connect(
                self.dsn, timeout=CONNECT_TIMEOUT, server_settings=self.server_settings
            )
            if await conn.fetchval("SHOW synchronous_commit") == "off":
                # An acknowledged append must survive a crash of the database server too.
                await conn.execute("SET synchronous_commit = on")
            self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        """Forget the writer's connection after a failure left it in an unknown state."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _commit_group(self, group: list[_Job]) -> list[tuple[bool, Any]]:
        conn = await self._connection()
        try:
            return await self._run_group(conn, group, job_by_job=False)
        except _RunJobByJob:
            return await self._run_group(conn, group, job_by_job=True)

    async def _run_group(
        self, conn: Conn, group: list[_Job], *, job_by_job: bool
    ) -> list[tuple[bool, Any]]:
        """Run ``group`` in one transaction; one (ok, result or exception) per job."""
        keys = sorted({lock_key(self.schema, s) for job in group for s in job.sessions})
        begin = "BEGIN"
        if keys:  # one statement, one sorted order: two nodes' groups never deadlock
            array = ",".join(map(str, keys))
            begin += f"; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{array}}}'::bigint[]) k"
        await conn.execute(begin)
        try:
            outcomes = await self._run_jobs(conn, group, job_by_job)
            await conn.execute("COMMIT")
        except BaseException as exc:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            if isinstance(exc, _RunJobByJob) and conn.is_closed():
                raise unavailable(exc.__cause__ or exc) from exc
            raise
        return outcomes

    async def _run_jobs(
        self, conn: Conn, group: list[_Job], job_by_job: bool
    ) -> list[tuple[bool, Any]]:
        # Read after the locks were granted: this snapshot holds every commit that touched
        # these sessions, and no other node can make another before we commit.
        appended = list(dict.fromkeys(j.session_id for j in group if isinstance(j, _Append)))
        heads: dict[str, int] = {}
        if appended:
            tombstones = [tombstone_key(s) for s in appended]
            found = await conn.fetch(HEADS_SQL, appended, tombstones)
            for session_id, last, deleted, archived in found:
                heads[session_id] = DELETED if deleted else ARCHIVED if archived else (last or 0)
        outcomes: list[tuple[bool, Any]] = []
        rows = Rows()
        for job in group:
            if isinstance(job, _Append):
                last = heads[job.session_id]
                if last in (DELETED, ARCHIVED) or job.first_seq != last + 1:
                    outcomes.append((False, _seq_conflict(job, last)))
                    continue
                heads[job.session_id] = job.last_seq
                if not job_by_job:
                    rows.extend(job.rows)
                    outcomes.append((True, None))
                    continue
                ok, value = await _in_savepoint(
                    conn, functools.partial(job.rows.insert, conn, self.schema)
                )
                if not ok:
                    heads[job.session_id] = last
                    if isinstance(value, asyncpg.UniqueViolationError):
                        value = SeqConflict(
                            f"session {job.session_id}: seq or event id already stored"
                        )
                outcomes.append((ok, value))
            else:
                # The appends queued before this job are written before it.
                await _insert_or_retry(conn, rows, self.schema)
                rows = Rows()
                ok, value = await _in_savepoint(conn, functools.partial(job.run, conn))
                if ok and job.deletes and value and job.session_id is not None:
                    heads[job.session_id] = DELETED
                if ok and job.head is not None and job.session_id is not None:
                    head = job.head(value)
                    if head is not None:
                        heads[job.session_id] = head
                outcomes.append((ok, value))
        await _insert_or_retry(conn, rows, self.schema)
        return outcomes


def _seq_conflict(job: _Append, last: int) -> SeqConflict:
    if last == DELETED:
        return SeqConflict(f"session {job.session_id} was deleted")
    if last == ARCHIVED:
        return SessionArchived(f"session {job.session_id} is archived; restore it first")
    return SeqConflict(
        f"session {job.session_id}: append starts at seq {job.first_seq}, "
        f"but the log ends at {last}"
    )


async def _in_savepoint(conn: Conn, run: Callable[[], Awaitable[T]]) -> tuple[bool, Any]:
    """Run one job so that its failure rolls back only what it did."""
    await conn.execute("SAVEPOINT job")
    try:
        value = await run()
    except Exception as exc:
        # Raises in turn if the connection is gone: then the whole group fails.
        await conn.execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
        return False, exc
    await conn.execute("RELEASE SAVEPOINT job")
    return True, value


async def _insert_or_retry(conn: Conn, rows: Rows, schema: str) -> None:
    try:
        await rows.insert(conn, schema)
    except asyncpg.PostgresError as exc:
        raise _RunJobByJob from exc
