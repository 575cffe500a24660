"""The hub's side of the Bus: keeps each loaded session in step with the other nodes.

- A session's channel is subscribed before the session is read from the store, so an
  event committed elsewhere is either in what the load reads or arrives on the bus.
- Committed events are published in commit order by one task; a publish that fails is
  kept and retried (bounded), and receivers skip what they already hold.
- A received batch that does not follow on from the session's seq, and every session
  after a bus reconnect, is filled from the store: the bus is a fast path, never the record.
- Durable Streams ride the same bus on channels of their own (``agentsync:ds:<path>``):
  a node that wrote a stream publishes its new tail, and nodes with readers waiting on
  the stream re-load it from the store (see streams.manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentsync.bus.base import (
    Bus,
    Committed,
    Ended,
    Presence,
    PresenceQuery,
    channel_of,
    decode,
    encode_committed,
    encode_ended,
    encode_presence,
    encode_presence_query,
    last_seq_of,
    session_of,
)
from agentsync.protocol import Event, new_id

if TYPE_CHECKING:
    from agentsync.hub import Hub, LiveSession
    from agentsync.streams.manager import StreamManager

log = logging.getLogger("agentsync.relay")

PRESENCE_REFRESH = 10.0  # seconds between a node's re-announcements of its readers
PRESENCE_TTL = 3 * PRESENCE_REFRESH  # a node not heard of for this long has no readers
OUTBOX_LIMIT = 100_000  # unpublished messages kept while the bus is down, at most
PUBLISH_BATCH = 500
STREAM_CHANNEL = "agentsync:ds:"  # + a Durable Stream's path; the payload is its tail


class Relay:
    def __init__(self, hub: Hub, bus: Bus) -> None:
        self.hub = hub
        self.bus = bus
        self.node = new_id(6)  # names this process in presence messages
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self.streams: StreamManager | None = None  # told of other nodes' stream writes

    async def start(self) -> None:
        await self.bus.open(self._on_message, self._on_resync)
        self.hub.spawn(self._publisher())
        self.hub.spawn(self._announce_loop())

    async def stop(self) -> None:
        # Readers of this node are gone: say so rather than let the others wait for expiry.
        for live in self.hub.sessions.values():
            if self.hub.local_participants(live):
                self._queue(channel_of(live.id), encode_presence(Presence(self.node, [])))
        if self._outbox:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bus.publish(list(self._outbox)), 2.0)
        await self.bus.close()

    # subscriptions follow the sessions this node has loaded

    async def subscribe(self, session_id: str) -> None:
        await self.bus.subscribe(channel_of(session_id))

    def loaded(self, session_id: str) -> None:
        """The session is loaded here: ask the other nodes who watches it there."""
        self._queue(channel_of(session_id), encode_presence_query(self.node))

    def release(self, session_id: str) -> None:
        self.hub.spawn(self._release(session_id))

    async def _release(self, session_id: str) -> None:
        if not self.hub.is_loaded_or_loading(session_id):
            await self.bus.unsubscribe(channel_of(session_id))

    # Durable Streams: the StreamSignals of streams.manager

    async def subscribe_stream(self, path: str) -> None:
        await self.bus.subscribe(STREAM_CHANNEL + path)

    def release_stream(self, path: str) -> None:
        self.hub.spawn(self._release_stream(path))

    async def _release_stream(self, path: str) -> None:
        if self.streams is None or not self.streams.subscribed(path):  # not again since
            await self.bus.unsubscribe(STREAM_CHANNEL + path)

    def publish_stream(self, path: str, tail: int) -> None:
        self._queue(STREAM_CHANNEL + path, b"%d" % tail)

    # publishing

    def publish(self, session_id: str, events: Sequence[Event]) -> None:
        self._queue(channel_of(session_id), encode_committed(events))

    def publish_ended(self, session_id: str, why: str) -> None:
        self._queue(channel_of(session_id), encode_ended(why))

    def publish_presence(self, live: LiveSession, change: dict[str, Any] | None = None) -> None:
        presence = Presence(self.node, self.hub.local_participants(live), change)
        self._queue(channel_of(live.id), encode_presence(presence))

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            for live in list(self.hub.sessions.values()):
                if self.hub.local_participants(live):
                    self.publish_presence(live)

    def _queue(self, channel: str, payload: bytes) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._outbox.popleft()  # receivers fill the gap from the store
        self._outbox.append((channel, payload))
        self._wake.set()

    async def _publisher(self) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = [self._outbox[i] for i in range(min(PUBLISH_BATCH, len(self._outbox)))]
                try:
                    await self.bus.publish(batch)
                except Exception as exc:
                    log.warning("publishing to the bus failed (%s); retrying", exc)
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
                    continue
                delay = 0.05
                for _ in batch:
                    self._outbox.popleft()
                self.hub.metrics.bus_messages.labels("out").inc(len(batch))

    # receiving

    def _on_message(self, channel: str, payload: bytes) -> None:
        hub = self.hub
        if channel.startswith(STREAM_CHANNEL):
            if self.streams is not None:
                hub.metrics.bus_messages.labels("in").inc()
                self.streams.on_signal(channel[len(STREAM_CHANNEL) :], payload)
            return
        live = hub.sessions.get(session_of(channel))
        if live is None:
            return
        hub.metrics.bus_messages.labels("in").inc()
        last = last_seq_of(payload)
        if last is not None and last <= live.core.last_seq:
            return  # our own publish echoed back, or already read from the store
        try:
            message = decode(payload)
        except ValueError as exc:
            log.error("undecodable bus message on %s: %s", channel, exc)
            return
        if isinstance(message, Committed):
            if message.events and message.events[-1].seq > live.core.last_seq:
                hub.spawn(self.catch_up(live, message.events))
        elif isinstance(message, Ended):
            hub.spawn(hub.end_here(live.id, message.why))
        elif message.node == self.node:
            return  # our own presence, echoed
        elif isinstance(message, PresenceQuery):
            if hub.local_participants(live):
                self.publish_presence(live)
        else:
            expires = time.monotonic() + PRESENCE_TTL
            if message.participants:
                live.remote_participants[message.node] = (expires, message.participants)
            else:
                live.remote_participants.pop(message.node, None)
            hub.send_presence(live, message.change)

    def _on_resync(self) -> None:
        for live in list(self.hub.sessions.values()):
            self.hub.spawn(self.catch_up(live, []))
        if self.streams is not None:
            self.streams.resync()

    async def catch_up(self, live: LiveSession, events: Sequence[Event]) -> None:
        hub = self.hub
        async with live.prepare_lock:
            if hub.sessions.get(live.id) is not live:
                return
            try:
                await hub.writes.catch_up_locked(live, events)
            except Exception:
                log.exception("catching up %s from the store failed; reloading it", live.id)
                await hub.drop(live, None)
