"""The WebSocket endpoint: translates frames to hub calls and back (SPEC.md §3).

Each connection has one :class:`WsLink`. The hub pushes frames to a parked, up-to-date
link directly; otherwise the link's writer task wakes and sends what the reader missed,
coalesced into frames of up to ``max_frame_events`` events. A reader that falls more than
``max_reader_lag`` events behind is closed with 4001 (resumable) and catches up from its
seq on reconnect, so one slow socket costs the server a bounded amount of memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from agentsync import protocol
from agentsync.auth import bearer, matches
from agentsync.hub import Hub, LiveSession
from agentsync.limits import AddressLimits
from agentsync.protocol import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SLOW_CONSUMER,
    AgentsyncError,
    BadRequest,
)
from agentsync.server.http import authorize_read
from agentsync.server.wsproto import EXTENSION, DirectSender
from agentsync.session import CatchUp, Reader

log = logging.getLogger("agentsync.ws")

HELLO_TIMEOUT = 10.0
PRESENCE_BACKLOG = 64  # presence frames queued for a busy socket before they are skipped
SIDE_BACKLOG = 4096  # acks/errors queued for a socket that does not read them


class WsLink:
    """One WebSocket reader (and maybe writer) attached to a live session."""

    def __init__(self, hub: Hub, live: LiveSession, websocket: WebSocket, reader: Reader) -> None:
        self.hub = hub
        self.live = live
        self.websocket = websocket
        self.reader = reader
        direct = websocket.scope.get("extensions", {}).get(EXTENSION)
        self.direct: DirectSender | None = direct if isinstance(direct, DirectSender) else None
        if self.direct is not None:
            self.direct.on_writable = self.wake
        self.address = "unknown"  # the client's address, for per-address limits
        self.closed = False
        self.greeted = False  # side frames wait until the greeting is out
        self._wakeup = asyncio.Event()
        # Frames outside the log (acks, errors, presence) waiting for the socket. Acks are
        # never dropped; a client that lets too many pile up is cut off (resumable).
        self._side: collections.deque[bytes] = collections.deque()
        self._max_lag = hub.config.max_reader_lag
        self._max_frame = hub.config.max_frame_events

    # called by the hub

    def push(self, payload: bytes, wire: bytes | None, end_seq: int) -> bool:
        direct = self.direct
        if direct is None or wire is None or not direct.raw_frames_ok or not direct.writable():
            return False
        direct.write_wire(wire)
        self.reader.cursor = end_seq
        return True

    def wake(self) -> None:
        if self.closed:
            return
        if self._too_slow():
            return
        self._wakeup.set()

    def _too_slow(self) -> bool:
        """Cut the reader off when it is far behind *and* its socket is not draining.

        A reader catching up quickly (its socket keeps taking frames) is never cut off,
        however far behind it started; one that stopped reading is, once it misses more
        than ``max_reader_lag`` events. Nothing is buffered per reader beyond the socket's
        own write buffer, so this bounds time spent on dead readers, not memory.
        """
        if self.live.core.lag(self.reader) <= self._max_lag:
            return False
        if self.direct is not None and self.direct.writable():
            return False
        self.hub.metrics.slow_consumers.inc()
        self.close(CLOSE_SLOW_CONSUMER, "reader too slow; reconnect and resume from your seq")
        return True

    def send_presence(self, payload: bytes) -> None:
        if len(self._side) < PRESENCE_BACKLOG:  # presence is ephemeral: skip when busy
            self.send_side(payload)

    def send_side(self, payload: bytes) -> None:
        """Queue a frame that is not part of the log (ack, error, presence)."""
        if self.closed:
            return
        direct = self.direct
        if self.greeted and direct is not None and direct.writable() and not self._side:
            direct.write_text(payload)
            return
        if len(self._side) >= SIDE_BACKLOG:
            self.hub.metrics.slow_consumers.inc()
            self.close(CLOSE_SLOW_CONSUMER, "too many unread replies; reconnect and resume")
            return
        self._side.append(payload)
        self._wakeup.set()

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._wakeup.set()
        if self.direct is not None:
            self.direct.close(code, reason)
        else:
            self.hub.spawn(self._close_via_asgi(code, reason))

    async def _close_via_asgi(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)

    # the writer task

    async def _send(self, payload: bytes) -> None:
        if self.direct is not None:
            await self.direct.wait_writable()
            if self.direct.closed:
                raise ConnectionError("closed")
            self.direct.write_text(payload)
        else:
            await self.websocket.send_text(payload.decode())

    async def run_writer(self) -> None:
        reader = self.reader
        core = self.live.core
        metrics = self.hub.metrics
        try:
            while not self.closed:
                while self._side and not self.closed:
                    await self._send(self._side.popleft())
                if reader.cursor < core.last_seq:
                    if self._too_slow():
                        return
                    try:
                        pending = core.pending_frame(reader, self._max_frame)
                    except LookupError:
                        events = await self.hub.events_after(
                            self.live, reader.cursor, self._max_frame
                        )
                        pending = (
                            (
                                protocol.events_frame([e.encoded for e in events]),
                                events[-1].seq,
                            )
                            if events
                            else None
                        )
                    if pending is None:
                        continue
                    frame, end = pending
                    await self._send(frame)
                    metrics.frames_sent.inc()
                    metrics.events_out.labels("ws").inc(end - reader.cursor)
                    reader.cursor = end
                    continue
                reader.idle = True
                self._wakeup.clear()
                await self._wakeup.wait()
                reader.idle = False
        except (ConnectionError, WebSocketDisconnect, RuntimeError):
            self.closed = True


async def websocket_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    session_id = websocket.path_params["session_id"]
    await websocket.accept()
    try:
        hello = await asyncio.wait_for(websocket.receive(), HELLO_TIMEOUT)
    except (TimeoutError, WebSocketDisconnect):
        await _close(websocket, CLOSE_PROTOCOL_ERROR, "no hello within 10 s")
        return
    if hello.get("type") == "websocket.disconnect":
        return
    try:
        msg = _decode(hello)
        if msg.get("op") != "hello":
            raise BadRequest('the first frame must be {"op": "hello", ...}')
        since, epoch = msg.get("since"), msg.get("epoch")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise BadRequest("hello.since must be an integer seq")
        if epoch is not None and not isinstance(epoch, str):
            raise BadRequest("hello.epoch must be a string")
        name = msg.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 100):
            raise BadRequest("hello.name must be a string of at most 100 characters")
        token = msg.get("token")
        if token is not None and not isinstance(token, str):
            raise BadRequest("hello.token must be a string")
        token = token or bearer(websocket.headers.get("authorization"))
        live = await hub.get(session_id)
        authorize_read(live.share, token)
        if since is not None:
            live = await hub.catch_up_to(live, since)
    except AgentsyncError as err:
        await _close(websocket, err.close_code, err.message)
        return
    reader = Reader(
        id=protocol.new_id(6),
        name=name,
        can_write=matches(token, live.share.secret_hash),
    )
    link = WsLink(hub, live, websocket, reader)
    link.address = websocket.scope.get("state", {}).get("client_address", "unknown")
    core = live.core
    plan = core.plan_resume(epoch, since)
    if isinstance(plan, CatchUp):
        reader.cursor = plan.since
        first = await hub.events_after(live, plan.since, hub.config.max_frame_events)
        if live.gone is not None or hub.sessions.get(live.id) is not live:
            await _close(websocket, protocol.CLOSE_SERVER_SHUTDOWN, "session reloaded; resume")
            return
        greeting: dict[str, Any] = {
            "op": "events",
            "events": [e.to_json() for e in first],
            "epoch": core.epoch,
            "resumed": True,
            "seq": core.last_seq,
        }
        if first:
            reader.cursor = first[-1].seq
    else:
        reader.cursor = core.last_seq
        greeting = {
            "op": "init",
            "snapshot": core.snapshot(),
            "seq": core.last_seq,
            "epoch": core.epoch,
            "reason": plan.reason,
        }
    greeting["participants"] = hub.participants(live)
    greeting["reader"] = {"id": reader.id, "can_write": reader.can_write}
    # Attach before the first await of sending: anything committed from here on is either
    # pushed after the greeting or picked up by the writer task; nothing falls between.
    try:
        hub.attach(live, link)
    except AgentsyncError as err:
        await _close(websocket, err.close_code, err.message)
        return
    writer: asyncio.Task[None] | None = None
    try:
        await websocket.send_text(orjson.dumps(greeting).decode())
        link.greeted = True
        writer = asyncio.ensure_future(link.run_writer())
        hub.broadcast_presence(live, joined=reader)
        await _receive_loop(hub, live, link, websocket)
    except (WebSocketDisconnect, ConnectionError, RuntimeError):
        pass
    finally:
        link.closed = True
        hub.detach(live, link)
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer


async def _receive_loop(hub: Hub, live: LiveSession, link: WsLink, websocket: WebSocket) -> None:
    while not link.closed:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            msg = _decode(message)
        except BadRequest as err:
            link.close(CLOSE_PROTOCOL_ERROR, err.message)
            return
        op = msg.get("op")
        ref = msg.get("ref")
        if op == "publish":
            _start_publish(hub, live, link, msg, ref)
        elif op == "ping":
            link.send_side(orjson.dumps({"op": "pong", "ref": ref, "seq": live.core.last_seq}))
        elif op == "hello":
            link.close(CLOSE_PROTOCOL_ERROR, "hello was already received")
            return
        else:
            link.send_side(
                _error_frame(ref, BadRequest(f"unknown op {op!r}; expected publish or ping"))
            )


def _start_publish(
    hub: Hub, live: LiveSession, link: WsLink, msg: dict[str, Any], ref: Any
) -> None:
    if not link.reader.can_write:
        link.send_side(
            _error_frame(
                ref,
                protocol.Forbidden("publishing needs the share's secret in hello.token"),
            )
        )
        return
    try:
        limits: AddressLimits | None = getattr(websocket_state(link), "limits", None)
        if limits is not None:
            limits.ws_publishes.check(link.address)
        batch = protocol.parse_events(msg.get("events"), max_batch=hub.config.max_batch)
    except AgentsyncError as err:
        link.send_side(_error_frame(ref, err))
        return

    async def publish() -> None:
        try:
            result = await hub.append(live, batch)
        except AgentsyncError as err:
            link.send_side(_error_frame(ref, err))
            return
        link.send_side(
            orjson.dumps(
                {"op": "ack", "ref": ref, "seqs": result.seqs, "last_seq": result.last_seq}
            )
        )

    hub.spawn(publish())


def websocket_state(link: WsLink) -> Any:
    """The Starlette app's state (where the node's address limits live)."""
    return link.websocket.app.state


def _error_frame(ref: Any, err: AgentsyncError) -> bytes:
    frame: dict[str, Any] = {"op": "error", "ref": ref, "code": err.code, "message": err.message}
    if isinstance(err, protocol.RateLimited):
        frame["retry_after"] = round(err.retry_after, 3)
    return orjson.dumps(frame)


def _decode(message: Any) -> dict[str, Any]:
    text = message.get("text")
    raw: str | bytes | None = text if text is not None else message.get("bytes")
    if raw is None:
        raise BadRequest("empty frame")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"frames must be JSON objects: {exc}") from exc
    if not isinstance(obj, dict):
        raise BadRequest("frames must be JSON objects with an 'op' field")
    return obj


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code, reason[:120])
