"""One conformance suite for every Store backend (store/base.py).

Each backend is one entry in ``BACKENDS``: a factory that builds a store over a durable
location (given a fresh ``tmp_path``; calling it again with the same path reopens the same
data, as another process or node would), and a probe that lists whatever rows of a share
remain after deletion, read straight from the database rather than through the store.

A backend that needs a service (PostgreSQL at ``AGENTSYNC_TEST_POSTGRES``, by default
``postgresql://postgres@127.0.0.1:5432/test``) skips when the service is unreachable,
except under ``AGENTSYNC_REQUIRE_SERVICES=1`` (CI), where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentsync.protocol import Event, NewEvent, new_id, now_ms
from agentsync.store.base import SeqConflict, SessionArchived, ShareRecord, Snapshot, Store
from agentsync.store.sqlite import SQLiteStore

# --- backends --------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str
    make: Callable[[Path], Store]
    leftovers: Callable[[Path, str], Awaitable[dict[str, int]]]
    """Rows per table that still mention a share id, read from the database itself."""
    missing: Callable[[], Awaitable[str | None]] | None = None
    """Why the backend cannot run here (its service is unreachable), or None."""
    cleanup: Callable[[Path], Awaitable[None]] | None = None
    """Drop what the test stored outside ``tmp_path``."""


def _sqlite_make(path: Path) -> Store:
    return SQLiteStore(path / "data" / "agentsync.db")


async def _sqlite_leftovers(path: Path, share_id: str) -> dict[str, int]:
    def scan() -> dict[str, int]:
        conn = sqlite3.connect(path / "data" / "agentsync.db")
        try:
            tables = [
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            found: dict[str, int] = {}
            for table in tables:
                hits = sum(
                    1
                    for row in conn.execute(f'SELECT * FROM "{table}"')
                    if any(share_id in str(value) for value in row)
                )
                if hits:
                    found[table] = hits
            return found
        finally:
            conn.close()

    return await asyncio.to_thread(scan)


POSTGRES_URL = os.environ.get(
    "AGENTSYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
_postgres_missing_reason: list[str | None] = []  # probed once per test run


def _postgres_schema(path: Path) -> str:
    """One schema per test directory: the same path reopens the same data."""
    return "t_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]


def _postgres_make(path: Path) -> Store:
    from agentsync.store.postgres import PostgresStore

    return PostgresStore(POSTGRES_URL, schema=_postgres_schema(path), pool_size=4)


async def _postgres_leftovers(path: Path, share_id: str) -> dict[str, int]:
    import asyncpg

    schema = _postgres_schema(path)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        found: dict[str, int] = {}
        for (table,) in tables:
            rows = await conn.fetch(f'SELECT * FROM "{schema}"."{table}"')
            hits = sum(1 for row in rows if any(share_id in str(value) for value in row))
            if hits:
                found[table] = hits
        return found
    finally:
        await conn.close()


async def _postgres_missing() -> str | None:
    if not _postgres_missing_reason:
        try:
            import asyncpg
        except ImportError:
            reason: str | None = "asyncpg is not installed (pip install -e .)"
        else:
            try:
                conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
                await conn.close()
                reason = None
            except Exception as exc:
                reason = f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc!r}"
        _postgres_missing_reason.append(reason)
    return _postgres_missing_reason[0]


async def _postgres_cleanup(path: Path) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{_postgres_schema(path)}" CASCADE')
    finally:
        await conn.close()


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in [
        Backend("sqlite", _sqlite_make, _sqlite_leftovers),
        Backend(
            "postgres",
            _postgres_make,
            _postgres_leftovers,
            missing=_postgres_missing,
            cleanup=_postgres_cleanup,
        ),
    ]
}


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    chosen = BACKENDS[request.param]
    reason = await chosen.missing() if chosen.missing is not None else None
    if reason is not None:
        # Imported here: a SIGKILL test runs this module as a script, outside pytest.
        from conftest import service_missing

        service_missing(f"the {chosen.name} store needs its service: {reason}")
    yield chosen
    if chosen.cleanup is not None:
        await chosen.cleanup(tmp_path)


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    store = backend.make(tmp_path)
    await store.open()
    yield store
    await store.close()


# --- helpers ---------------------------------------------------------------------------


def event(seq: int, event_id: str | None = None, text: str = "") -> Event:
    data = {"id": f"m{seq}", "role": "assistant", "content": text or f"text {seq} é ✓"}
    return Event.make(seq, NewEvent(event_id or f"e{seq}", "message", 1_700_000_000_000, data))


def events(first: int, last: int) -> list[Event]:
    return [event(seq) for seq in range(first, last + 1)]


def share(share_id: str | None = None, *, expires_at: int | None = None) -> ShareRecord:
    return ShareRecord(
        id=share_id or new_id(),
        title="a session",
        created_at=1_700_000_000_000,
        expires_at=expires_at,
        read="token",
        secret_hash=b"\x00\x01secret-hash",
        read_token_hash=b"token-hash\xff",
        epoch="ep1",
    )


async def seqs(store: Store, session_id: str) -> list[int]:
    return [e.seq for e in await store.read_events(session_id, 0, 1_000_000)]


# --- the log ---------------------------------------------------------------------------


async def test_append_then_read_back_in_order(store: Store) -> None:
    written = events(1, 3)
    await store.append("s", written)
    await store.append("s", events(4, 4))
    read = await store.read_events("s", 0, 100)
    assert [e.seq for e in read] == [1, 2, 3, 4]
    for got, want in zip(read, [*written, event(4)], strict=True):
        assert (got.id, got.type, got.ts, got.data) == (want.id, want.type, want.ts, want.data)
        assert orjson.loads(got.encoded) == orjson.loads(want.encoded)
    assert await store.read_events("other", 0, 100) == []


async def test_seqs_stay_dense_and_last_seq_follows(store: Store) -> None:
    assert await store.last_seq("s") == 0
    await store.append("s", events(1, 5))
    await store.append("s", events(6, 6))
    await store.append("s", events(7, 20))
    assert await seqs(store, "s") == list(range(1, 21))
    assert await store.last_seq("s") == 20
    assert await store.last_seq("unknown") == 0


@pytest.mark.parametrize(
    ("batch", "why"),
    [
        (events(5, 6), "gap after the last seq"),
        (events(3, 4), "reuses a stored seq"),
        ([event(4, "e1")], "reuses a stored event id"),
        ([event(4, "x"), event(5, "x")], "repeats an event id within the batch"),
        ([event(4), event(6)], "seqs not consecutive"),
        (events(0, 0), "seq 0"),
    ],
)
async def test_conflicting_append_raises_and_stores_nothing(
    store: Store, batch: list[Event], why: str
) -> None:
    await store.append("s", events(1, 3))
    with pytest.raises(SeqConflict):
        await store.append("s", batch)
    assert await seqs(store, "s") == [1, 2, 3], why
    await store.append("s", events(4, 5))  # the log is still usable where it was
    assert await seqs(store, "s") == [1, 2, 3, 4, 5]


async def test_first_append_must_start_at_one(store: Store) -> None:
    with pytest.raises(SeqConflict):
        await store.append("s", events(2, 3))
    assert await seqs(store, "s") == []


async def test_conflict_in_a_group_spares_the_other_appends(store: Store) -> None:
    await store.append("s", events(1, 2))
    # Submitted together so that a group-committing backend puts them in one transaction;
    # the bad batch fails on its second row, after its first row was inserted.
    results = await asyncio.gather(
        store.append("a", events(1, 3)),
        store.append("s", [event(3), event(4, "e1")]),
        store.append("b", events(1, 1)),
        store.append("s", [event(3, "other")]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], SeqConflict)
    assert await seqs(store, "a") == [1, 2, 3]
    assert await seqs(store, "b") == [1]
    read = await store.read_events("s", 0, 10)
    assert [(e.seq, e.id) for e in read] == [(1, "e1"), (2, "e2"), (3, "other")]


async def test_conflict_in_a_large_group_spares_the_other_appends(store: Store) -> None:
    """The same with thousands of rows in the group (bulk paths such as COPY)."""
    await store.append("s", events(1, 2))
    results = await asyncio.gather(
        *(store.append(f"big{i}", events(1, 100)) for i in range(15)),
        store.append("huge", events(1, 1000)),
        store.append("s", [event(3), event(4, "e1")]),
        store.append("s", [event(3, "other")]),
        return_exceptions=True,
    )
    assert results[:16] == [None] * 16
    assert isinstance(results[16], SeqConflict)
    assert results[17] is None
    for i in range(15):
        assert await seqs(store, f"big{i}") == list(range(1, 101))
    assert await seqs(store, "huge") == list(range(1, 1001))
    assert [e.id for e in await store.read_events("s", 0, 10)] == ["e1", "e2", "other"]


async def test_concurrent_appends_all_commit(store: Store) -> None:
    commits_before = getattr(store, "commits", None)
    await asyncio.gather(*(store.append(f"s{i}", events(1, 2)) for i in range(200)))
    for i in range(200):
        assert await seqs(store, f"s{i}") == [1, 2]
    if commits_before is not None:  # group commit: far fewer transactions than appends
        commits = store.commits - commits_before  # type: ignore[attr-defined]
        assert 1 <= commits < 100


async def test_concurrent_racing_appends_one_wins(store: Store) -> None:
    results = await asyncio.gather(
        *(store.append("s", [event(1, f"w{i}")]) for i in range(20)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, SeqConflict) for r in results if r is not None)
    assert await seqs(store, "s") == [1]


async def test_pipelined_appends_commit_in_submission_order(store: Store) -> None:
    """Appends to one session submitted without awaiting each other, spread over several
    transactions of a group-committing backend, all commit, in the order submitted."""
    pending = []
    for seq in range(1, 301):
        pending.append(asyncio.ensure_future(store.append("s", [event(seq)])))
        if seq % 7 == 0:
            await asyncio.sleep(0)  # let the writer start a transaction in between
    await asyncio.gather(*pending)
    assert await seqs(store, "s") == list(range(1, 301))


async def test_delete_queued_after_appends_removes_them(
    store: Store, backend: Backend, tmp_path: Path
) -> None:
    record = share()
    await store.create_share(record)
    results = await asyncio.gather(
        store.append(record.id, events(1, 3)),
        store.append(record.id, events(4, 5)),
        store.delete_share(record.id),
    )
    assert results == [None, None, True]
    assert await seqs(store, record.id) == []
    assert await backend.leftovers(tmp_path, record.id) == {}


async def test_read_events_after_and_limit(store: Store) -> None:
    await store.append("s", events(1, 10))
    assert [e.seq for e in await store.read_events("s", 0, 3)] == [1, 2, 3]
    assert [e.seq for e in await store.read_events("s", 3, 3)] == [4, 5, 6]
    assert [e.seq for e in await store.read_events("s", 8, 100)] == [9, 10]
    assert await store.read_events("s", 10, 100) == []
    assert await store.read_events("s", 50, 100) == []


async def test_find_event_ids(store: Store) -> None:
    await store.append("s", events(1, 5))
    await store.append("t", [event(1, "e9")])
    assert await store.find_event_ids("s", ["e2", "nope", "e5", "e2", "e9"]) == {
        "e2": 2,
        "e5": 5,
    }
    assert await store.find_event_ids("s", []) == {}
    assert await store.find_event_ids("unknown", ["e1"]) == {}
    many = [f"x{i}" for i in range(2500)] + ["e4"]
    assert await store.find_event_ids("s", many) == {"e4": 4}


async def test_stores_are_shared_through_the_database(backend: Backend, tmp_path: Path) -> None:
    """Two stores on one database (two processes, two nodes) never break density."""
    first, second = backend.make(tmp_path), backend.make(tmp_path)
    await first.open()
    await second.open()
    try:
        await first.append("s", events(1, 3))
        await second.append("s", events(4, 5))
        with pytest.raises(SeqConflict):
            await first.append("s", events(4, 4))  # first believes the log ends at 3
        with pytest.raises(SeqConflict):
            await first.append("s", events(7, 7))
        await first.append("s", events(6, 6))
        await second.append("s", events(7, 7))
        assert await seqs(first, "s") == list(range(1, 8))
        assert await first.last_seq("s") == 7

        await first.create_share(share("gone"))
        await first.append("gone", events(1, 2))
        assert await second.delete_share("gone")
        with pytest.raises(SeqConflict):
            await first.append("gone", events(3, 3))  # the log it knew is gone
        assert await seqs(second, "gone") == []
    finally:
        await first.close()
        await second.close()


async def test_stores_racing_for_one_session_never_break_density(
    backend: Backend, tmp_path: Path
) -> None:
    """Two nodes appending the same seqs at once: for each seq exactly one wins."""
    first, second = backend.make(tmp_path), backend.make(tmp_path)
    await first.open()
    await second.open()
    try:
        winners = []
        for seq in range(1, 31):
            results = await asyncio.gather(
                first.append("s", [event(seq, f"a{seq}")]),
                second.append("s", [event(seq, f"b{seq}")]),
                return_exceptions=True,
            )
            assert sum(r is None for r in results) == 1, results
            assert all(isinstance(r, SeqConflict) for r in results if r is not None)
            winners.append("a" if results[0] is None else "b")
        stored = await second.read_events("s", 0, 100)
        assert [e.seq for e in stored] == list(range(1, 31))
        assert [e.id[0] for e in stored] == winners
    finally:
        await first.close()
        await second.close()


# --- shares ----------------------------------------------------------------------------


async def test_share_create_get_delete_tombstone(store: Store) -> None:
    record = share()
    assert await store.get_share(record.id) is None
    assert not await store.is_tombstoned(record.id)
    await store.create_share(record)
    assert await store.get_share(record.id) == record
    assert await store.count_shares() == 1
    assert not await store.is_tombstoned(record.id)

    assert await store.delete_share(record.id) is True
    assert await store.get_share(record.id) is None
    assert await store.is_tombstoned(record.id)
    assert await store.count_shares() == 0
    assert await store.delete_share(record.id) is False
    assert await store.delete_share("never-existed") is False
    assert not await store.is_tombstoned("never-existed")


async def test_public_share_without_token_round_trips(store: Store) -> None:
    record = ShareRecord("pub", "", 1, None, "public", b"h", None, "e")
    await store.create_share(record)
    assert await store.get_share("pub") == record


async def test_delete_leaves_nothing_of_the_share(
    store: Store, backend: Backend, tmp_path: Path
) -> None:
    record, kept = share(), share()
    for r in (record, kept):
        await store.create_share(r)
        await store.append(r.id, events(1, 5))
        await store.save_snapshot(Snapshot(r.id, 5, b'{"messages":[]}'))
    assert await store.delete_share(record.id)

    assert await store.read_events(record.id, 0, 100) == []
    assert await store.last_seq(record.id) == 0
    assert await store.load_snapshot(record.id) is None
    assert await store.find_event_ids(record.id, ["e1"]) == {}
    assert await backend.leftovers(tmp_path, record.id) == {}  # the tombstone is a hash
    assert await store.is_tombstoned(record.id)
    assert await seqs(store, kept.id) == [1, 2, 3, 4, 5]
    assert await store.load_snapshot(kept.id) is not None


async def test_expired_shares(store: Store) -> None:
    now = 1_800_000_000_000
    await store.create_share(share("past", expires_at=now - 10))
    await store.create_share(share("now", expires_at=now))
    await store.create_share(share("future", expires_at=now + 1))
    await store.create_share(share("forever"))
    assert sorted(await store.expired_shares(now, 100)) == ["now", "past"]
    assert len(await store.expired_shares(now, 1)) == 1
    await store.delete_share("past")
    assert await store.expired_shares(now, 100) == ["now"]


# --- snapshots -------------------------------------------------------------------------


async def test_snapshot_newer_wins(store: Store) -> None:
    assert await store.load_snapshot("s") is None
    await store.save_snapshot(Snapshot("s", 5, b"five"))
    await store.save_snapshot(Snapshot("s", 3, b"three"))
    assert await store.load_snapshot("s") == Snapshot("s", 5, b"five")
    await store.save_snapshot(Snapshot("s", 5, b"five again"))
    assert await store.load_snapshot("s") == Snapshot("s", 5, b"five")
    await store.save_snapshot(Snapshot("s", 9, b"nine"))
    assert await store.load_snapshot("s") == Snapshot("s", 9, b"nine")
    assert await store.load_snapshot("t") is None


# --- lifecycle and durability ----------------------------------------------------------


async def test_close_is_idempotent_and_data_survives_reopen(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.make(tmp_path)
    await store.close()  # never opened
    await store.open()
    await store.open()
    await store.ping()
    pending = [asyncio.ensure_future(store.append(f"s{i}", events(1, 3))) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()  # finishes what was queued
    await store.close()
    await asyncio.gather(*pending)

    reopened = backend.make(tmp_path)
    await reopened.open()
    try:
        for i in range(50):
            assert await seqs(reopened, f"s{i}") == [1, 2, 3]
        await reopened.append("s0", events(4, 4))
        with pytest.raises(SeqConflict):
            await reopened.append("s1", events(1, 1))
    finally:
        await reopened.close()


CHILD = """
import asyncio, importlib.util, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("conformance", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["conformance"] = module
spec.loader.exec_module(module)
backend, path = module.BACKENDS[sys.argv[2]], Path(sys.argv[3])

async def write(store, session_id):
    seq = 0
    while True:
        n = 1 + seq % 3
        await store.append(session_id, module.events(seq + 1, seq + n))
        seq += n
        sys.stdout.write(f"{session_id} {seq}\\n")
        sys.stdout.flush()

async def main():
    store = backend.make(path)
    await store.open()
    await asyncio.gather(*(write(store, f"s{i}") for i in range(4)))

asyncio.run(main())
"""


async def test_sigkill_loses_no_acknowledged_event(backend: Backend, tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        __file__,
        backend.name,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    acked: dict[str, int] = {}

    def record(line: bytes) -> None:
        session_id, seq = line.split()
        assert int(seq) > acked.get(session_id.decode(), 0)
        acked[session_id.decode()] = int(seq)

    try:
        for _ in range(400):
            line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert line, "the writer exited early"
            record(line)
    finally:
        with contextlib.suppress(ProcessLookupError):  # already dead: a failure above
            os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    rest = await child.stdout.read()  # lines written after an ack, before the kill
    for line in rest.split(b"\n")[:-1]:  # the last piece may be cut short
        record(line)
    assert child.returncode == -signal.SIGKILL

    store = backend.make(tmp_path)
    await store.open()
    try:
        for session_id, last_acked in acked.items():
            stored = await seqs(store, session_id)
            assert stored == list(range(1, len(stored) + 1)), "gap or disorder"
            assert len(stored) >= last_acked, f"{session_id}: lost acked events"
    finally:
        await store.close()


async def test_list_shares_pages_by_id(store: Any) -> None:
    ids = sorted(f"share{i:02d}" for i in range(5))
    for share_id in ids:
        await store.create_share(_admin_share(share_id))
    first = await store.list_shares(3)
    assert [s.id for s in first] == ids[:3]
    rest = await store.list_shares(10, after=first[-1].id)
    assert [s.id for s in rest] == ids[3:]
    await store.delete_share(ids[0])
    assert [s.id for s in await store.list_shares(10)] == ids[1:]


def _admin_share(share_id: str) -> ShareRecord:
    return ShareRecord(share_id, "t", 1, None, "public", b"h" * 32, None, "e")


async def test_deleted_share_cannot_be_read_back_from_the_sqlite_files(tmp_path: Path) -> None:
    """Not a row, not a freed page, not a WAL frame: the raw bytes hold nothing of it.

    SQLite only: its files are ours. PostgreSQL's table files and WAL belong to the
    database server (VACUUM and WAL recycling erase deleted rows there); what the
    PostgreSQL store guarantees, no row left in any table, is
    test_delete_leaves_nothing_of_the_share.
    """
    store = SQLiteStore(tmp_path / "data" / "agentsync.db")
    await store.open()
    marker = "confidential-" + new_id(8)
    record, kept = share(), share()
    for r in (record, kept):
        await store.create_share(r)
    payload = [
        Event.make(i, NewEvent(f"e{i}", "status", 1, {"status": f"{marker}-{i}" * 20}))
        for i in range(1, 200)
    ]
    await store.append(record.id, payload)
    await store.save_snapshot(Snapshot(record.id, 199, orjson.dumps({"m": marker})))
    await store.append(kept.id, events(1, 3))

    def raw() -> bytes:
        files = sorted((tmp_path / "data").glob("agentsync.db*"))
        return b"".join(f.read_bytes() for f in files)

    assert marker.encode() in raw()
    assert await store.delete_share(record.id)
    for _ in range(100):  # the checkpointer truncates the WAL right after a delete
        if marker.encode() not in raw():
            break
        await asyncio.sleep(0.05)
    assert marker.encode() not in raw()
    assert record.id.encode() not in raw()
    assert await seqs(store, kept.id) == [1, 2, 3]
    await store.close()
    assert marker.encode() not in raw() and record.id.encode() not in raw()


# --- archiving -------------------------------------------------------------------------


async def test_archive_swaps_the_log_for_an_object_name(
    store: Store, backend: Backend, tmp_path: Path
) -> None:
    record, kept = share(), share()
    for r in (record, kept):
        await store.create_share(r)
        await store.append(r.id, events(1, 5))
        await store.save_snapshot(Snapshot(r.id, 5, b'{"at": 5}'))
    assert await store.archive_session(record.id, 5, "v5-abc.jsonl.gz")

    archived = await store.get_share(record.id)
    assert archived is not None and archived.archive == "v5-abc.jsonl.gz"
    assert archived == dataclasses.replace(record, archive="v5-abc.jsonl.gz")
    assert await store.read_events(record.id, 0, 100) == []
    assert await store.load_snapshot(record.id) is None
    assert await store.find_event_ids(record.id, ["e1"]) == {}
    left = await backend.leftovers(tmp_path, record.id)
    assert set(left) == {"shares"}, left  # the hot rows are gone, the share row stays
    assert await seqs(store, kept.id) == [1, 2, 3, 4, 5]
    # A second archive of the same session (another node) changes nothing.
    assert not await store.archive_session(record.id, 5, "v5-other.jsonl.gz")
    assert (await store.get_share(record.id)).archive == "v5-abc.jsonl.gz"  # type: ignore[union-attr]


async def test_archive_refuses_a_log_that_moved_on(store: Store) -> None:
    record = share()
    await store.create_share(record)
    await store.append(record.id, events(1, 5))
    assert not await store.archive_session(record.id, 4, "v4-x.jsonl.gz")  # behind
    assert not await store.archive_session(record.id, 6, "v6-x.jsonl.gz")  # ahead
    assert not await store.archive_session("unknown", 0, "v0-x.jsonl.gz")
    assert (await store.get_share(record.id)).archive is None  # type: ignore[union-attr]
    assert await seqs(store, record.id) == [1, 2, 3, 4, 5]


async def test_an_archived_session_refuses_appends_and_snapshots(store: Store) -> None:
    record = share()
    await store.create_share(record)
    await store.append(record.id, events(1, 3))
    assert await store.archive_session(record.id, 3, "v3-a.jsonl.gz")
    for batch in (events(4, 4), events(1, 1)):  # neither after the log nor a fresh log
        with pytest.raises(SessionArchived):
            await store.append(record.id, batch)
    await store.save_snapshot(Snapshot(record.id, 3, b"stale"))
    assert await store.load_snapshot(record.id) is None
    assert await store.read_events(record.id, 0, 10) == []


async def test_restore_puts_the_log_back_once(store: Store) -> None:
    record = share()
    await store.create_share(record)
    log = events(1, 4)
    await store.append(record.id, log)
    assert await store.archive_session(record.id, 4, "v4-a.jsonl.gz")
    snap = Snapshot(record.id, 4, b'{"at": 4}')
    assert not await store.restore_session(record.id, "v4-wrong.jsonl.gz", log, snap)
    assert await store.restore_session(record.id, "v4-a.jsonl.gz", log, snap)
    assert not await store.restore_session(record.id, "v4-a.jsonl.gz", log, snap)  # idempotent
    assert (await store.get_share(record.id)).archive is None  # type: ignore[union-attr]
    read = await store.read_events(record.id, 0, 100)
    assert [(e.seq, e.id, e.data) for e in read] == [(e.seq, e.id, e.data) for e in log]
    assert await store.load_snapshot(record.id) == snap
    assert await store.find_event_ids(record.id, ["e2", "e9"]) == {"e2": 2}
    with pytest.raises(SeqConflict):
        await store.append(record.id, [event(5, "e1")])  # a retried id is still known
    await store.append(record.id, events(5, 6))
    assert await seqs(store, record.id) == list(range(1, 7))


async def test_restore_of_a_deleted_share_does_nothing(
    store: Store, backend: Backend, tmp_path: Path
) -> None:
    record = share()
    await store.create_share(record)
    await store.append(record.id, events(1, 2))
    assert await store.archive_session(record.id, 2, "v2-a.jsonl.gz")
    assert await store.delete_share(record.id)
    snap = Snapshot(record.id, 2, b"{}")
    assert not await store.restore_session(record.id, "v2-a.jsonl.gz", events(1, 2), snap)
    assert await backend.leftovers(tmp_path, record.id) == {}
    assert await store.is_tombstoned(record.id)


async def test_archive_and_restore_in_one_group_with_appends(store: Store) -> None:
    """Queued together (one transaction of a group-committing backend), each job sees
    the ones before it: appends after the archive are refused, after the restore accepted."""
    record = share()
    await store.create_share(record)
    await store.append(record.id, events(1, 2))
    snap = Snapshot(record.id, 3, b"{}")
    log = events(1, 3)
    results = await asyncio.gather(
        store.append(record.id, events(3, 3)),
        store.archive_session(record.id, 3, "v3-a.jsonl.gz"),
        store.append(record.id, events(4, 4)),
        store.restore_session(record.id, "v3-a.jsonl.gz", log, snap),
        store.append(record.id, events(4, 4)),
        return_exceptions=True,
    )
    assert results[0] is None and results[1] is True
    assert isinstance(results[2], SessionArchived)
    assert results[3] is True and results[4] is None
    assert await seqs(store, record.id) == [1, 2, 3, 4]


async def test_an_archive_on_one_store_is_seen_by_the_other(
    backend: Backend, tmp_path: Path
) -> None:
    """Two nodes: once one archived, the other's appends are refused, not put on an
    empty log; and an archive that lost the race to an append is refused."""
    first, second = backend.make(tmp_path), backend.make(tmp_path)
    await first.open()
    await second.open()
    try:
        record = share()
        await first.create_share(record)
        await first.append(record.id, events(1, 3))
        await second.append(record.id, events(4, 4))  # the second's cache knows seq 4
        assert not await first.archive_session(record.id, 3, "v3-a.jsonl.gz")
        assert await first.archive_session(record.id, 4, "v4-a.jsonl.gz")
        with pytest.raises(SessionArchived):
            await second.append(record.id, events(5, 5))
        with pytest.raises(SessionArchived):
            await second.append(record.id, events(1, 1))
        snap = Snapshot(record.id, 4, b"{}")
        assert await second.restore_session(record.id, "v4-a.jsonl.gz", events(1, 4), snap)
        await first.append(record.id, events(5, 5))
        assert await seqs(second, record.id) == [1, 2, 3, 4, 5]
    finally:
        await first.close()
        await second.close()


async def test_idle_shares_follow_activity(store: Store) -> None:
    now = 1_800_000_000_000
    old, touched, archived = share(), share(), share()
    for r in (old, touched, archived):
        await store.create_share(r)  # created_at 1_700_000_000_000
    await store.append(archived.id, events(1, 1))
    assert await store.archive_session(archived.id, 1, "v1-a.jsonl.gz")
    await store.touch_share(touched.id, now)
    await store.touch_share(touched.id, now - 5)  # never moves back
    assert await store.idle_shares(now - 1, 100) == [old.id]
    assert sorted(await store.idle_shares(now, 100)) == sorted([old.id, touched.id])
    assert await store.idle_shares(now, 1) == [old.id]  # least recently active first
    assert await store.restore_session(
        archived.id, "v1-a.jsonl.gz", events(1, 1), Snapshot(archived.id, 1, b"{}")
    )
    recently = now_ms() - 60_000
    assert await store.idle_shares(recently, 100) == [old.id]  # restored: active now
