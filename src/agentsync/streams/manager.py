"""This node's live Durable Streams: metadata cache, waiting readers, access times.

Theory of operation:

* The store is the authority. Every state this node holds of a stream came from a store
  job, applied by the store's listener in commit order (store.py), and a cache miss loads
  through the same ordered queue: so the cache never runs behind what a caller of this
  node has been told, and reads-your-writes holds. Only a path with no row at all is
  told apart by a plain read first (``_first_load``), so lookups of missing paths take
  no writer job.
* Long-poll and SSE readers wait on a stream's ``changed`` future, signalled whenever its
  tail, closure or existence changes. An entry with waiters is never evicted.
* On a store several nodes share (``store.shared``: PostgreSQL), other nodes' commits reach
  no listener here: every ``get`` re-loads the entry (so a stream closed or deleted
  elsewhere is never served from the cache), and waiting readers re-load it when told
  to; each load goes through the ordered queue like any other. With the Redis bus
  (``signals``: the hub's Relay), a node that writes a stream publishes its new tail on
  the stream's channel, which a node subscribes to when a reader first waits on the
  stream (then re-loads once, for what was written before the subscription); a notice
  that may be missing (the bus reconnected) re-loads every waited-on stream. Without a
  bus, and as a backstop for lost notices, waiting readers re-load every
  ``SHARED_POLL_SECONDS`` (``SIGNALLED_POLL_SECONDS`` once subscribed).
* The sliding TTL is renewed by every read and write (not HEAD). Reads renew it in
  memory (``accessed_ms``), passed to every write job, which decides expiry on the later
  of it and the stored time; the stored time is brought forward by a ``touch`` job at most
  once per a quarter of the TTL (capped at a minute), on eviction and at shutdown, so a
  read costs no write. Expired streams answer 404 and are removed on first access or by
  the sweeper (410 and soft-deleted instead, while forks hold references on them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any, Final, Protocol

from agentsync.config import Config
from agentsync.metrics import Metrics
from agentsync.protocol import Unavailable, now_ms
from agentsync.streams import forks, rules
from agentsync.streams.rules import AppendRequest, CreateRequest, Duplicate, StreamState, Write
from agentsync.streams.store import Appended, Created, StreamStore

log = logging.getLogger("agentsync.streams")

MAX_ENTRIES: Final = 10_000  # streams whose metadata this node keeps in memory
MAX_TOUCH_INTERVAL_MS: Final = 60_000
# An entry is evicted only when unused this long, so that a request holding it (between
# get() and starting to wait) is never left waiting on an entry the store no longer feeds.
MIN_IDLE_BEFORE_EVICTION: Final = 60.0
SWEEP_BATCH: Final = 500
# On a store other nodes write too (``store.shared``), a waiting reader re-loads the stream
# this often: their commits reach no listener of this node.
SHARED_POLL_SECONDS: Final = 0.15
Units = list[tuple[int, bytes]]  # (seq, unit) in seq order
SIGNALLED_POLL_SECONDS: Final = 5.0  # the same, when the bus tells of other nodes' writes


class StreamSignals(Protocol):
    """What the manager needs of the bus (the hub's Relay provides it)."""

    async def subscribe_stream(self, path: str) -> None: ...

    def release_stream(self, path: str) -> None: ...

    def publish_stream(self, path: str, tail: int) -> None:
        """Tell the other nodes the stream changed (``tail`` -1: it is gone)."""


class LiveStream:
    """One stream path as this node knows it (``state`` None: no stream there)."""

    __slots__ = (
        "accessed_ms",
        "changed",
        "last_used",
        "loading",
        "path",
        "state",
        "subscribed",
        "touching",
        "waiters",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.state: StreamState | None = None
        self.accessed_ms = 0  # the latest read or write seen by this node
        self.changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters = 0  # long-poll and SSE readers waiting on ``changed``
        self.loading: asyncio.Future[StreamState | None] | None = None
        self.touching = False
        self.last_used = time.monotonic()  # a request may still hold it for a moment
        self.subscribed = False  # to its bus channel (see StreamSignals)

    def signal(self) -> None:
        if not self.changed.done():
            self.changed.set_result(None)
        self.changed = asyncio.get_running_loop().create_future()

    @property
    def dirty(self) -> bool:
        """Accessed since the stored access time, and the stream has a sliding TTL."""
        state = self.state
        return (
            state is not None
            and state.ttl_seconds is not None
            and self.accessed_ms > state.accessed_at
        )


class StreamManager:
    """Owns this node's :class:`LiveStream` entries; the HTTP edge calls into it."""

    def __init__(
        self, config: Config, store: StreamStore | None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.store = store  # None: this node's store has no streams backend yet
        self.metrics = metrics or Metrics()
        self.entries: OrderedDict[str, LiveStream] = OrderedDict()  # least recent first
        self.metrics.streams_cached.set_function(lambda: len(self.entries))
        appends = self.metrics.stream_appends
        self._counted = {
            Write: appends.labels("written"),
            Duplicate: appends.labels("duplicate"),
        }
        self._refused = appends.labels("refused")
        self.closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Other nodes write the same streams: cached metadata is re-loaded on every use.
        self.shared = bool(getattr(store, "shared", False))
        self.signals: StreamSignals | None = None  # set when nodes share a bus
        self._notices: dict[str, int] = {}  # path -> tail, published at the end of the turn
        self._reads: dict[tuple[int, int, int, int], asyncio.Future[Units]] = {}
        if store is not None:
            store.observe(self._apply)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is None:
            return
        await self.store.open()
        self._spawn(self._sweep_loop())

    def begin_shutdown(self) -> None:
        """End every long-poll and SSE wait (readers resume from their offsets)."""
        self.closing = True
        for live in self.entries.values():
            live.signal()

    async def stop(self) -> None:
        """End waits, persist access times, stop the sweeper; before the store closes."""
        self.begin_shutdown()
        if self.store is not None:
            for live in list(self.entries.values()):
                state = live.state
                if live.dirty and state is not None:
                    with contextlib.suppress(Exception):
                        await self.store.touch(live.path, state.id, live.accessed_ms)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _require(self) -> StreamStore:
        if self.store is None:
            raise Unavailable("this node's store has no Durable Streams backend")
        return self.store

    # -- the cache ----------------------------------------------------------------------

    def _apply(self, path: str, state: StreamState | None) -> None:
        """The store's listener: a committed job's resulting state, in commit order."""
        live = self.entries.get(path)
        if live is None:
            return  # not cached: a later load is ordered after this job
        old = live.state
        live.state = state
        if (
            old is None
            or state is None
            or old.id != state.id
            or old.tail != state.tail
            or old.closed != state.closed
            or old.deleted != state.deleted
        ):
            live.signal()

    async def get(self, path: str) -> LiveStream:
        """The entry of ``path`` (its ``state`` may be None), loaded on first use."""
        store = self._require()
        live = self.entries.get(path)
        if live is None:
            live = LiveStream(path)
            self.entries[path] = live
            live.loading = asyncio.ensure_future(_first_load(store, path))
            self._evict()
        elif self.shared and live.loading is None:
            live.loading = asyncio.ensure_future(store.load(path))
        loading = live.loading
        if loading is not None:
            try:
                await asyncio.shield(loading)
            except BaseException:
                if self.entries.get(path) is live and live.state is None:
                    del self.entries[path]
                raise
            finally:
                if loading.done() and live.loading is loading:
                    live.loading = None
        self.entries.move_to_end(path)
        live.last_used = time.monotonic()
        return live

    async def current(self, path: str) -> tuple[LiveStream, StreamState]:
        """The stream at ``path``; 404 when there is none or it has expired, 410 when it
        is soft-deleted (deleted or expired while forks read through it)."""
        live = await self.get(path)
        state = live.state
        if state is not None and not state.deleted:
            now = now_ms()
            if state.expired(now, live.accessed_ms):
                store = self._require()
                await store.delete_expired(path, state.id, now, live.accessed_ms)
                state = live.state  # retired (removed or soft-deleted), or alive after all
        if state is None:
            # Not kept: lookups of paths that do not exist (a scan, a typo in a loop)
            # would otherwise fill the cache, whose entries are evicted only when idle.
            if self.entries.get(path) is live and not live.waiters and live.loading is None:
                del self.entries[path]
            raise rules.not_found(path)
        if state.deleted:
            raise rules.gone(path)
        return live, state

    def accessed(self, live: LiveStream) -> None:
        """A read: renew the sliding TTL in memory, and in the store now and then."""
        now = now_ms()
        live.accessed_ms = max(live.accessed_ms, now)
        state = live.state
        if state is None or state.ttl_seconds is None or live.touching:
            return
        interval = min(state.ttl_seconds * 1000 // 4, MAX_TOUCH_INTERVAL_MS)
        if now - state.accessed_at >= interval:
            live.touching = True
            self._spawn(self._touch(live, state.id))

    async def _touch(self, live: LiveStream, stream_id: int) -> None:
        try:
            await self._require().touch(live.path, stream_id, live.accessed_ms)
        except Exception as exc:
            log.warning("persisting the access time of stream %r failed: %s", live.path, exc)
        finally:
            live.touching = False

    def _evict(self) -> None:
        if len(self.entries) <= MAX_ENTRIES:
            return
        idle_since = time.monotonic() - MIN_IDLE_BEFORE_EVICTION
        for path, live in list(self.entries.items()):
            if len(self.entries) <= MAX_ENTRIES or live.last_used > idle_since:
                break  # least recently used first: the rest are in use too
            if live.waiters or live.loading is not None or live.touching:
                continue
            del self.entries[path]
            if live.dirty and live.state is not None:
                self._spawn(self._touch(live, live.state.id))
            if live.subscribed and self.signals is not None:
                self.signals.release_stream(path)

    # -- writes -------------------------------------------------------------------------

    def _hint(self, path: str) -> int:
        live = self.entries.get(path)
        return live.accessed_ms if live is not None else 0

    def _wrote(self, path: str, when: int) -> None:
        live = self.entries.get(path)
        if live is not None:
            live.accessed_ms = max(live.accessed_ms, when)

    async def create(self, path: str, req: CreateRequest) -> Created:
        now = now_ms()
        source_hint = 0 if req.fork is None else self._hint(req.fork.source)
        created = await self._require().create(path, req, now, self._hint(path), source_hint)
        self._wrote(path, now)
        self._notice(path, created.state.tail)
        return created

    async def append(self, path: str, req: AppendRequest) -> Appended:
        return await self.append_soon(path, req)

    def append_soon(self, path: str, req: AppendRequest) -> asyncio.Future[Appended]:
        """:meth:`append` as the store's future, for callers that answer from a done
        callback (the HTTP protocol's append path); the cache and metrics are updated
        by a callback registered first, so they are current when the caller's runs."""
        now = now_ms()
        future = self._require().append(path, req, now, self._hint(path))
        future.add_done_callback(lambda done: self._appended(path, now, done))
        return future

    def _appended(self, path: str, now: int, done: asyncio.Future[Appended]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            if isinstance(error, rules.StreamError):
                self._refused.inc()
            return
        appended = done.result()
        self._counted[type(appended.outcome)].inc()
        self._wrote(path, now)
        self._notice(path, appended.state.tail)

    async def delete(self, path: str) -> None:
        """Raises StreamError 404 or 410 (see :meth:`StreamStore.delete`)."""
        await self._require().delete(path, now_ms(), self._hint(path))
        self._notice(path, -1)

    # -- other nodes (the bus) ----------------------------------------------------------

    def _notice(self, path: str, tail: int) -> None:
        """Tell other nodes of a write here; one notice per stream and loop turn."""
        if self.signals is None:
            return
        if not self._notices:
            asyncio.get_running_loop().call_soon(self._publish_notices)
        self._notices[path] = tail

    def _publish_notices(self) -> None:
        notices, self._notices = self._notices, {}
        if self.signals is not None:
            for path, tail in notices.items():
                self.signals.publish_stream(path, tail)

    def subscribed(self, path: str) -> bool:
        live = self.entries.get(path)
        return live is not None and live.subscribed

    def on_signal(self, path: str, payload: bytes) -> None:
        """Another node (or this one, echoed) wrote ``path``: waiting readers re-load it."""
        live = self.entries.get(path)
        if live is None or not live.waiters:
            return
        try:
            tail = int(payload)
        except ValueError:
            tail = -1
        if not self._knows(live, tail):
            self._spawn(self._catch_up(live, tail))

    @staticmethod
    def _knows(live: LiveStream, tail: int) -> bool:
        state = live.state
        return state is not None and 0 <= tail <= state.tail  # e.g. our own notice, echoed

    async def _catch_up(self, live: LiveStream, tail: int) -> None:
        """Re-load until the entry holds ``tail`` (-1: whatever is there now): a load
        already under way may have read the store before that write."""
        while (loading := live.loading) is not None and not loading.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(loading)
        if not self._knows(live, tail):
            await self._reload(live)

    def resync(self) -> None:
        """The bus reconnected: notices may be lost, so re-load every waited-on stream."""
        for live in list(self.entries.values()):
            if live.waiters:
                self._spawn(self._reload(live))

    async def _subscribe(self, live: LiveStream) -> None:
        """Subscribe to the stream's notices before waiting on it; then re-load once, for
        what was written before the subscription took effect."""
        if live.subscribed or self.signals is None:
            return
        live.subscribed = True
        try:
            await self.signals.subscribe_stream(live.path)
        except Exception as exc:
            live.subscribed = False
            log.warning("subscribing to stream %r on the bus failed: %s", live.path, exc)
            return
        await self._reload(live)

    # -- reads --------------------------------------------------------------------------

    async def read_units(self, state: StreamState, after: int, up_to: int, max_bytes: int) -> Units:
        """The units of ``state`` after ``after`` up to ``up_to`` (at most ``max_bytes``, at
        least one). Readers asking the same at once (every SSE reader woken by an append
        asks for just that append) share one read of the store; don't change the list."""
        key = (state.id, after, up_to, max_bytes)
        read = self._reads.get(key)
        if read is None:
            pieces = forks.segments(state, after, up_to)
            read = asyncio.ensure_future(self._require().read_units(pieces, max_bytes))
            self._reads[key] = read
            read.add_done_callback(lambda done: self._read_done(key, done))
        return await asyncio.shield(read)

    def _read_done(self, key: tuple[int, int, int, int], done: asyncio.Future[Units]) -> None:
        self._reads.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: every reader may have gone away meanwhile

    # -- waiting ------------------------------------------------------------------------

    async def wait_beyond(self, live: LiveStream, seq: int, seconds: float) -> bool:
        """Wait until the stream holds more than ``seq`` units, closes, goes away (or is
        soft-deleted) or the node shuts down (True), or ``seconds`` pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        live.waiters += 1
        try:
            if self.shared:
                await self._subscribe(live)
            while True:
                state = live.state
                if (
                    state is None
                    or state.deleted
                    or state.tail > seq
                    or state.closed
                    or self.closing
                ):
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                step = remaining
                if self.shared:
                    poll = SIGNALLED_POLL_SECONDS if live.subscribed else SHARED_POLL_SECONDS
                    step = min(remaining, poll)
                try:
                    await asyncio.wait_for(asyncio.shield(live.changed), step)
                except TimeoutError:
                    if not self.shared:
                        return False
                    await self._reload(live)
        finally:
            live.waiters -= 1

    async def _reload(self, live: LiveStream) -> None:
        """Load the stream again (the listener applies it and signals a change), sharing
        the load with the node's other readers of it."""
        loading = live.loading
        if loading is None:
            loading = live.loading = asyncio.ensure_future(self._require().load(live.path))
        try:
            await asyncio.shield(loading)
        except Exception as exc:
            log.warning("re-loading stream %r failed: %s", live.path, exc)
        finally:
            if loading.done() and live.loading is loading:
                live.loading = None

    # -- expiry -------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_seconds)
            try:
                await self.sweep_expired()
            except Exception:
                log.exception("stream expiry sweep failed")

    async def sweep_expired(self) -> int:
        """Remove streams expired by their stored access times and this node's."""
        store = self._require()
        now = now_ms()
        removed = 0
        for path, stream_id in await store.expired(now, SWEEP_BATCH):
            if await store.delete_expired(path, stream_id, now, self._hint(path)):
                removed += 1
                self._notice(path, -1)
        return removed


async def _first_load(store: StreamStore, path: str) -> StreamState | None:
    """Load a path the cache did not hold. A read first: a path without a row (a scan, a
    typo in a loop) then costs no writer job, so such lookups never queue behind appends.
    Its entry stays empty unless a create commits meanwhile, which the listener (every
    commit, in order, for cached paths) puts in it; a row the read saw committed before
    the entry existed is loaded through the writer as before, ordered with the writes."""
    if not await store.has_row(path):
        return None
    return await store.load(path)
