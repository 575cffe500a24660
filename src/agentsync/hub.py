"""The hub: session id -> live session. Loads on demand, evicts idle, fans out.

The hub is where the I/O-free :mod:`agentsync.session` core meets the store and the
connections. An append is prepared by the core (seqs assigned), stored durably, and only
then committed and fanned out, in the order prepared (the write paths are in
:mod:`agentsync.writes`). Fan-out encodes each batch once; readers that are parked and up
to date get the frame written straight to their socket, the others are woken and coalesce
what they missed into fewer frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import orjson

from agentsync import protocol
from agentsync.archive.base import Archive
from agentsync.archiver import Archiver, RestoringStore, initial_state
from agentsync.bus.base import Bus
from agentsync.config import Config
from agentsync.limits import ConnectionCounter, make_limiter
from agentsync.metrics import Metrics
from agentsync.protocol import (
    CLOSE_GONE,
    CLOSE_SERVER_SHUTDOWN,
    Event,
    Gone,
    NewEvent,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from agentsync.redact import Redactor
from agentsync.relay import Relay
from agentsync.session import Backlog, Prepared, Reader, Session
from agentsync.store.base import ShareRecord, Snapshot, Store
from agentsync.writes import Writes, load_tail

log = logging.getLogger("agentsync.hub")

GONE_MEMORY = 10_000


class ReaderLink(Protocol):
    """What the hub needs from one WebSocket reader's connection."""

    reader: Reader

    def push(self, payload: bytes, wire: bytes | None, end_seq: int) -> bool:
        """Write a frame now if the socket takes it without waiting; True when written."""

    def wake(self) -> None:
        """New events exist: the connection's own task catches up."""

    def send_presence(self, payload: bytes) -> None:
        """Best effort: presence is ephemeral and may be skipped for a busy socket."""

    def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AppendResult:
    seqs: list[int]
    last_seq: int
    epoch: str


@dataclass(eq=False)
class LiveSession:
    share: ShareRecord
    core: Session
    links: dict[str, ReaderLink] = field(default_factory=dict)
    # Resolved at each commit (and on delete) and replaced: SSE and long-poll wait on it.
    changed: asyncio.Future[None] = field(default_factory=lambda: _new_future())
    # Completion of the newest in-flight append: commits happen in the order prepared.
    tail: asyncio.Future[None] | None = None
    snapshot_seq: int = 0
    snapshotting: bool = False  # a snapshot save is in progress
    last_active: float = field(default_factory=time.monotonic)
    waiters: int = 0  # SSE and long-poll requests in progress
    gone: str | None = None  # why the share stopped serving (deleted / expired)
    prepare_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # see writes.py
    fanout_timer: asyncio.TimerHandle | None = None  # a scheduled fan-out round
    fanout_next: float = 0.0  # loop time before which no round starts (see Hub.fan_out)
    # Batches waiting for an exclusive append (with a bus; see writes.py).
    queued: list[tuple[Sequence[NewEvent], asyncio.Future[Prepared]]] = field(default_factory=list)
    # Named readers on other nodes: node id -> (monotonic expiry, participants).
    remote_participants: dict[str, tuple[float, list[dict[str, Any]]]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.share.id

    def expired(self, now_ms: int) -> bool:
        return self.share.expires_at is not None and self.share.expires_at <= now_ms

    def wait_changed(self) -> asyncio.Future[None]:
        return self.changed

    def signal(self) -> None:
        if not self.changed.done():
            self.changed.set_result(None)
        self.changed = _new_future()


def _new_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


class Hub:
    """Owns the live sessions of this node; the server's handlers call into it."""

    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        bus: Bus | None = None,
        shared_limits: Any | None = None,
        *,
        archive: Archive | None = None,
    ) -> None:
        self.config = config
        self.store = store  # the durable log and shares
        self.metrics = metrics
        # With an archive, idle sessions go cold and the store restores them on use.
        self.archiver = Archiver(self, store, archive) if archive is not None else None
        if self.archiver is not None:
            self.store = RestoringStore(store, self.archiver)
        self.sessions: dict[str, LiveSession] = {}
        self._loading: dict[str, asyncio.Future[LiveSession]] = {}
        # A Redis client when the cluster shares its rate limits (see limits.py).
        self.shared_limits = shared_limits
        self.write_limiter = make_limiter(
            config.rate_limit, config.rate_burst, "session write", shared_limits
        )
        self.readers_per_session = ConnectionCounter(
            config.max_connections_per_session, what="this session"
        )
        self.redactor = Redactor(enabled=config.redact)
        self.writes = Writes(self)  # the write paths: prepare, store, commit (writes.py)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Recently deleted or expired ids (the store keeps tombstones for good; this
        # closes the window while a delete commits).
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._closing = False
        # With a bus, other nodes write and read the same sessions (None: this node alone).
        self.relay = Relay(self, bus) if bus is not None else None

    # lifecycle

    async def start(self) -> None:
        await self.store.open()
        if self.archiver is not None:
            await self.archiver.start()
        if self.relay is not None:
            await self.relay.start()
        self.spawn(self._evict_loop())
        self.spawn(self._sweep_loop())

    @property
    def closing(self) -> bool:
        return self._closing

    def begin_shutdown(self) -> None:
        """Close every reader with a resumable code and end SSE and long-poll waits."""
        self._closing = True
        for live in list(self.sessions.values()):
            for link in list(live.links.values()):
                link.close(CLOSE_SERVER_SHUTDOWN, "server shutting down; resume from your seq")
            live.signal()

    async def stop(self) -> None:
        """Close readers with a resumable code, keep snapshots, close the store."""
        self.begin_shutdown()
        for live in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                if live.tail is not None:
                    await asyncio.wait_for(asyncio.shield(live.tail), 5)
                async with asyncio.timeout(5):
                    async with live.prepare_lock:  # an exclusive append in progress
                        pass
                await self._save_snapshot(live)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.relay is not None:
            await self.relay.stop()
        if self.shared_limits is not None:
            await self.shared_limits.aclose()
        await self.store.close()
        if self.archiver is not None:
            await self.archiver.stop()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, owned (and cancelled at stop) by the hub."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # loading

    async def get(self, session_id: str) -> LiveSession:
        """The live session, loaded on first use; raises NotFound or Gone."""
        live = self.sessions.get(session_id)
        if live is None:
            pending = self._loading.get(session_id)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._loading[session_id] = pending
                try:
                    live = await self._load(session_id)
                except BaseException as exc:
                    pending.set_exception(exc)
                    pending.exception()  # mark retrieved: only waiters care
                    raise
                else:
                    pending.set_result(live)
                finally:
                    del self._loading[session_id]
            else:
                live = await asyncio.shield(pending)
        if live.expired(protocol.now_ms()):
            await self.drop(live, "expired")
        if live.gone is not None:
            raise Gone(f"share {session_id} was {live.gone}")
        live.last_active = time.monotonic()
        return live

    def is_loaded_or_loading(self, session_id: str) -> bool:
        return session_id in self.sessions or session_id in self._loading

    async def _load(self, session_id: str) -> LiveSession:
        self._check_gone(session_id)
        if self.relay is None:
            return await self._read_session(session_id)
        # Subscribed first: whatever another node commits from now on is in what we read
        # below, or arrives on the bus afterwards (and is skipped when we hold it).
        await self.relay.subscribe(session_id)
        try:
            live = await self._read_session(session_id)
        except BaseException:
            self.relay.release(session_id)
            raise
        self.relay.loaded(session_id)
        return live

    async def get_share(self, session_id: str) -> ShareRecord:
        """The share's record, without loading its log (nor restoring an archived one):
        enough to check a credential. Raises NotFound or Gone, as ``get`` does."""
        if self.is_loaded_or_loading(session_id):
            return (await self.get(session_id)).share
        self._check_gone(session_id)
        share = await self.store.get_share(session_id)
        if share is None:
            await self._missing(session_id)
        if share.expires_at is not None and share.expires_at <= protocol.now_ms():
            raise Gone(f"share {session_id} was expired")
        return share

    async def _read_session(self, session_id: str) -> LiveSession:
        share = await self.store.get_share(session_id)
        if share is not None and share.archive is not None:
            share = await self._unarchive(share)
        if share is None:
            await self._missing(session_id)
        snap = await self.store.load_snapshot(session_id)
        state = initial_state(share, snap)
        core = Session(
            share.id,
            share.epoch,
            state,
            Backlog(self.config.backlog_events, self.config.backlog_bytes),
            all_ids_known=snap is None or snap.seq == 0,
        )
        await load_tail(self.store, session_id, core)
        self._check_gone(session_id)  # deleted while we were loading
        live = LiveSession(share, core, snapshot_seq=snap.seq if snap else 0)
        self.sessions[session_id] = live
        self.metrics.sessions.set(len(self.sessions))
        log.debug("loaded session %s at seq %d", session_id, core.last_seq)
        return live

    async def _unarchive(self, share: ShareRecord) -> ShareRecord | None:
        """The share once its archived log is back in the store (another node may be
        archiving it again meanwhile: a few rounds, then 503)."""
        for _ in range(3):
            if self.archiver is None:
                raise Unavailable(f"session {share.id} is archived, and no --archive is set")
            await self.archiver.restore(share.id)
            again = await self.store.get_share(share.id)
            if again is None or again.archive is None:
                return again
        raise Unavailable(f"session {share.id} is being archived; retry")

    async def _missing(self, session_id: str) -> NoReturn:
        """Raise for a share the store does not hold: Gone when it did once."""
        if await self.store.is_tombstoned(session_id):
            raise Gone(f"share {session_id} was deleted or has expired")
        raise NotFound(f"no share with id {session_id}")

    def _check_gone(self, session_id: str) -> None:
        why = self._gone.get(session_id)
        if why is not None:
            raise Gone(f"share {session_id} was {why}")

    # writing

    async def check_write(self, live: LiveSession, batch: Sequence[NewEvent]) -> None:
        """The rate limit (429); the size limit (413) is checked as events are encoded."""
        await self.write_limiter.acheck(live.id, float(len(batch)))

    async def append(
        self, live: LiveSession, batch: Sequence[NewEvent], *, rate_limited: bool = True
    ) -> AppendResult:
        """Store ``batch`` durably, then make it visible; returns one seq per event.

        ``rate_limited=False`` is for the server's own bulk writes (import).
        """
        if rate_limited:
            await self.check_write(live, batch)
        # Shielded: once the store has the batch, the commit and fan-out must happen even
        # if the client that sent it goes away.
        return await asyncio.shield(self._append(live, batch))

    async def _append(self, live: LiveSession, batch: Sequence[NewEvent]) -> AppendResult:
        started = time.perf_counter()
        core = live.core
        if core.last_seq + len(batch) > self.config.max_session_events:
            raise PayloadTooLarge(
                f"the session holds {core.last_seq} events and may hold at most "
                f"{self.config.max_session_events}; start a new share",
                code="session_full",
            )
        prepared = await self.writes.store(live, self.writes.redact(batch))
        stored = len(prepared.new_events)
        self.metrics.events_in.inc(stored)
        if stored < len(batch):
            self.metrics.events_duplicate.inc(len(batch) - stored)
        self.metrics.append_seconds.observe(time.perf_counter() - started)
        live.last_active = time.monotonic()
        if core.last_seq - live.snapshot_seq >= self.config.snapshot_every:
            self.spawn(self._save_snapshot(live))
        return AppendResult(prepared.seqs, core.last_seq, core.epoch)

    def fan_out(self, live: LiveSession) -> None:
        """New events are visible: wake pull readers, fan out to WebSocket readers.

        A round runs at once when the previous one ended long enough ago; otherwise it
        is scheduled for then, and every commit until then joins it. So an idle session
        delivers with no added latency, and a busy one spends at most about half its time
        writing to sockets and coalesces the rest into fewer, larger frames.
        """
        live.signal()
        if live.fanout_timer is not None or not live.links:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= live.fanout_next:
            self._fanout_round(live)
        else:
            live.fanout_timer = loop.call_at(live.fanout_next, self._fanout_round, live)

    def _fanout_round(self, live: LiveSession) -> None:
        live.fanout_timer = None
        started = time.perf_counter()
        core = live.core
        last = core.last_seq
        max_events = self.config.max_frame_events
        # Readers parked at the same cursor (nearly all of them) share one encoded frame.
        frames: dict[int, tuple[bytes, bytes, int] | None] = {}
        pushed = delivered = 0
        for link in live.links.values():
            reader = link.reader
            if reader.cursor >= last:
                continue
            if reader.idle:
                frame = frames.get(reader.cursor, ())
                if frame == ():
                    frame = frames[reader.cursor] = _wire_frame(core, reader.cursor, max_events)
                before = reader.cursor
                if frame and link.push(frame[0], frame[1], frame[2]):
                    pushed += 1
                    delivered += frame[2] - before
                    if frame[2] < last:  # more than one frame's worth: the link's task
                        link.wake()  # sends the rest
                    continue
            link.wake()
        if pushed:
            self.metrics.frames_sent.inc(pushed)
            self.metrics.events_out.labels("ws").inc(delivered)
        elapsed = time.perf_counter() - started
        live.fanout_next = asyncio.get_running_loop().time() + elapsed * self.config.fanout_pause

    async def _save_snapshot(self, live: LiveSession) -> None:
        core = live.core
        if core.last_seq <= live.snapshot_seq or core.in_flight or live.snapshotting:
            return
        live.snapshotting = True  # one save at a time, however many appends ask for one
        try:
            seq = core.last_seq
            state = orjson.dumps(core.snapshot())
            await self.store.save_snapshot(Snapshot(live.id, seq, state))
            live.snapshot_seq = max(live.snapshot_seq, seq)
        finally:
            live.snapshotting = False

    # reading

    async def catch_up_to(self, live: LiveSession, seq: int) -> LiveSession:
        """``live``, holding seq ``seq`` if the store does.

        Alone, a node holds every seq it acknowledged. With a bus, a reader may ask for a
        seq that another node acknowledged before its bus message reached this one (a
        client reading its own write through another node): the session is first caught
        up from the store, so that only a seq beyond the stored log is refused.
        """
        if self.relay is None or seq <= live.core.last_seq:
            return live
        await self.relay.catch_up(live, [])
        return await self.get(live.id)  # reloaded, should catching up have failed

    async def events_after(self, live: LiveSession, since: int, limit: int) -> list[Event]:
        """Committed events after ``since``: from memory when held, else from the store."""
        limit = max(1, min(limit, self.config.max_frame_events))
        if since >= live.core.last_seq:
            return []
        events = live.core.backlog.after(since, limit)
        if events is None:
            events = await self.store.read_events(live.id, since, limit)
            events = [e for e in events if e.seq <= live.core.last_seq]
        return events

    # readers and presence

    def attach(self, live: LiveSession, link: ReaderLink) -> None:
        """Start delivering to ``link``; announce it with ``broadcast_presence`` once the
        link has sent its greeting. Raises TooManyConnections past the session's cap."""
        self.readers_per_session.acquire(live.id)
        live.links[link.reader.id] = link
        live.core.attach(link.reader)
        self.metrics.connections.labels("ws").inc()

    def detach(self, live: LiveSession, link: ReaderLink) -> None:
        if live.links.pop(link.reader.id, None) is None:
            return
        self.readers_per_session.release(live.id)
        live.core.detach(link.reader)
        live.last_active = time.monotonic()
        self.metrics.connections.labels("ws").dec()
        self.broadcast_presence(live, left=link.reader)

    def local_participants(self, live: LiveSession) -> list[dict[str, Any]]:
        """The named readers connected to this node."""
        return [
            {"id": r.id, "name": r.name, "writer": r.can_write}
            for r in live.core.readers.values()
            if r.name is not None
        ]

    def participants(self, live: LiveSession) -> list[dict[str, Any]]:
        """Who is watching, on every node (other nodes' lists expire unless refreshed)."""
        out = self.local_participants(live)
        if live.remote_participants:
            now = time.monotonic()
            for node, (expires, remote) in list(live.remote_participants.items()):
                if expires < now:
                    del live.remote_participants[node]
                else:
                    out.extend(remote)
        return out

    def broadcast_presence(
        self, live: LiveSession, *, joined: Reader | None = None, left: Reader | None = None
    ) -> None:
        who = joined or left
        if who is None or who.name is None:
            return
        change = {"joined" if joined else "left": {"id": who.id, "name": who.name}}
        self.send_presence(live, change)
        if self.relay is not None:
            self.relay.publish_presence(live, change)

    def send_presence(self, live: LiveSession, change: dict[str, Any] | None) -> None:
        """A presence frame to this node's readers of the session."""
        frame = protocol.encode(
            {"op": "presence", "participants": self.participants(live), **(change or {})}
        )
        for link in live.links.values():
            link.send_presence(frame)

    # deletion, expiry, eviction

    async def drop(self, live: LiveSession, gone: str | None) -> None:
        """Unload a session; when ``gone`` is set it stops serving and readers are closed."""
        if self.sessions.get(live.id) is live:
            del self.sessions[live.id]
            self.metrics.sessions.set(len(self.sessions))
            if self.relay is not None:
                self.relay.release(live.id)
        live.gone = gone or live.gone
        code, reason = (
            (CLOSE_GONE, f"share was {gone}")
            if gone
            else (CLOSE_SERVER_SHUTDOWN, "session reloading; resume from your seq")
        )
        for link in list(live.links.values()):
            link.close(code, reason)
        live.signal()

    async def delete(self, session_id: str, why: str = "deleted") -> bool:
        """Delete a share everywhere; its readers are closed with 4510.

        The id is remembered as gone before the store is asked, so no request can load
        the share again while the delete commits, and the live session refuses new
        appends at once (appends already queued are committed, then deleted).
        """
        self._gone[session_id] = why
        while len(self._gone) > GONE_MEMORY:
            self._gone.popitem(last=False)
        live = self.sessions.get(session_id)
        if live is not None:
            live.gone = why
        existed = await self.store.delete_share(session_id)
        if self.archiver is not None:
            await self.archiver.forget(session_id)
        if live is not None:
            await self.drop(live, why)
        if self.relay is not None:
            self.relay.publish_ended(session_id, why)
        return existed

    async def end_here(self, session_id: str, why: str) -> None:
        """Another node deleted the share (or saw it expire): stop serving it here."""
        self._gone[session_id] = why
        while len(self._gone) > GONE_MEMORY:
            self._gone.popitem(last=False)
        live = self.sessions.get(session_id)
        if live is not None:
            await self.drop(live, why)

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, max(0.05, self.config.idle_evict_seconds / 2)))
            await self.evict_idle()

    async def evict_idle(self) -> None:
        cutoff = time.monotonic() - self.config.idle_evict_seconds
        for live in list(self.sessions.values()):
            busy = live.tail is not None or live.prepare_lock.locked()
            if live.links or live.waiters or busy or live.last_active > cutoff:
                continue
            try:
                await self._save_snapshot(live)
            except Exception:
                log.exception("snapshot of %s failed; keeping it loaded", live.id)
                continue
            if not live.links and not live.waiters and live.tail is None:
                await self.drop(live, None)
                if self.archiver is not None:  # idle from now: archived after --archive-after
                    with contextlib.suppress(Exception):  # at worst archived a bit early
                        await self.store.touch_share(live.id, protocol.now_ms())
        if self.archiver is not None:
            try:
                await self.archiver.archive_idle()
            except Exception as exc:
                log.warning("archiving idle sessions failed: %s", exc)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_seconds)
            try:
                await self.sweep_expired()
            except Exception:
                log.exception("expiry sweep failed")

    async def sweep_expired(self) -> int:
        expired = await self.store.expired_shares(protocol.now_ms(), 500)
        for share_id in expired:
            await self.delete(share_id, "expired")
            log.info("share %s expired and was deleted", share_id)
        return len(expired)


def _wire_frame(core: Session, cursor: int, max_events: int) -> tuple[bytes, bytes, int] | None:
    """The next frame for readers at ``cursor``: payload, serialized frame, end seq."""
    try:
        frame = core.frame_after(cursor, max_events)
    except LookupError:
        return None  # behind the backlog: each such reader's own task reads the store
    if frame is None:
        return None
    payload, end = frame
    return payload, protocol.ws_text_frame(payload), end
