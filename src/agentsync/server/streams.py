"""HTTP edge of Durable Streams: ``/v1/stream/{path}`` (PUT, POST, GET, HEAD, DELETE).

Handlers parse headers with :mod:`agentsync.streams.rules`, call the
:class:`~agentsync.streams.manager.StreamManager`, and turn its answers and refusals
into responses with the protocol's headers. Responses set ``content-type`` themselves:
Starlette would append ``; charset=utf-8`` to a ``text/*`` media type, and clients
compare the stream's content type exactly.

Writes are open on a loopback bind; otherwise (or once ``--stream-key`` or
``--admin-key`` is set) they need ``Authorization: Bearer`` with one of those keys.
Reads are open. Paths under ``sessions/`` and ``__ds/`` are reserved.

Appends, the hot path, skip the router: :class:`Appends` answers ``POST /v1/stream/{path}``
from the raw ASGI scope, in front of Starlette (whose route walk, ``Request`` and
``Response`` cost as much CPU as the append itself), and most of them do not reach ASGI at
all: the HTTP protocol (:mod:`agentsync.server.httpproto`) calls :meth:`Appends.start` with
the parsed request and writes its answer from the store future's callback.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hmac
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Final

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentsync import auth
from agentsync.config import Config
from agentsync.metrics import Metrics
from agentsync.protocol import AgentsyncError, PayloadTooLarge, Unavailable, now_ms
from agentsync.server.guard import RawResponse, Respond
from agentsync.server.http import error_response as agentsync_error_response
from agentsync.server.http import internal_error_response, read_body, receive_body
from agentsync.streams import forks, rules
from agentsync.streams.manager import LiveStream, StreamManager
from agentsync.streams.rules import (
    NOW,
    AppendRequest,
    CreateRequest,
    StreamError,
    StreamState,
)
from agentsync.streams.store import Appended

MAX_READ_BYTES: Final = 1024 * 1024  # a catch-up response holds at least one unit
SSE_MAX_SECONDS: Final = 60.0  # then the client reconnects from its offset (CDN friendly)
RESERVED_PREFIXES: Final = ("sessions/", "__ds/")
ALLOW: Final = "GET, HEAD, PUT, POST, DELETE, OPTIONS"
ROUTE_PREFIX: Final = "/v1/stream/"  # Stream-Forked-From names a source by this path

_rng = random.Random()
log = logging.getLogger("agentsync.streams")


def manager_of(request: Request) -> StreamManager:
    manager: StreamManager = request.app.state.streams
    return manager


def error_response(err: StreamError) -> Response:
    return Response(
        orjson.dumps(err.to_json()),
        err.status,
        headers={"content-type": "application/json", **err.headers},
    )


async def endpoint(request: Request) -> Response:
    """One route for every method: refusals become responses with their headers."""
    handler = {
        "GET": read,
        "HEAD": head,
        "PUT": create,
        "DELETE": delete,
        "OPTIONS": options,
    }[request.method]
    try:
        return await handler(request)
    except StreamError as err:
        return error_response(err)


def stream_path(request: Request) -> str:
    return checked_path(request.path_params["path"])


def checked_path(path: str) -> str:
    if not path or len(path) > 1024 or "\x00" in path:
        raise rules.bad_request("a stream path must be 1 to 1024 characters, without NUL")
    return path


def authorize_write(config: Config, headers: Mapping[str, str]) -> None:
    keys = [k for k in (config.stream_key, config.admin_key) if k]
    # Open only to this machine: a loopback bind that is not behind a proxy (a proxy on
    # the same machine would bring the whole internet to the loopback address).
    local = config.loopback and not config.public_url and not config.trusted_proxies
    if not keys and local:
        return
    if not keys:
        raise StreamError(
            403,
            "forbidden",
            "writing streams on a public bind (or behind a proxy) needs a key: start the "
            "server with --stream-key KEY and send 'Authorization: Bearer KEY'",
        )
    presented = auth.bearer(headers.get("authorization"))
    if presented is None:
        raise StreamError(401, "unauthorized", "send 'Authorization: Bearer <stream key>'")
    if not any(hmac.compare_digest(presented.encode(), k.encode()) for k in keys):
        raise StreamError(403, "forbidden", "that is not the stream key")


# --- writes ----------------------------------------------------------------------------


async def create(request: Request) -> Response:
    path = stream_path(request)
    headers = request.headers
    if path.startswith(RESERVED_PREFIXES):
        raise StreamError(
            403,
            "reserved_path",
            f"stream paths under {' and '.join(RESERVED_PREFIXES)} are reserved "
            "(agentsync sessions will be readable there); choose another path",
        )
    authorize_write(manager_of(request).config, headers)
    fork = forks.parse_fork(
        headers.get("stream-forked-from"),
        headers.get("stream-fork-offset"),
        headers.get("stream-fork-sub-offset"),
        ROUTE_PREFIX,
    )
    content_type: str | None = rules.create_content_type(headers.get("content-type"))
    if fork is not None and not rules.has_media_type(headers.get("content-type")):
        content_type = None  # inherited from the source
    ttl_raw, expires_raw = headers.get("stream-ttl"), headers.get("stream-expires-at")
    if ttl_raw is not None and expires_raw is not None:
        raise rules.bad_request("send Stream-TTL or Stream-Expires-At, not both")
    ttl = rules.parse_ttl(ttl_raw)
    expires_ms = rules.parse_expires_at(expires_raw)
    body = await read_body(request, manager_of(request).config.max_body_bytes)
    req = CreateRequest(
        content_type=content_type,
        ttl_seconds=ttl,
        expires_at=expires_raw,
        expires_at_ms=expires_ms,
        closed=rules.is_true(headers.get("stream-closed")),
        body=body or None,
        fork=fork,
    )
    created = await manager_of(request).create(path, req)
    out = rules.created_headers(created.state)
    if created.new:
        out["location"] = str(request.url.replace(query=""))
    return Response(b"", 201 if created.new else 200, headers=out)


class Appends:
    """``POST /v1/stream/{path}`` (but not the read-only ``sessions/{id}`` route),
    answered from the raw ASGI scope, without Starlette's middleware, router,
    ``Request`` or ``Response``. The Guard calls :meth:`serve` directly for a request
    without an ``Origin`` (no CORS to apply); as an ASGI app it also sits in front of
    the Starlette app for the rest, passing on everything but appends."""

    def __init__(self, app: ASGIApp, streams: StreamManager) -> None:
        self.app = app
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = self.route(scope)
        if path is None:
            await self.app(scope, receive, send)
        else:
            await self.serve(path, scope, receive, send)

    def route(self, scope: Scope) -> str | None:
        """The stream path of an append, else None (not ours)."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        route_path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and route_path.startswith(root):
            route_path = route_path[len(root) :]
        if not route_path.startswith(ROUTE_PREFIX):
            return None
        path = route_path[len(ROUTE_PREFIX) :]
        return None if SESSION_ROUTE.match(path) else path

    async def serve(
        self,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer the append to ``path`` over ASGI, adding ``extra_headers`` to the
        response. (Most appends do not come this way: the HTTP protocol answers them
        from :meth:`begin`'s future without a task, see :mod:`.httpproto`.)"""
        headers = header_map(scope["headers"])
        try:
            limit = self.streams.config.max_body_bytes
            body = await receive_body(receive, headers.get("content-length"), limit)
            req, future = self.begin(path, headers, body)
            appended = await future
        except Exception as err:
            status, raw, content = self.refusal(err, scope["path"])
        else:
            status, raw, content = self.answer(req, appended)
        raw.extend(extra_headers)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    def begin(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[AppendRequest, asyncio.Future[Appended]]:
        """Check and start the append; refusals of the request itself raise."""
        checked_path(path)
        config = self.streams.config
        authorize_write(config, headers)
        if len(body) > config.max_body_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {config.max_body_bytes} bytes")
        req = append_request(headers, body)
        return req, self.streams.append_soon(path, req)

    def start(self, path: str, headers: Mapping[str, str], body: bytes, respond: Respond) -> None:
        """:meth:`serve` without ASGI, for the HTTP protocol: ``respond`` gets the
        response from the store future's done callback, no task in between."""
        try:
            req, future = self.begin(path, headers, body)
        except Exception as err:
            respond(self.refusal(err, path))
            return
        future.add_done_callback(functools.partial(self._finish, path, req, respond))

    def _finish(
        self, path: str, req: AppendRequest, respond: Respond, done: asyncio.Future[Appended]
    ) -> None:
        if done.cancelled():
            respond(self.refusal(Unavailable("the server is shutting down; retry"), path))
        elif (error := done.exception()) is not None:
            respond(self.refusal(error, path))
        else:
            respond(self.answer(req, done.result()))

    @staticmethod
    def answer(req: AppendRequest, appended: Appended) -> RawResponse:
        status = rules.append_status(req, appended.outcome)
        out = rules.append_headers(appended.state, req, appended.outcome)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out.items()]
        if status != 204:
            raw.append((b"content-length", b"0"))
        return status, raw, b""

    def refusal(self, err: BaseException, target: str) -> RawResponse:
        """The response to an append that failed with ``err``."""
        if isinstance(err, StreamError):
            response = error_response(err)
        elif isinstance(err, AgentsyncError):  # e.g. the body is too large
            self.streams.metrics.rejected.labels(err.code).inc()
            response = agentsync_error_response(err)
        else:  # as the app's handler for the routes it serves
            log.error("unexpected error on POST %s", target, exc_info=err)
            response = internal_error_response()
        return response.status_code, list(response.raw_headers), bytes(response.body)


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers by lower-case name; the first of repeated ones, as Starlette."""
    headers: dict[str, str] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


SESSION_ROUTE: Final = re.compile(r"sessions/[^/]+\Z")  # stream_sessions' route


def append_request(headers: Mapping[str, str], body: bytes) -> AppendRequest:
    """The append a POST asks for; refusals of its headers raise StreamError."""
    producer = rules.parse_producer(
        headers.get("producer-id"), headers.get("producer-epoch"), headers.get("producer-seq")
    )
    close = rules.is_true(headers.get("stream-closed"))
    content_type = headers.get("content-type")
    stream_seq = headers.get("stream-seq")
    if not body:
        if not close:
            raise rules.bad_request("an append needs a body (or Stream-Closed: true)")
        return AppendRequest(None, content_type, stream_seq, producer, close=True)
    if content_type is None:
        raise rules.bad_request("an append needs a Content-Type")
    unit, body_error = body, None
    if rules.is_json(content_type):
        try:
            unit = rules.json_unit(body, initial=False)
        except StreamError as err:
            body_error = err  # refused inside the job, after closed/type/producer
    return AppendRequest(unit, content_type, stream_seq, producer, close, body_error)


async def delete(request: Request) -> Response:
    path = stream_path(request)
    authorize_write(manager_of(request).config, request.headers)
    await manager_of(request).delete(path)
    return Response(None, 204)


async def options(request: Request) -> Response:
    return Response(None, 204, headers={"allow": ALLOW})


# --- reads -----------------------------------------------------------------------------


async def head(request: Request) -> Response:
    _live, state = await manager_of(request).current(stream_path(request))
    out = {
        "content-type": state.content_type,
        "stream-next-offset": rules.offset_of(state.tail),
        "cache-control": rules.CACHE_NONE,
        "etag": rules.etag(state.id, "-1", rules.offset_of(state.tail), state.closed),
    }
    if state.closed:
        out["stream-closed"] = "true"
    if state.ttl_seconds is not None:
        out["stream-ttl"] = str(state.ttl_seconds)
    if state.expires_at is not None:
        out["stream-expires-at"] = state.expires_at
    return Response(None, 200, headers=out)


async def read(request: Request) -> Response:
    manager = manager_of(request)
    path = stream_path(request)
    params = request.query_params
    start = rules.parse_offset(params.getlist("offset"))
    mode = params.get("live")
    cursor = params.get("cursor")
    live, state = await manager.current(path)
    if mode in ("long-poll", "sse") and start is None:
        raise rules.bad_request(f"live={mode} needs an offset (-1 for the start, or now)")
    manager.accessed(live)
    manager.metrics.stream_reads.labels(mode if mode in ("long-poll", "sse") else "catch-up").inc()
    if mode == "sse":
        assert start is not None
        return sse_response(manager, live, state, state.tail if start == NOW else start, cursor)
    if start == NOW and mode != "long-poll":
        out = {
            "content-type": state.content_type,
            "stream-next-offset": rules.offset_of(state.tail),
            "stream-up-to-date": "true",
            "cache-control": rules.CACHE_NONE,
        }
        if state.closed:
            out["stream-closed"] = "true"
        return Response(b"[]" if state.is_json else b"", 200, headers=out)
    after = state.tail if start == NOW else (start or 0)
    if mode == "long-poll" and after == state.tail:
        if state.closed:
            out = _tail_headers(after, closed=True)
            out["stream-cursor"] = rules.response_cursor(cursor, now_ms(), _rng)
            return Response(None, 204, headers=out)
        changed = await manager.wait_beyond(live, after, manager.config.stream_long_poll_seconds)
        manager.accessed(live)
        now_state = live.state
        if now_state is None or now_state.id != state.id:
            raise rules.not_found(path)
        if now_state.deleted:
            raise rules.gone(path)
        state = now_state
        if not changed or state.tail <= after:
            out = _tail_headers(after, closed=state.closed)
            out["stream-cursor"] = rules.response_cursor(cursor, now_ms(), _rng)
            return Response(None, 204, headers=out)
    return await _catch_up(request, manager, state, after, mode == "long-poll", cursor)


def _tail_headers(seq: int, *, closed: bool) -> dict[str, str]:
    out = {"stream-next-offset": rules.offset_of(seq), "stream-up-to-date": "true"}
    if closed:
        out["stream-closed"] = "true"
    return out


async def _catch_up(
    request: Request,
    manager: StreamManager,
    state: StreamState,
    after: int,
    long_poll: bool,
    cursor: str | None,
) -> Response:
    units: list[tuple[int, bytes]] = []
    if after < state.tail:
        units = await manager.read_units(state, after, state.tail, MAX_READ_BYTES)
    next_seq = units[-1][0] if units else min(after, state.tail)
    up_to_date = next_seq >= state.tail
    closed = state.closed and up_to_date
    next_offset = rules.offset_of(next_seq)
    start_text = request.query_params.get("offset") or "-1"
    tag = rules.etag(state.id, start_text, next_offset, closed)
    if request.headers.get("if-none-match") == tag:
        return Response(None, 304, headers={"etag": tag})
    out = {
        "content-type": state.content_type,
        "stream-next-offset": next_offset,
        "etag": tag,
        "cache-control": rules.CACHE_AT_TAIL if up_to_date else rules.CACHE_IMMUTABLE,
    }
    if up_to_date:
        out["stream-up-to-date"] = "true"
    if closed:
        out["stream-closed"] = "true"
    if long_poll:
        out["stream-cursor"] = rules.response_cursor(cursor, now_ms(), _rng)
    data = [u for _, u in units]
    body = rules.json_body(data) if state.is_json else b"".join(data)
    return Response(body, 200, headers=out)


def sse_response(
    manager: StreamManager, live: LiveStream, state: StreamState, seq: int, cursor: str | None
) -> StreamingResponse:
    out = {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }
    if rules.sse_uses_base64(state.content_type):
        out["stream-sse-data-encoding"] = "base64"
    stream = _sse(manager, live, state, seq, cursor)
    return SSEResponse(stream, out, manager.config.stream_stall_seconds, manager.metrics)


CUT_OFF: Final = contextvars.ContextVar("agentsync_sse_cut_off", default=False)


class SSEResponse(StreamingResponse):
    """A Durable Streams SSE response that gives up on a reader who stops reading.

    Data is pulled from the store per reader, so a stalled one costs no more than its
    socket buffers; but it would hold its connection (and the 60 s reconnect deadline
    would never come) for as long as TCP lets it. A write that waits ``stall`` seconds
    for the socket to drain ends the response instead: the connection is closed after
    what was already written, which ends on a whole data and control pair, and the
    client resumes from that control's offset (SPEC §2.6)."""

    def __init__(
        self, content: AsyncIterator[bytes], headers: dict[str, str], stall: float, metrics: Metrics
    ) -> None:
        super().__init__(content, headers=headers)
        self.stall = stall
        self.metrics = metrics
        self.stalled = False

    async def stream_response(self, send: Send) -> None:
        # One watchdog timer per connection, not a timeout per write (4 us each, and
        # SSE fan-out is thousands of writes a second): it cancels this task only while
        # a write has been waiting for ``stall`` seconds.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        waiting_since: float | None = None
        timer: asyncio.TimerHandle

        def watch() -> None:
            nonlocal timer
            now = loop.time()
            if waiting_since is not None and now - waiting_since >= self.stall:
                self.stalled = True
                task.cancel()
                return
            start = now if waiting_since is None else waiting_since
            timer = loop.call_at(start + self.stall, watch)

        async def watched(message: Message) -> None:
            nonlocal waiting_since
            waiting_since = loop.time()
            await send(message)
            waiting_since = None

        timer = loop.call_later(self.stall, watch)
        try:
            await super().stream_response(watched)
        except asyncio.CancelledError:
            if not self.stalled:
                raise
            task.uncancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            timer.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        if self.stalled:
            self.metrics.slow_consumers.inc()
            log.info(
                "cut off an SSE reader of %s: its socket took nothing for %gs (it resumes "
                "from its offset)",
                scope.get("path"),
                self.stall,
            )
            CUT_OFF.set(True)  # uvicorn then closes the connection: not an error


async def _sse(
    manager: StreamManager, live: LiveStream, state: StreamState, seq: int, cursor: str | None
) -> AsyncIterator[bytes]:
    """Data events, each followed by a control event; ends when the stream is closed and
    read to its end, deleted, after :data:`SSE_MAX_SECONDS`, or at shutdown."""
    content_type = state.content_type
    text = None if state.is_json or rules.sse_uses_base64(content_type) else rules.text_decoder()
    seq = min(seq, state.tail)
    deadline = time.monotonic() + SSE_MAX_SECONDS
    live.waiters += 1
    connections = manager.metrics.connections.labels("stream-sse")
    connections.inc()
    try:
        first = True
        while True:
            current = live.state
            if current is None or current.id != state.id or current.deleted:
                return
            units: list[tuple[int, bytes]] = []
            if seq < current.tail:
                units = await manager.read_units(current, seq, current.tail, MAX_READ_BYTES)
            # A data event and its control go out in one write: a client that stops
            # reading at the first "event: control" it sees (even inside a payload line)
            # still gets the whole pair.
            chunk = b""
            if units:
                seq = units[-1][0]
            at_tail = seq >= current.tail
            ended = current.closed and at_tail
            # The end of a closed text stream flushes a character its last append cut
            # in two (as U+FFFD), which would otherwise never be sent.
            flush = ended and text is not None and text.getstate()[0] != b""
            if units or flush:
                chunk = rules.sse_data(content_type, [u for _, u in units], text, final=ended)
            if units or first or ended:
                control_cursor = rules.response_cursor(cursor, now_ms(), _rng)
                chunk += rules.sse_control(seq, control_cursor, up_to_date=at_tail, closed=ended)
                yield chunk
            first = False
            if ended:
                return
            if not at_tail:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or manager.closing:
                return
            timeout = min(manager.config.stream_long_poll_seconds, remaining)
            changed = await manager.wait_beyond(live, seq, timeout)
            manager.accessed(live)
            if manager.closing:
                return
            if not changed:
                keepalive = rules.response_cursor(cursor, now_ms(), _rng)
                yield rules.sse_control(seq, keepalive, up_to_date=True, closed=False)
    finally:
        live.waiters -= 1
        connections.dec()
