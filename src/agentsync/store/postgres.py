"""The scale-out Store: PostgreSQL through asyncpg, shared by every node.

Theory of operation:

* Writes go through one writer task with one connection of its own, which commits the
  jobs queued meanwhile as one transaction (group commit) and serializes each session's
  writes across nodes with advisory locks: see :mod:`agentsync.store.postgres_writer`.
  An acknowledged append is durable, and appends to one session commit in call order.
* Several nodes may share the database. A session that was deleted refuses every
  append, whichever node it comes from; one that is archived refuses them too
  (SessionArchived), until it is restored.
* Reads use a connection pool and nothing is cached, so every node sees every commit.
* Deletion removes every row of a share and leaves a tombstone keyed by a hash of its id.
  PostgreSQL keeps the bytes of deleted rows in its table files until VACUUM reuses the
  space, and in WAL segments until they are recycled: unlike the SQLite store, erasure
  at the byte level is the database operator's job (autovacuum, encrypted storage).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from agentsync.protocol import Conflict, Event, Unavailable, now_ms
from agentsync.store.base import (
    SeqConflict,
    ShareRecord,
    Snapshot,
    pages,
    restored_log,
    tombstone_key,
)
from agentsync.store.postgres_writer import (
    ARCHIVED,
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    MAX_BYTES_PER_TRANSACTION,
    Conn,
    GroupWriter,
    Rows,
    lock_key,
    unavailable,
)

T = TypeVar("T")
PoolConn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

URL_SCHEMES: Final = frozenset({"postgresql", "postgres"})
SCHEMA_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
ACQUIRE_TIMEOUT: Final = 10.0
RESTORE_PAGE: Final = 1000  # events inserted per statement (COPY) when a log is restored

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


SCHEMA_LOCK_KEY: Final = lock_key("", "agentsync schema creation")


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
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None  # for reads
        self._writer: GroupWriter | None = None  # all writes, on a connection of its own
        self._closing = False
        self._lock = asyncio.Lock()

    @property
    def commits(self) -> int:
        """Write transactions committed so far (group commit makes it < appends)."""
        return self._writer.commits if self._writer is not None else 0

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
            writer = GroupWriter(self.dsn, self.schema, self._server_settings())
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
                await writer.start()
            except BaseException as exc:
                await writer.abort()
                if pool is not None:
                    pool.terminate()
                if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresError):
                    raise unavailable(exc) from exc
                raise
            self._pool = pool
            self._closing = False
            self._writer = writer

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
            await writer.close()
            self._writer = self._pool = None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()

    async def ping(self) -> None:
        if self._writer is None or not self._writer.running:
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
            raise unavailable(exc) from exc

    def _call(
        self,
        run: Callable[[Conn], Awaitable[T]],
        *,
        session_id: str | None = None,
        deletes: bool = False,
        nbytes: int = 0,
        head: Callable[[T], int | None] | None = None,
        locks: tuple[str, ...] = (),
    ) -> asyncio.Future[T]:
        """Queue a write for the writer (see ``GroupWriter.call``)."""
        writer = self._writer
        if writer is None:
            raise Unavailable("the PostgreSQL store is closed")
        return writer.call(
            run, session_id=session_id, deletes=deletes, nbytes=nbytes, head=head, locks=locks
        )

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
        self, session_id: str, archive: str, events: Iterable[Event], snapshot: Snapshot
    ) -> bool:
        log = pages(restored_log(session_id, events), RESTORE_PAGE)
        restored = [0]  # the last seq put back

        async def run(conn: Conn) -> bool:
            current = await conn.fetchrow(
                "SELECT archive FROM shares WHERE id = $1 FOR UPDATE", session_id
            )
            if current is None or current[0] != archive:
                return False
            # A page at a time, read on a thread (``events`` may be decoding an archive
            # object): the log is never in memory as a whole, and all of it goes in this
            # one transaction.
            while (page := await asyncio.to_thread(next, log, None)) is not None:
                try:
                    await Rows.of(session_id, page).insert(conn, self.schema)
                except asyncpg.UniqueViolationError as exc:
                    left = f"session {session_id}: rows left beside its archive"
                    raise SeqConflict(left) from exc
                restored[0] = page[-1].seq
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

        # How much the log weighs is known only once it is read: a list is measured, a
        # stream is taken to fill its transaction.
        if isinstance(events, Sequence):
            nbytes = sum(len(e.encoded) for e in events) + len(snapshot.state)
        else:
            nbytes = MAX_BYTES_PER_TRANSACTION
        return await self._call(
            run,
            session_id=session_id,
            nbytes=nbytes,
            head=lambda done: restored[0] if done else None,
        )

    # -- the log ------------------------------------------------------------------------

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        first = events[0].seq
        for offset, event in enumerate(events):
            if event.seq != first + offset:
                raise SeqConflict(f"session {session_id}: seqs of one append must be consecutive")
        writer = self._writer
        if writer is None:
            raise Unavailable("the PostgreSQL store is closed")
        # Queued before the first await: appends are committed in the order of the calls.
        await writer.append(session_id, events)

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
