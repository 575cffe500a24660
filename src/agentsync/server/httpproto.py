"""uvicorn's httptools protocol, answering Durable Streams appends without a task.

An append is the hot path: one small POST, one group-committed row. Through ASGI it
costs a task (created, registered, stepped), a receive and two sends, each a coroutine
frame; py-spy put that at a third of the event loop's time. This protocol takes the
appends the :class:`~agentsync.server.guard.Guard` admits for its direct route (no
``Origin``, a ``Content-Length`` body that fits the read buffer, no ``Expect``) when
uvicorn would start their ASGI task. It hands the body to the route's ``start`` once
the parser has it all, and writes the response from the store future's done callback.

Everything else, and every request this path declines, stays uvicorn's: the parser, the
request cycle (its keep-alive, pipelining and shutdown bookkeeping are reused as they
are), flow control, WebSocket upgrades. A response waits while the transport is paused
for writing, as an ASGI ``send`` would, so that a client that does not read its answers
stops being read.
"""

from __future__ import annotations

import functools
from collections.abc import MutableMapping
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from agentsync.server.guard import (
    DURABLE_STREAMS_PREFIX,
    STREAM_SECURITY_HEADERS,
    Guard,
    RawResponse,
)
from agentsync.server.streams import header_map

Pending = tuple[RequestResponseCycle, str, dict[str, str]]


class DirectHttpProtocol(HttpToolsProtocol):
    """Use :func:`direct_http_protocol` to bind it to a Guard."""

    guard: ClassVar[Guard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: Pending | None = None  # admitted, waiting for the rest of its body
        self._held: tuple[RequestResponseCycle, RawResponse] | None = None  # until drained
        self._idle_since: float | None = None  # loop time of the last answer; None: busy

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        taken = self._take(cycle, app)
        if taken is None:
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:
            self._pending = taken
        else:  # a pipelined request, started once the one before it was answered
            self._dispatch(*taken)

    def _take(self, cycle: RequestResponseCycle, app: Any) -> Pending | None:
        scope = cast("MutableMapping[str, Any]", cycle.scope)
        if scope["method"] != "POST" or not scope["path"].startswith(DURABLE_STREAMS_PREFIX):
            return None  # (other POSTs, e.g. session events, skip the header scan below)
        if app is not self.app or cycle.waiting_for_100_continue:
            return None  # (another app is uvicorn's 503 for --limit-concurrency)
        headers = header_map(scope["headers"])
        length = headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > HIGH_WATER_LIMIT:
            return None  # read by ASGI, with flow control and the 413 for its size
        if "transfer-encoding" in headers:
            return None
        target = self.guard.direct_target(scope)  # last: it takes a rate-limit token
        return None if target is None else (cycle, target, headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        pending = self._pending
        if pending is not None and pending[0] is self.cycle and not self.cycle.more_body:
            self._pending = None
            self._dispatch(*pending)

    def _dispatch(self, cycle: RequestResponseCycle, target: str, headers: dict[str, str]) -> None:
        direct = self.guard.direct
        assert direct is not None  # direct_target said so
        direct.start(target, headers, bytes(cycle.body), functools.partial(self._respond, cycle))

    def _respond(self, cycle: RequestResponseCycle, response: RawResponse) -> None:
        if cycle.disconnected or cycle.response_complete:
            return
        if self.flow.write_paused:
            self._held = (cycle, response)
            return
        status, headers, body = response
        # Header values come from validated request headers and the store's state: no
        # CR or LF can reach them, so uvicorn's per-header checks are not repeated here.
        lines = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers, *STREAM_SECURITY_HEADERS):
            lines += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            lines.append(b"connection: close\r\n")
        lines += (b"\r\n", body)
        self.transport.write(b"".join(lines))
        cycle.response_started = cycle.response_complete = True
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(cycle.scope),
                cycle.scope["method"],
                get_path_with_query_string(cycle.scope),
                cycle.scope["http_version"],
                status,
            )
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()

    def resume_writing(self) -> None:
        super().resume_writing()
        held, self._held = self._held, None
        if held is not None:
            self._respond(*held)

    # -- keep-alive: one timer per idle spell, not one per answer ------------------------
    # uvicorn cancels its timer when data arrives and arms a new one after each answer:
    # a TimerHandle per request. This one stays armed and re-arms itself until the
    # connection has been idle for the whole timeout.

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._check_keep_alive
            )

    def _check_keep_alive(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # busy: armed again after its answer
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._check_keep_alive)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None


def direct_http_protocol(guard: Guard) -> type[DirectHttpProtocol]:
    """The protocol class for uvicorn's ``http=``, bound to the app's Guard."""
    return type("BoundDirectHttpProtocol", (DirectHttpProtocol,), {"guard": guard})
