"""The scale-out Store: PostgreSQL through asyncpg, shared by every node.

Theory of operation:

* One writer task owns one write connection and drains a FIFO queue of write jobs. The
  jobs queued while the previous transaction was committing form the next transaction
  (group commit), so N concurrent appends cost one COMMIT, one WAL flush, not N. A
  caller's future is resolved only after COMMIT has returned: an acknowledged append is
  durable (flushed to the WAL; ``synchronous_commit`` is turned back on should the server
  default to ``off``).
* Jobs run in the order they were queued, so appends to one session commit in submission
  order across transactions, and a delete queued after an append removes it.
* Several nodes may share the database. A transaction first takes an advisory lock on
  every session it touches, all in one statement and in one sorted order (two nodes never
  deadlock), then reads those sessions' last seqs and tombstones in one query. Until it
  commits, no other node can append to or delete those sessions, so the seq checks made
  from that read hold; the primary key (session_id, seq) and the unique (session_id,
  event_id) still have the last word. A session that was deleted refuses every append,
  whichever node it comes from.
* The appends of a transaction are inserted with one statement (arrays unnested
  server-side, or COPY for thousands of rows), not one per event or per append. Should
  that statement fail (an event id the session already holds), the transaction is
  rolled back and run again job by job, each inside its own SAVEPOINT, so that only the
  offending append fails. Other writes (shares, snapshots, deletes) always run in their
  own SAVEPOINT.
* Reads use a connection pool and nothing is cached, so every node sees every commit.
* Deletion removes every row of a share and leaves a tombstone keyed by a hash of its id.
  PostgreSQL keeps the bytes of deleted rows in its table files until VACUUM reuses the
  space, and in WAL segments until they are recycled: unlike the SQLite store, erasure
  at the byte level is the database operator's job (autovacuum, encrypted storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from agentsync.protocol import Conflict, Event, Unavailable, now_ms
from agentsync.store.base import SeqConflict, SessionArchived, ShareRecord, Snapshot
from agentsync.store.sqlite import tombstone_key

T = TypeVar("T")
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
PoolConn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

log = logging.getLogger("agentsync.store.postgres")

URL_SCHEMES: Final = frozenset({"postgresql", "postgres"})
SCHEMA_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_JOBS_PER_TRANSACTION: Final = 1000
# Each advisory lock takes a slot of the server's shared lock table (sized by
# max_locks_per_transaction x max_connections, 6400 by default) until COMMIT.
MAX_SESSIONS_PER_TRANSACTION: Final = 256
MAX_EVENTS_PER_TRANSACTION: Final = 20_000
MAX_BYTES_PER_TRANSACTION: Final = 32 * 1024 * 1024
COPY_THRESHOLD: Final = 1000  # rows from which one COPY beats one INSERT of arrays
CONNECT_TIMEOUT: Final = 10.0
ACQUIRE_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 10.0
DELETED: Final = -1  # a session's last seq once its share was deleted
ARCHIVED: Final = -2  # a session's last seq while its log is in the archive

SCHEMA: Final = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.shares (
    id text COLLATE "C" PRIMARY KEY,
    title text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint,
    read text NOT NULL,
    secret_hash bytea NOT NULL,
    read_token_hash bytea,
    epoch text NOT NULL,
    archive text,
    active_at bigint
);
CREATE INDEX IF NOT EXISTS shares_expires_at ON {schema}.shares (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {schema}.events (
    session_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    type text NOT NULL,
    ts bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (session_id, seq),
    CONSTRAINT events_event_id UNIQUE (session_id, event_id)
);
CREATE TABLE IF NOT EXISTS {schema}.snapshots (
    session_id text COLLATE "C" PRIMARY KEY,
    seq bigint NOT NULL,
    state bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.tombstones (
    id text COLLATE "C" PRIMARY KEY,
    deleted_at bigint NOT NULL
);
"""
# Databases made before archiving get its columns; run under the schema lock.
MIGRATION: Final = """
ALTER TABLE {schema}.shares ADD COLUMN IF NOT EXISTS archive text;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{name}'
                   AND table_name = 'shares' AND column_name = 'active_at') THEN
        ALTER TABLE {schema}.shares ADD COLUMN active_at bigint;
        UPDATE {schema}.shares SET active_at = created_at;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS shares_idle ON {schema}.shares (active_at) WHERE archive IS NULL;
"""
TABLES: Final = ("shares", "events", "snapshots", "tombstones")

SHARE_COLUMNS: Final = (
    "id, title, created_at, expires_at, read, secret_hash, read_token_hash, epoch, archive"
)
INSERT_COLUMNS: Final = (
    "id, title, created_at, expires_at, read, secret_hash, read_token_hash, epoch, active_at"
)
HEADS_SQL: Final = """
SELECT u.session_id,
       (SELECT max(e.seq) FROM events e WHERE e.session_id = u.session_id),
       EXISTS (SELECT 1 FROM tombstones t WHERE t.id = u.tombstone),
       EXISTS (SELECT 1 FROM shares s WHERE s.id = u.session_id AND s.archive IS NOT NULL)
FROM unnest($1::text[], $2::text[]) AS u(session_id, tombstone)
"""
ARCHIVE_SQL: Final = """
WITH ok AS (
    SELECT 1 FROM shares
    WHERE id = $1 AND archive IS NULL
      AND coalesce((SELECT max(seq) FROM events WHERE session_id = $1), 0) = $2
),
     log AS (DELETE FROM events WHERE session_id = $1 AND EXISTS (SELECT 1 FROM ok)),
     snap AS (DELETE FROM snapshots WHERE session_id = $1 AND EXISTS (SELECT 1 FROM ok)),
     mark AS (UPDATE shares SET archive = $3 WHERE id = $1 AND EXISTS (SELECT 1 FROM ok))
SELECT count(*) FROM ok
"""
EVENT_COLUMNS: Final = ["session_id", "seq", "event_id", "type", "ts", "data"]
INSERT_EVENTS_SQL: Final = """
INSERT INTO events (session_id, seq, event_id, type, ts, data)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                     $6::bytea[])
"""
DELETE_SHARE_SQL: Final = """
WITH gone AS (DELETE FROM shares WHERE id = $1 RETURNING id),
     log AS (DELETE FROM events WHERE session_id IN (SELECT id FROM gone)),
     snap AS (DELETE FROM snapshots WHERE session_id IN (SELECT id FROM gone)),
     tomb AS (
         INSERT INTO tombstones (id, deleted_at) SELECT $2::text, $3::bigint FROM gone
         ON CONFLICT (id) DO UPDATE SET deleted_at = excluded.deleted_at
     )
SELECT count(*) FROM gone
"""
SAVE_SNAPSHOT_SQL: Final = """
INSERT INTO snapshots (session_id, seq, state)
SELECT $1::text, $2::bigint, $3::bytea
WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = $4::text)
  AND NOT EXISTS (SELECT 1 FROM shares WHERE id = $1 AND archive IS NOT NULL)
ON CONFLICT (session_id) DO UPDATE SET seq = excluded.seq, state = excluded.state
    WHERE excluded.seq > snapshots.seq
"""


def _quote(name: str) -> str:
    return '"' + name + '"'


def _lock_key(schema: str, session_id: str) -> int:
    digest = hashlib.blake2b(f"{schema}\0{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


SCHEMA_LOCK_KEY: Final = _lock_key("", "agentsync schema creation")


def _unavailable(exc: BaseException) -> Unavailable:
    err = Unavailable(f"the PostgreSQL store failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller was cancelled; the write happened (or not) regardless
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


@dataclass(slots=True)
class _Append:
    session_id: str
    first_seq: int
    last_seq: int
    rows: _Rows
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

    @property
    def sessions(self) -> tuple[str, ...]:
        return () if self.session_id is None else (self.session_id,)


_Job: TypeAlias = "_Append | _Call[Any]"


class _RunJobByJob(Exception):
    """The one-statement insert of a group failed: retry the group job by job."""


@dataclass(slots=True)
class _Rows:
    """Events as columns, to be concatenated and inserted with one statement."""

    session_ids: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    tss: list[int] = field(default_factory=list)
    datas: list[bytes] = field(default_factory=list)

    @classmethod
    def of(cls, session_id: str, events: Sequence[Event]) -> _Rows:
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

    def extend(self, other: _Rows) -> None:
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


class PostgresStore:
    """The Store protocol (store/base.py) over PostgreSQL; see the module docstring.

    ``dsn`` is a libpq-style URL (``postgresql://user:password@host:5432/db``); the
    tables live in ``schema``, created with them if missing. ``pool_size`` bounds the
    connections used for reads; the writer has one more of its own.
    """

    def __init__(self, dsn: str, *, schema: str = "public", pool_size: int = 10) -> None:
        if not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema must be a plain identifier (letters, digits, _): {schema!r}")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.commits = 0  # write transactions committed (group commit makes it < appends)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._conn: Conn | None = None  # the writer's
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 10) -> PostgresStore:
        """A store for ``postgresql://…[?schema=NAME]``; other query parameters go to
        asyncpg (``sslmode``, or server settings such as ``application_name``)."""
        parts = urlsplit(url)
        if parts.scheme not in URL_SCHEMES:
            raise ValueError(f"not a PostgreSQL URL (postgresql://…): {url!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        schemas = [value for key, value in query if key == "schema"]
        rest = [(key, value) for key, value in query if key != "schema"]
        dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(dsn, schema=schemas[-1] if schemas else "public", pool_size=pool_size)

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            if self._writer is not None:
                return
            pool: asyncpg.Pool[asyncpg.Record] | None = None
            try:
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=CONNECT_TIMEOUT,
                    server_settings=self._server_settings(),
                )
                async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    await self._create_schema(conn)
                await self._connection()  # the writer's: fail now rather than at the first write
            except BaseException as exc:
                await self._drop_connection()
                if pool is not None:
                    pool.terminate()
                if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresError):
                    raise _unavailable(exc) from exc
                raise
            self._pool = pool
            self._closing = False
            self._writer = asyncio.create_task(self._write_loop(), name="agentsync-pg-writer")

    def _server_settings(self) -> dict[str, str]:
        return {"search_path": _quote(self.schema), "application_name": "agentsync"}

    async def _create_schema(self, conn: PoolConn) -> None:
        present = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)",
            self.schema,
            list(TABLES),
        )
        migrated = await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1"
            " AND table_name = 'shares' AND column_name = 'active_at'",
            self.schema,
        )
        if present == len(TABLES) and migrated:  # the common case; needs no CREATE privilege
            return
        # Nodes starting together would race on the catalog ("duplicate key value violates
        # unique constraint pg_type_typname_nsp_index") despite IF NOT EXISTS.
        async with conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")
            await conn.execute(SCHEMA.format(schema=_quote(self.schema)))
            await conn.execute(MIGRATION.format(schema=_quote(self.schema), name=self.schema))

    async def close(self) -> None:
        async with self._lock:
            writer, pool = self._writer, self._pool
            if writer is None or pool is None:
                return
            self._closing = True  # refuse new jobs; the queued ones still run
            self._wake.set()
            await writer
            self._writer = self._pool = None
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close(timeout=CLOSE_TIMEOUT)
                self._conn = None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()

    async def ping(self) -> None:
        if self._writer is None or self._writer.done():
            raise Unavailable("the PostgreSQL store is not open")
        await self._read(lambda conn: conn.fetchval("SELECT 1"))

    # -- reads --------------------------------------------------------------------------

    async def _read(self, run: Callable[[PoolConn], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None or self._closing:
            raise Unavailable("the PostgreSQL store is closed")
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await run(conn)
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
        ) as exc:
            raise _unavailable(exc) from exc

    # -- the writer ---------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        if self._writer is None or self._closing:
            raise Unavailable("the PostgreSQL store is closed")
        self._jobs.append(job)
        self._wake.set()

    def _call(
        self,
        run: Callable[[Conn], Awaitable[T]],
        *,
        session_id: str | None = None,
        deletes: bool = False,
        nbytes: int = 0,
        head: Callable[[T], int | None] | None = None,
    ) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(_Call(run, future, session_id, deletes, nbytes, head))
        return future

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
                error = exc if isinstance(exc, Unavailable) else _unavailable(exc)
                outcomes = [(False, error)] * len(group)
            else:
                self.commits += 1
            for job, (ok, value) in zip(group, outcomes, strict=True):
                _resolve(job.future, ok, value)

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
                self.dsn, timeout=CONNECT_TIMEOUT, server_settings=self._server_settings()
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
        keys = sorted({_lock_key(self.schema, s) for job in group for s in job.sessions})
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
                raise _unavailable(exc.__cause__ or exc) from exc
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
        rows = _Rows()
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
                rows = _Rows()
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

    # -- shares -------------------------------------------------------------------------

    async def create_share(self, share: ShareRecord) -> None:
        async def run(conn: Conn) -> None:
            tombstone = tombstone_key(share.id)
            if await conn.fetchval("SELECT 1 FROM tombstones WHERE id = $1", tombstone):
                raise Conflict(f"share {share.id} was deleted; its id cannot be reused")
            try:
                await conn.execute(
                    f"INSERT INTO shares ({INSERT_COLUMNS})"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $3)",
                    share.id,
                    share.title,
                    share.created_at,
                    share.expires_at,
                    share.read,
                    share.secret_hash,
                    share.read_token_hash,
                    share.epoch,
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"share {share.id} already exists") from exc

        # Locked like a session: two nodes creating or deleting the same share never
        # deadlock, nor does a create slip between a delete and its tombstone.
        await self._call(run, session_id=share.id)

    async def get_share(self, share_id: str) -> ShareRecord | None:
        sql = f"SELECT {SHARE_COLUMNS} FROM shares WHERE id = $1"
        row = await self._read(lambda conn: conn.fetchrow(sql, share_id))
        return None if row is None else ShareRecord(*row)

    async def is_tombstoned(self, share_id: str) -> bool:
        sql = "SELECT 1 FROM tombstones WHERE id = $1"
        key = tombstone_key(share_id)
        return await self._read(lambda conn: conn.fetchval(sql, key)) is not None

    async def delete_share(self, share_id: str) -> bool:
        async def run(conn: Conn) -> bool:
            gone = await conn.fetchval(
                DELETE_SHARE_SQL, share_id, tombstone_key(share_id), now_ms()
            )
            return bool(gone)

        return await self._call(run, session_id=share_id, deletes=True)

    async def expired_shares(self, now_ms: int, limit: int) -> list[str]:
        sql = (
            "SELECT id FROM shares WHERE expires_at IS NOT NULL AND expires_at <= $1"
            " ORDER BY expires_at LIMIT $2"
        )
        rows = await self._read(lambda conn: conn.fetch(sql, now_ms, limit))
        return [row[0] for row in rows]

    async def list_shares(self, limit: int, after: str | None = None) -> list[ShareRecord]:
        sql = f"SELECT {SHARE_COLUMNS} FROM shares WHERE id > $1 ORDER BY id LIMIT $2"
        rows = await self._read(lambda conn: conn.fetch(sql, after or "", limit))
        return [ShareRecord(*row) for row in rows]

    async def count_shares(self) -> int:
        return int(await self._read(lambda conn: conn.fetchval("SELECT count(*) FROM shares")))

    async def touch_share(self, share_id: str, now_ms: int) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(
                "UPDATE shares SET active_at = greatest(active_at, $2) WHERE id = $1",
                share_id,
                now_ms,
            )

        await self._call(run)

    async def idle_shares(self, before_ms: int, limit: int) -> list[str]:
        sql = (
            "SELECT id FROM shares WHERE archive IS NULL AND active_at <= $1"
            " ORDER BY active_at LIMIT $2"
        )
        rows = await self._read(lambda conn: conn.fetch(sql, before_ms, limit))
        return [row[0] for row in rows]

    # -- archiving ----------------------------------------------------------------------

    async def archive_session(self, session_id: str, last_seq: int, archive: str) -> bool:
        async def run(conn: Conn) -> bool:
            return bool(await conn.fetchval(ARCHIVE_SQL, session_id, last_seq, archive))

        # Locked like an append: no node can append between the check and the delete.
        return await self._call(
            run, session_id=session_id, head=lambda done: ARCHIVED if done else None
        )

    async def restore_session(
        self, session_id: str, archive: str, events: Sequence[Event], snapshot: Snapshot
    ) -> bool:
        for seq, event in enumerate(events, start=1):
            if event.seq != seq:
                raise SeqConflict(f"session {session_id}: a restored log must be dense from 1")
        rows = _Rows.of(session_id, events)
        last = events[-1].seq if events else 0

        async def run(conn: Conn) -> bool:
            current = await conn.fetchrow(
                "SELECT archive FROM shares WHERE id = $1 FOR UPDATE", session_id
            )
            if current is None or current[0] != archive:
                return False
            try:
                await rows.insert(conn, self.schema)
            except asyncpg.UniqueViolationError as exc:
                raise SeqConflict(f"session {session_id}: rows left beside its archive") from exc
            await conn.execute(
                "INSERT INTO snapshots (session_id, seq, state) VALUES ($1, $2, $3)"
                " ON CONFLICT (session_id) DO UPDATE SET seq = excluded.seq,"
                " state = excluded.state",
                session_id,
                snapshot.seq,
                snapshot.state,
            )
            await conn.execute(
                "UPDATE shares SET archive = NULL, active_at = $2 WHERE id = $1",
                session_id,
                now_ms(),
            )
            return True

        nbytes = sum(map(len, rows.datas)) + len(snapshot.state)
        return await self._call(
            run, session_id=session_id, nbytes=nbytes, head=lambda done: last if done else None
        )

    # -- the log ------------------------------------------------------------------------

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        first = events[0].seq
        for offset, event in enumerate(events):
            if event.seq != first + offset:
                raise SeqConflict(f"session {session_id}: seqs of one append must be consecutive")
        rows = _Rows.of(session_id, events)
        if len(set(rows.ids)) != len(rows.ids):
            raise SeqConflict(f"session {session_id}: an event id repeats within the append")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        nbytes = sum(map(len, rows.datas))
        # Queued before the first await: appends are committed in the order of the calls.
        self._submit(_Append(session_id, first, events[-1].seq, rows, nbytes, future))
        await future

    async def read_events(self, session_id: str, after_seq: int, limit: int) -> list[Event]:
        sql = (
            "SELECT seq, event_id, type, ts, data FROM events"
            " WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )
        rows = await self._read(lambda conn: conn.fetch(sql, session_id, after_seq, limit))
        return [Event.from_stored(*row) for row in rows]

    async def last_seq(self, session_id: str) -> int:
        sql = "SELECT coalesce(max(seq), 0) FROM events WHERE session_id = $1"
        return int(await self._read(lambda conn: conn.fetchval(sql, session_id)))

    async def find_event_ids(self, session_id: str, ids: Sequence[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        sql = (
            "SELECT event_id, seq FROM events WHERE session_id = $1 AND event_id = ANY($2::text[])"
        )
        rows = await self._read(lambda conn: conn.fetch(sql, session_id, wanted))
        return {row[0]: row[1] for row in rows}

    # -- snapshots ----------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        async def run(conn: Conn) -> None:
            # Never for a deleted share: a node that has not heard of the delete yet
            # must not leave its state behind.
            await conn.execute(
                SAVE_SNAPSHOT_SQL,
                snapshot.session_id,
                snapshot.seq,
                snapshot.state,
                tombstone_key(snapshot.session_id),
            )

        await self._call(run, session_id=snapshot.session_id, nbytes=len(snapshot.state))

    async def load_snapshot(self, session_id: str) -> Snapshot | None:
        sql = "SELECT seq, state FROM snapshots WHERE session_id = $1"
        row = await self._read(lambda conn: conn.fetchrow(sql, session_id))
        return None if row is None else Snapshot(session_id, row[0], bytes(row[1]))


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


async def _insert_or_retry(conn: Conn, rows: _Rows, schema: str) -> None:
    try:
        await rows.insert(conn, schema)
    except asyncpg.PostgresError as exc:
        raise _RunJobByJob from exc
