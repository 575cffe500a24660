"""The hub's side of the Archive: idle sessions go cold, and come back when used.

Theory of operation (the guarantees of SPEC §2 hold across an archive and a restore):

* Archiving a session (``archive_session``) reads its log and snapshot from the store,
  encodes the whole log plus the snapshot at its last seq into one object under a name
  never used before, puts it, reads it back and checks it byte for byte and by decoding
  it, and only then asks the store to swap the hot rows for the object's name. The store
  does that only if the log still ends at the seq that was archived (compare and set, under
  the session's lock): a write that slipped in meanwhile, through any node, wins, and the
  object is discarded. Hot rows are never deleted before a verified copy exists.
* While archived, the store refuses every append (SessionArchived), so no event can get
  seq 1 of an empty log. :class:`RestoringStore`, the store the hub uses, turns that
  refusal into a restore and appends again; a read of seqs the archive holds restores too.
  ``Hub._read_session`` restores before loading. Either way the restore puts the whole log
  back with its event ids, so retries keep their original seqs (SPEC §2.3), and the epoch
  is kept: the log is the same log.
* Restores are idempotent and race-free: the store restores only the object it recorded,
  once; a second node's restore of the same object finds the mark gone and does nothing.
* Memory holds a page of the log, never the whole of it: archiving encodes the log into
  a spooled temporary file (in memory while small, then on disk) a page at a time and
  uploads it from there; a restore downloads the object the same way, checks it whole,
  then reads it again as the store inserts it, in one transaction.
* Deleting a share deletes the store rows first (it is gone at once, whatever the object
  store does), then every object of the session; an unreachable archive is retried in
  the background. A share is deleted from its record: an archived log is not restored
  to be deleted (``Hub.get_share``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson

from agentsync.archive.base import (
    Archive,
    ArchiveCorrupt,
    ArchiveReader,
    ArchiveWriter,
    new_name,
    seq_of,
)
from agentsync.protocol import Event, Unavailable, now_ms
from agentsync.session import SessionState
from agentsync.store.base import SessionArchived, ShareRecord, Snapshot, Store

if TYPE_CHECKING:
    from agentsync.hub import Hub

log = logging.getLogger("agentsync.archive")

READ_PAGE = 5000
SPOOL_BYTES = 8 << 20  # an archive object is held in memory up to this size, then on disk
COPY_CHUNK = 1 << 20
SWEEP_LIMIT = 100  # sessions archived per sweep, at most
DELETE_TIMEOUT = 10.0  # seconds a share's delete waits for the object store
DELETE_RETRIES = 12  # background attempts after that, 2 s to ~1 h apart


def initial_state(share: ShareRecord, snapshot: Snapshot | None) -> SessionState:
    """The state a session's log is folded onto: its snapshot, or its bare share."""
    if snapshot is not None:
        return SessionState.from_json(orjson.loads(snapshot.state))
    return SessionState(
        {
            "id": share.id,
            "title": share.title,
            "created_at": share.created_at,
            "expires_at": share.expires_at,
            "read": share.read,
        }
    )


def share_fields(share: ShareRecord) -> dict[str, Any]:
    """What the archive keeps of the share row: enough to rebuild it (hashes only)."""
    return {
        "id": share.id,
        "title": share.title,
        "created_at": share.created_at,
        "expires_at": share.expires_at,
        "read": share.read,
        "secret_hash": share.secret_hash.hex(),
        "read_token_hash": share.read_token_hash.hex() if share.read_token_hash else None,
        "epoch": share.epoch,
    }


class Archiver:
    def __init__(self, hub: Hub, store: Store, archive: Archive) -> None:
        self.hub = hub
        self.store = store  # the hub's store itself, not the RestoringStore around it
        self.archive = archive
        self._restores: dict[str, asyncio.Future[bool]] = {}

    async def start(self) -> None:
        await self.archive.open()

    async def stop(self) -> None:
        await self.archive.close()

    # archiving

    async def archive_idle(self, limit: int = SWEEP_LIMIT) -> int:
        """Archive the sessions idle for ``--archive-after`` that this node does not hold."""
        cutoff = now_ms() - int(self.hub.config.archive_after * 1000)
        archived = 0
        for session_id in await self.store.idle_shares(cutoff, limit):
            if self.hub.is_loaded_or_loading(session_id):
                continue
            try:
                archived += await self.archive_session(session_id)
            except Exception as exc:
                log.warning("archiving session %s failed, will retry: %s", session_id, exc)
        return archived

    async def archive_session(self, session_id: str) -> bool:
        """Move one session's log to the archive; False when there was nothing to do or
        another write came first (see the module docstring)."""
        started = time.perf_counter()
        share = await self.store.get_share(session_id)
        if share is None or share.archive is not None:
            return False
        snapshot = await self.store.load_snapshot(session_id)
        state = initial_state(share, snapshot)
        with (
            tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool,
            ArchiveWriter(spool, session_id, share.epoch, share_fields(share)) as writer,
        ):
            last_seq = 0
            while True:
                page = await self.store.read_events(session_id, last_seq, READ_PAGE)
                for event in page:
                    if event.seq != last_seq + 1:
                        raise Unavailable(f"session {session_id}: the stored log has a gap")
                    last_seq = event.seq
                    if event.seq > state.seq:
                        state.apply(event)
                await asyncio.to_thread(writer.add, [e.encoded for e in page])
                if len(page) < READ_PAGE:
                    break
            if last_seq == 0 or state.seq != last_seq:
                # Nothing worth archiving, or written meanwhile (a newer snapshot): later.
                await self.store.touch_share(session_id, now_ms())
                return False
            await asyncio.to_thread(writer.finish, state.to_json(share.epoch))
            size, digest = await asyncio.to_thread(_measure, spool)
            name = new_name(last_seq)
            await self.archive.put_file(session_id, name, spool)
        verified = False
        try:
            await self._verify(session_id, name, digest)
            verified = True
        finally:
            if not verified:
                await self._discard(session_id, name)
        # Should this raise, the store may or may not have committed: keep the object.
        if not await self.store.archive_session(session_id, last_seq, name):
            await self._discard(session_id, name)
            await self.store.touch_share(session_id, now_ms())
            log.info("session %s was written or restored meanwhile; not archived", session_id)
            return False
        self.hub.metrics.sessions_archived.inc()
        log.info(
            "archived session %s: %d events, %d bytes as %s in %.2fs",
            session_id,
            last_seq,
            size,
            name,
            time.perf_counter() - started,
        )
        return True

    async def _verify(self, session_id: str, name: str, digest: str) -> None:
        """Read a new object back: the bytes put, and a whole log; else ArchiveCorrupt."""
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as back:
            found = await self.archive.get_file(session_id, name, back)
            if not found or (await asyncio.to_thread(_measure, back))[1] != digest:
                raise ArchiveCorrupt(f"object {name} of {session_id} reads back different")
            await asyncio.to_thread(_check, back)

    async def _discard(self, session_id: str, name: str) -> None:
        try:
            await self.archive.delete(session_id, name)
        except Exception as exc:
            log.warning("could not delete unused archive object %s/%s: %s", session_id, name, exc)

    # restoring

    async def restore(self, session_id: str) -> bool:
        """Put an archived session's log back in the store; False when it was not archived
        (or another node restored it first). Raises Unavailable when the archive cannot
        give back the object the store names: the session is then unreadable, never empty."""
        pending = self._restores.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._restores[session_id] = pending
        try:
            done = await self._restore(session_id)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: only concurrent callers care
            raise
        else:
            pending.set_result(done)
            return done
        finally:
            del self._restores[session_id]

    async def _restore(self, session_id: str) -> bool:
        started = time.perf_counter()
        share = await self.store.get_share(session_id)
        if share is None or share.archive is None:
            return False
        name = share.archive
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
            if not await self.archive.get_file(session_id, name, spool):
                log.error("archive object %s of session %s is missing", name, session_id)
                raise Unavailable(f"the archive of session {session_id} cannot be read")
            try:
                # Checked whole before the store is touched; then read again, a page at a
                # time, as the store inserts it.
                archived = await asyncio.to_thread(_check, spool)
                if archived.session_id != session_id or archived.last_seq != seq_of(name):
                    raise ArchiveCorrupt("the object holds another session or another log")
            except (ArchiveCorrupt, ValueError) as exc:
                log.error("archive object %s of session %s is unusable: %s", name, session_id, exc)
                raise Unavailable(f"the archive of session {session_id} is damaged") from exc
            state = orjson.dumps(archived.snapshot)
            snapshot = Snapshot(session_id, archived.last_seq, state)
            with await asyncio.to_thread(_reopen, spool) as reader:
                events = reader.events()
                if not await self.store.restore_session(session_id, name, events, snapshot):
                    return False
        self.hub.metrics.sessions_restored.inc()
        log.info(
            "restored session %s: %d events from %s in %.2fs",
            session_id,
            archived.last_seq,
            name,
            time.perf_counter() - started,
        )
        await self._discard(session_id, name)  # the store holds the log again
        return True

    async def is_archived(self, session_id: str) -> str | None:
        share = await self.store.get_share(session_id)
        return None if share is None else share.archive

    # deleting

    async def forget(self, session_id: str) -> None:
        """Delete every archive object of a deleted share; retried in the background."""
        try:
            await asyncio.wait_for(self.archive.delete_session(session_id), DELETE_TIMEOUT)
        except Exception as exc:
            log.warning("deleting the archive of %s failed (%s); retrying", session_id, exc)
            self.hub.spawn(self._forget_later(session_id))

    async def _forget_later(self, session_id: str) -> None:
        delay = 2.0
        for _ in range(DELETE_RETRIES):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 600.0)
            try:
                await asyncio.wait_for(self.archive.delete_session(session_id), DELETE_TIMEOUT)
            except Exception as exc:
                log.warning("deleting the archive of %s failed again: %s", session_id, exc)
            else:
                log.info("deleted the archive of %s", session_id)
                return
        log.error("the archive of deleted share %s is left behind: delete it by hand", session_id)


def _measure(spool: IO[bytes]) -> tuple[int, str]:
    """The size and SHA-256 of a file's bytes, read a part at a time; rewound after."""
    spool.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := spool.read(COPY_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    spool.seek(0)
    return size, digest.hexdigest()


def _check(spool: IO[bytes]) -> ArchiveReader:
    """Read a whole archive object from a file, keeping nothing of the log; raises
    ArchiveCorrupt. The reader's ``last_seq`` and ``snapshot`` are then set."""
    with _reopen(spool) as reader:
        return reader.check()


def _reopen(spool: IO[bytes]) -> ArchiveReader:
    spool.seek(0)
    return ArchiveReader(spool)


class RestoringStore:
    """The Store the hub uses when archiving is on: the real one, restoring archived
    sessions on the way (see the module docstring). Everything else passes through."""

    def __init__(self, inner: Store, archiver: Archiver) -> None:
        self.inner = inner
        self.archiver = archiver

    def __getattr__(self, name: str) -> Any:  # backend extras (``commits``) pass through
        return getattr(self.inner, name)

    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        try:
            await self.inner.append(session_id, events)
        except SessionArchived:
            await self.archiver.restore(session_id)
            await self.inner.append(session_id, events)  # SeqConflict as usual, if raced

    async def read_events(self, session_id: str, after_seq: int, limit: int) -> list[Event]:
        events = await self.inner.read_events(session_id, after_seq, limit)
        if not events:
            name = await self.archiver.is_archived(session_id)
            if name is not None and after_seq < seq_of(name):
                await self.archiver.restore(session_id)
                events = await self.inner.read_events(session_id, after_seq, limit)
        return events

    async def last_seq(self, session_id: str) -> int:
        last = await self.inner.last_seq(session_id)
        if last == 0:
            name = await self.archiver.is_archived(session_id)
            if name is not None:
                return seq_of(name)
        return last

    # pass-through

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    async def create_share(self, share: ShareRecord) -> None:
        await self.inner.create_share(share)

    async def get_share(self, share_id: str) -> ShareRecord | None:
        return await self.inner.get_share(share_id)

    async def is_tombstoned(self, share_id: str) -> bool:
        return await self.inner.is_tombstoned(share_id)

    async def delete_share(self, share_id: str) -> bool:
        return await self.inner.delete_share(share_id)

    async def expired_shares(self, now_ms: int, limit: int) -> list[str]:
        return await self.inner.expired_shares(now_ms, limit)

    async def list_shares(self, limit: int, after: str | None = None) -> list[ShareRecord]:
        return await self.inner.list_shares(limit, after)

    async def count_shares(self) -> int:
        return await self.inner.count_shares()

    async def touch_share(self, share_id: str, now_ms: int) -> None:
        await self.inner.touch_share(share_id, now_ms)

    async def idle_shares(self, before_ms: int, limit: int) -> list[str]:
        return await self.inner.idle_shares(before_ms, limit)

    async def find_event_ids(self, session_id: str, ids: Sequence[str]) -> dict[str, int]:
        return await self.inner.find_event_ids(session_id, ids)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self.inner.save_snapshot(snapshot)

    async def load_snapshot(self, session_id: str) -> Snapshot | None:
        return await self.inner.load_snapshot(session_id)

    async def archive_session(self, session_id: str, last_seq: int, archive: str) -> bool:
        return await self.inner.archive_session(session_id, last_seq, archive)

    async def restore_session(
        self, session_id: str, archive: str, events: Iterable[Event], snapshot: Snapshot
    ) -> bool:
        return await self.inner.restore_session(session_id, archive, events, snapshot)
