"""uvicorn's sans-I/O WebSocket protocol, with a direct send path for fan-out.

Fan-out writes one pre-serialized frame to many sockets. Going through ASGI would cost a
message dict, a text decode and a frame serialization per reader; instead this protocol
puts a :class:`DirectSender` in the ASGI scope (``scope["extensions"]["agentsync.direct"]``)
that writes complete frames to the transport when it is writable and reports when it is
not, so the hub never waits on one slow reader. Everything else stays uvicorn's.
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from agentsync.protocol import ws_text_frame

EXTENSION = "agentsync.direct"


class DirectSender:
    """Synchronous frame writes to one accepted WebSocket connection."""

    __slots__ = ("_proto", "on_writable")

    def __init__(self, proto: AgentsyncWebSocketProtocol) -> None:
        self._proto = proto
        self.on_writable: Callable[[], None] | None = None

    @property
    def raw_frames_ok(self) -> bool:
        """Pre-serialized frames are valid only when no extension (deflate) is active."""
        return not self._proto.conn.extensions

    def writable(self) -> bool:
        p = self._proto
        return (
            p.writable.is_set()
            and not p.close_sent
            and not p.disconnected
            and p.conn.state is State.OPEN
            and not p.transport.is_closing()
        )

    @property
    def closed(self) -> bool:
        p = self._proto
        return p.close_sent or p.disconnected

    def write_wire(self, wire: bytes) -> None:
        """Write a frame from :func:`agentsync.protocol.ws_text_frame`; check ``writable``."""
        self._proto.transport.write(wire)

    def write_text(self, payload: bytes) -> None:
        p = self._proto
        if p.conn.extensions:
            p.conn.send_text(payload)
            p.transport.write(b"".join(p.conn.data_to_send()))
        else:
            p.transport.write(ws_text_frame(payload))

    async def wait_writable(self) -> None:
        await self._proto.writable.wait()

    def buffered(self) -> int:
        return self._proto.transport.get_write_buffer_size()

    def close(self, code: int, reason: str, *, timeout: float = 5.0) -> None:
        """Start the closing handshake now, even if the socket is not writable."""
        p = self._proto
        if p.close_sent or p.disconnected or p.transport.is_closing():
            return
        p.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        p.conn.send_close(code, reason)
        p.transport.write(b"".join(p.conn.data_to_send()))
        p.close_sent = True
        if p.read_paused:
            p.read_paused = False
            p.transport.resume_reading()
        p.close_timer = p.loop.call_later(timeout, p.transport.close)


class AgentsyncWebSocketProtocol(WebSocketsSansIOProtocol):
    """Adds the :class:`DirectSender` extension and a writability callback."""

    direct: DirectSender | None = None

    def handle_connect(self, event: object) -> None:
        super().handle_connect(event)  # type: ignore[arg-type]
        if getattr(self, "scope", None) is not None and not self.close_sent:
            self.direct = DirectSender(self)
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[EXTENSION] = self.direct

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.direct is not None and self.direct.on_writable is not None:
            self.direct.on_writable()
