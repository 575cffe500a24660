"""agentsync sessions as read-only Durable Streams: ``/v1/stream/sessions/{session_id}``.

A session reads as a JSON stream with one message per event (its envelope,
``Event.encoded``, joined without re-encoding). The offset after event ``seq`` is
:func:`agentsync.streams.rules.offset_of` ``(seq)``, so the tail is the session's last seq
and a client's saved offset is a seq it can resume after, with no gap and no duplicate.
Reads go through the hub as every other reader's do (backlog, else store; an archived
session is restored by ``hub.get``); long-poll and SSE wait on ``LiveSession.changed``.

Decisions beyond the protocol:

* Reading needs the share's read rule (``authorize_read``): a ``token`` share wants its
  read token or its secret as ``Authorization: Bearer`` (or ``?token=``).
* A deleted or expired share answers 410 (as the rest of agentsync), not 404.
* Writes are refused with 405: events are appended through ``/v1/sessions/{id}/events``,
  where seqs, idempotency and the write secret are enforced.
* An offset beyond the log, once a cluster node has caught up from the store, is 400:
  no offset this server issued for the session's current log points there (it may come
  from a log that was rebuilt, see the epoch). The session's epoch is in every ETag.
* Responses are ``Cache-Control: private, no-cache``: a shared cache must not keep a token
  share's data, and a deleted share must stop serving at once; ETag/304 still spares the
  body.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from agentsync.hub import Hub, LiveSession
from agentsync.protocol import AgentsyncError, TooManyConnections, now_ms
from agentsync.server.http import authorize_read, credential, hub_of
from agentsync.server.streams import SSEResponse
from agentsync.streams import rules
from agentsync.streams.rules import NOW, StreamError

CONTENT_TYPE: Final = rules.JSON_TYPE
ALLOW: Final = "GET, HEAD, OPTIONS"
METHODS: Final = ("GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE", "PATCH")
CACHE_READ: Final = "private, no-cache"
SSE_MAX_SECONDS: Final = 60.0  # then the client reconnects from its offset (protocol §8.2)

_rng = random.Random()


def error_response(err: StreamError) -> Response:
    return Response(
        orjson.dumps(err.to_json()),
        err.status,
        headers={"content-type": "application/json", **err.headers},
    )


async def endpoint(request: Request) -> Response:
    """One route for every method; agentsync's own errors (404, 410, 401, 403) propagate
    to the app's handler, protocol refusals are answered here with their headers."""
    handlers = {"GET": read, "HEAD": head, "OPTIONS": options}
    handler = handlers.get(request.method)
    try:
        if handler is None:
            raise read_only(request.path_params["session_id"])
        return await handler(request)
    except StreamError as err:
        return error_response(err)


def read_only(session_id: str) -> StreamError:
    return StreamError(
        405,
        "read_only_stream",
        f"/v1/stream/sessions/{session_id} is a read-only view of an agentsync session; "
        f"append events with POST /v1/sessions/{session_id}/events and the share's secret",
        {"allow": ALLOW},
    )


async def options(request: Request) -> Response:
    return Response(None, 204, headers={"allow": ALLOW})


async def readable(request: Request) -> LiveSession:
    """The live session, if this request may read it: 404, 410, 401 or 403 otherwise."""
    hub = hub_of(request)
    session_id = request.path_params["session_id"]
    # The credential first: a request without one must not load (or restore) the log.
    authorize_read(await hub.get_share(session_id), credential(request))
    return await hub.get(session_id)


def etag(live: LiveSession, start: str, end: str) -> str:
    """Changes with the range and with the epoch: a rebuilt log is another stream."""
    return f'"{live.id}:{live.core.epoch}:{start}:{end}"'


def expires_at(live: LiveSession) -> str | None:
    """The share's expiry as RFC 3339 (``Stream-Expires-At``)."""
    if live.share.expires_at is None:
        return None
    when = datetime.fromtimestamp(live.share.expires_at / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def head(request: Request) -> Response:
    live = await readable(request)
    tail = rules.offset_of(live.core.last_seq)
    out = {
        "content-type": CONTENT_TYPE,
        "stream-next-offset": tail,
        "cache-control": rules.CACHE_NONE,
        "etag": etag(live, "-1", tail),
    }
    expiry = expires_at(live)
    if expiry is not None:
        out["stream-expires-at"] = expiry
    return Response(None, 200, headers=out)


async def read(request: Request) -> Response:
    hub = hub_of(request)
    params = request.query_params
    start = rules.parse_offset(params.getlist("offset"))
    mode = params.get("live")
    cursor = params.get("cursor")
    live = await readable(request)
    if mode in ("long-poll", "sse") and start is None:
        raise rules.bad_request(f"live={mode} needs an offset (-1 for the start, or now)")
    if start is not None and start != NOW:
        live = await reach(hub, live, start)
    if mode == "sse":
        after = live.core.last_seq if start == NOW else start
        assert after is not None
        return sse_response(hub, live, after, cursor)
    if start == NOW and mode != "long-poll":
        out = {
            "content-type": CONTENT_TYPE,
            "stream-next-offset": rules.offset_of(live.core.last_seq),
            "stream-up-to-date": "true",
            "cache-control": rules.CACHE_NONE,
        }
        return Response(b"[]", 200, headers=out)
    after = live.core.last_seq if start == NOW else (start or 0)
    if mode == "long-poll" and after >= live.core.last_seq:
        live = await wait_beyond(hub, live, after, hub.config.stream_long_poll_seconds)
        if live.core.last_seq <= after:
            out = {
                "stream-next-offset": rules.offset_of(after),
                "stream-up-to-date": "true",
                "stream-cursor": rules.response_cursor(cursor, now_ms(), _rng),
                "cache-control": rules.CACHE_NONE,
            }
            return Response(None, 204, headers=out)
    return await catch_up(request, hub, live, after, mode == "long-poll", cursor)


async def reach(hub: Hub, live: LiveSession, seq: int) -> LiveSession:
    """``live`` holding ``seq`` (caught up from the store on a cluster node), or 400."""
    live = await hub.catch_up_to(live, seq)
    if seq > live.core.last_seq:
        raise rules.bad_request(
            f"offset {rules.offset_of(seq)} is beyond the end of session {live.id} "
            f"(its tail is {rules.offset_of(live.core.last_seq)}, epoch "
            f"{live.core.epoch!r}); read again from -1",
            "offset_beyond_tail",
        )
    return live


async def wait_beyond(hub: Hub, live: LiveSession, seq: int, seconds: float) -> LiveSession:
    """Wait up to ``seconds`` for an event after ``seq``; the session as it is then
    (reloaded if it was, 410 if it was deleted or expired meanwhile)."""
    deadline = time.monotonic() + seconds
    session_id = live.id
    while live.core.last_seq <= seq and not hub.closing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        changed = live.wait_changed()
        live.waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(changed), remaining)
        finally:
            live.waiters -= 1
        live = await hub.get(session_id)
    return live


async def catch_up(
    request: Request,
    hub: Hub,
    live: LiveSession,
    after: int,
    long_poll: bool,
    cursor: str | None,
) -> Response:
    events = await hub.events_after(live, after, hub.config.max_frame_events)
    next_seq = events[-1].seq if events else after
    up_to_date = next_seq >= live.core.last_seq
    next_offset = rules.offset_of(next_seq)
    tag = etag(live, request.query_params.get("offset") or "-1", next_offset)
    if request.headers.get("if-none-match") == tag:
        return Response(None, 304, headers={"etag": tag, "cache-control": CACHE_READ})
    out = {
        "content-type": CONTENT_TYPE,
        "stream-next-offset": next_offset,
        "etag": tag,
        "cache-control": CACHE_READ,
    }
    if up_to_date:
        out["stream-up-to-date"] = "true"
    if long_poll:
        out["stream-cursor"] = rules.response_cursor(cursor, now_ms(), _rng)
    body = rules.json_body([e.encoded for e in events])
    return Response(body, 200, headers=out)


# --- SSE -------------------------------------------------------------------------------


def sse_response(hub: Hub, live: LiveSession, after: int, cursor: str | None) -> Response:
    counter = hub.readers_per_session
    if counter.limit and counter.count(live.id) >= counter.limit:
        raise TooManyConnections(f"session {live.id} has {counter.limit} readers (the limit)")
    out = {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }
    stream = _sse(hub, live, after, cursor)
    return SSEResponse(stream, out, hub.config.stream_stall_seconds, hub.metrics)


async def _sse(hub: Hub, live: LiveSession, seq: int, cursor: str | None) -> AsyncIterator[bytes]:
    """A ``data`` event per batch of events, each followed by a ``control`` event. Ends
    after :data:`SSE_MAX_SECONDS`, at shutdown, when the share is deleted or expires (the
    client's next request then gets 410), or when the log was rebuilt (new epoch)."""
    session_id, epoch = live.id, live.core.epoch
    deadline = time.monotonic() + SSE_MAX_SECONDS
    hub.metrics.connections.labels("sse").inc()
    hub.readers_per_session.acquire_unchecked(session_id)
    held: LiveSession | None = None  # the session object whose ``waiters`` we count in
    try:
        first = True
        while True:
            if hub.sessions.get(session_id) is not live:  # evicted and reloaded, or gone
                if live.gone is not None:
                    return
                live = await hub.get(session_id)
                if live.core.epoch != epoch:
                    return  # a rebuilt log: our offsets do not point into it
            if held is not live:
                if held is not None:
                    held.waiters -= 1
                held = live
                live.waiters += 1
            changed = live.wait_changed()
            events = await hub.events_after(live, seq, hub.config.max_frame_events)
            # A data event and its control go out in one write, so a client that stops
            # reading at a control event never splits a pair.
            chunk = b""
            if events:
                seq = events[-1].seq
                hub.metrics.events_out.labels("sse").inc(len(events))
                chunk = rules.sse_data(CONTENT_TYPE, [e.encoded for e in events])
            at_tail = seq >= live.core.last_seq
            if events or first:
                control_cursor = rules.response_cursor(cursor, now_ms(), _rng)
                chunk += rules.sse_control(seq, control_cursor, up_to_date=at_tail, closed=False)
                yield chunk
            first = False
            if not at_tail:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or hub.closing or live.gone is not None or live.expired(now_ms()):
                return
            timeout = min(hub.config.stream_long_poll_seconds, remaining)
            try:
                await asyncio.wait_for(asyncio.shield(changed), timeout)
            except TimeoutError:
                keepalive = rules.response_cursor(cursor, now_ms(), _rng)
                yield rules.sse_control(seq, keepalive, up_to_date=True, closed=False)
    except AgentsyncError:
        return  # deleted or expired while reloading: the client's next request says so
    finally:
        if held is not None:
            held.waiters -= 1
        hub.metrics.connections.labels("sse").dec()
        hub.readers_per_session.release(session_id)
