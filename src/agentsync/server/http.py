"""HTTP handlers: shares, events (append, page, long-poll), snapshot, SSE, export/import.

Handlers translate requests to hub calls and errors to ``{"error": {...}}`` responses;
decisions about seqs, order and limits live in the hub and the session core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from agentsync import auth, protocol
from agentsync.hub import Hub, LiveSession
from agentsync.protocol import (
    AgentsyncError,
    BadRequest,
    Conflict,
    Event,
    Forbidden,
    PayloadTooLarge,
    TooManyConnections,
    Unauthorized,
)
from agentsync.session import CatchUp
from agentsync.store.base import ShareRecord

log = logging.getLogger("agentsync.http")

JSON = "application/json"
SSE_KEEPALIVE = 15.0
MAX_WAIT = 60.0


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status, headers=headers, media_type=JSON)


def error_response(err: AgentsyncError) -> Response:
    headers = {}
    if isinstance(err, protocol.RateLimited):
        headers["Retry-After"] = str(max(1, int(err.retry_after + 0.999)))
    return json_response(err.to_json(), err.status, headers)


def internal_error_response() -> Response:
    """The 500 for an unexpected error, already logged with its traceback."""
    return json_response(
        {"error": {"code": "internal", "message": "internal error; see the server log"}}, 500
    )


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def credential(request: Request) -> str | None:
    """A bearer token, or ``?token=`` (for browsers that cannot set headers)."""
    return auth.bearer(request.headers.get("authorization")) or request.query_params.get("token")


def authorize_read(share: ShareRecord, token: str | None) -> None:
    """Public shares are readable by anyone with the link; token shares need a credential."""
    if share.read == "public":
        return
    if token is None:
        raise Unauthorized("this share needs its read token: 'Authorization: Bearer <token>'")
    if not (auth.matches(token, share.read_token_hash) or auth.matches(token, share.secret_hash)):
        raise Forbidden("the token does not match this share")


async def read_body(request: Request, limit: int) -> bytes:
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body from ASGI messages, refused with 413 past ``limit`` bytes (at once
    when Content-Length says so); a client gone mid-body raises ClientDisconnect."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    body = await read_body(request, hub_of(request).config.max_body_bytes)
    if optional and not body.strip():
        return {}
    obj = protocol.decode_json(body)
    if not isinstance(obj, dict):
        raise BadRequest("the body must be a JSON object", code="wrong_type")
    return obj


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name!r} must be between {lo} and {hi}")
    return value


def _float_param(request: Request, name: str, default: float, hi: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number, got {raw!r}") from None
    if not 0 <= value <= hi:
        raise BadRequest(f"query parameter {name!r} must be between 0 and {hi:g}")
    return value


async def readable_session(request: Request) -> LiveSession:
    live = await hub_of(request).get(request.path_params["session_id"])
    authorize_read(live.share, credential(request))
    return live


def encode_page(events: list[Event], last_seq: int, epoch: str) -> bytes:
    return b'{"events":[%s],"last_seq":%d,"epoch":%s}' % (
        b",".join(e.encoded for e in events),
        last_seq,
        orjson.dumps(epoch),
    )


# --- shares ----------------------------------------------------------------------------


def client_address(request: Request) -> str:
    address: str = request.scope.get("state", {}).get("client_address", "unknown")
    return address


def is_admin(request: Request) -> bool:
    key = hub_of(request).config.admin_key
    presented = auth.bearer(request.headers.get("authorization"))
    return bool(key) and presented is not None and hmac.compare_digest(presented, key)


def require_admin(request: Request) -> None:
    if not hub_of(request).config.admin_key:
        raise Forbidden("the admin API is off: start the server with --admin-key KEY")
    if auth.bearer(request.headers.get("authorization")) is None:
        raise Unauthorized("send the operator key: 'Authorization: Bearer <admin key>'")
    if not is_admin(request):
        raise Forbidden("that is not the operator key")


async def admit_creation(request: Request) -> None:
    """Creating a share (or importing one) is open on loopback, else needs the operator
    key; either way an address may create only ``--shares-per-hour``."""
    hub = hub_of(request)
    if hub.config.create_needs_admin:
        require_admin(request)
    elif not is_admin(request):
        await request.app.state.limits.share_creates.acheck(client_address(request))


async def create_share(request: Request) -> Response:
    hub = hub_of(request)
    await admit_creation(request)
    body = await read_json_object(request, optional=True)
    share, secret, read_token = new_share_from(hub, body)
    await hub.store.create_share(share)
    log.info(
        "share %s created (read=%s, expires in %ds)",
        share.id,
        share.read,
        (share.expires_at or 0) // 1000 - share.created_at // 1000,
    )
    return json_response(share_created(hub, share, secret, read_token), 201)


def new_share_from(hub: Hub, body: dict[str, Any]) -> tuple[ShareRecord, str, str | None]:
    config = hub.config
    title = body.get("title", "")
    if not isinstance(title, str) or len(title) > 500 or "\x00" in title:
        raise BadRequest("'title' must be a string of at most 500 characters, without NUL")
    ttl = body.get("ttl_seconds", config.default_ttl_seconds)
    if ttl is None:
        ttl = config.default_ttl_seconds
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= config.max_ttl_seconds:
        raise BadRequest(f"'ttl_seconds' must be an integer from 1 to {config.max_ttl_seconds}")
    read = body.get("read", "public")
    if read not in ("public", "token"):
        raise BadRequest('\'read\' must be "public" or "token"')
    secret = auth.new_secret()
    read_token = auth.new_secret() if read == "token" else None
    now = protocol.now_ms()
    share = ShareRecord(
        id=auth.new_share_id(),
        title=title,
        created_at=now,
        expires_at=now + ttl * 1000,
        read=read,
        secret_hash=auth.hash_secret(secret),
        read_token_hash=auth.hash_secret(read_token) if read_token else None,
        epoch=protocol.new_id(8),
    )
    return share, secret, read_token


def share_created(hub: Hub, share: ShareRecord, secret: str, token: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "session_id": share.id,
        "share_url": f"{hub.config.base_url}/share/{share.id}",
        "secret": secret,
        "expires_at": share.expires_at,
        "read": share.read,
        "epoch": share.epoch,
    }
    if token is not None:
        out["read_token"] = token
    return out


async def delete_share(request: Request) -> Response:
    hub = hub_of(request)
    # The share's record holds the secret's hash: an archived log is deleted where it
    # lies, never restored first.
    share = await hub.get_share(request.path_params["session_id"])
    auth.require_secret(auth.bearer(request.headers.get("authorization")), share.secret_hash)
    await hub.delete(share.id)
    log.info("share %s deleted by its owner", share.id)
    return Response(status_code=204)


# --- events ----------------------------------------------------------------------------


async def append_events(request: Request) -> Response:
    hub = hub_of(request)
    live = await hub.get(request.path_params["session_id"])
    auth.require_secret(auth.bearer(request.headers.get("authorization")), live.share.secret_hash)
    body = await read_json_object(request)
    if "events" not in body:
        raise BadRequest('the body must be {"events": [...]}', code="missing_field")
    batch = protocol.parse_events(body["events"], max_batch=hub.config.max_batch)
    result = await hub.append(live, batch)
    return json_response({"seqs": result.seqs, "last_seq": result.last_seq, "epoch": result.epoch})


async def list_events(request: Request) -> Response:
    hub = hub_of(request)
    live = await readable_session(request)
    since = _int_param(request, "since", 0, 0, 2**53)
    limit = _int_param(request, "limit", 1000, 1, 10_000)
    wait = _float_param(request, "wait", 0.0, MAX_WAIT)
    epoch = request.query_params.get("epoch")
    if epoch and epoch != live.core.epoch:
        raise Conflict(
            f"epoch {epoch!r} is not the log's epoch {live.core.epoch!r}: re-read the snapshot",
            code="epoch_changed",
        )
    live = await hub.catch_up_to(live, since)
    if since > live.core.last_seq:
        raise Conflict(
            f"since={since} is beyond the log (last seq {live.core.last_seq})", code="seq_ahead"
        )
    events = await hub.events_after(live, since, limit)
    if not events and wait > 0:
        live.waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(live.wait_changed()), wait)
        finally:
            live.waiters -= 1
        live = await readable_session(request)
        events = await hub.events_after(live, since, limit)
    return Response(encode_page(events, live.core.last_seq, live.core.epoch), media_type=JSON)


async def get_snapshot(request: Request) -> Response:
    live = await readable_session(request)
    return json_response(live.core.snapshot())


# --- Server-Sent Events ----------------------------------------------------------------


async def stream_events(request: Request) -> Response:
    hub = hub_of(request)
    live = await readable_session(request)
    last_event_id = request.headers.get("last-event-id")
    since: int | None = None
    if last_event_id not in (None, ""):
        try:
            since = int(last_event_id or "")
        except ValueError:
            raise BadRequest("Last-Event-ID must be a seq") from None
    elif request.query_params.get("since") not in (None, ""):
        since = _int_param(request, "since", 0, 0, 2**53)
    if since is not None:
        live = await hub.catch_up_to(live, since)
    plan = live.core.plan_resume(request.query_params.get("epoch"), since)
    counter = hub.readers_per_session
    if counter.limit and counter.count(live.id) >= counter.limit:
        raise TooManyConnections(f"session {live.id} has {counter.limit} readers (the limit)")
    return StreamingResponse(
        _sse(hub, live, plan.since if isinstance(plan, CatchUp) else None),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(hub: Hub, live: LiveSession, since: int | None) -> AsyncIterator[bytes]:
    live.waiters += 1
    hub.metrics.connections.labels("sse").inc()
    session_id = live.id
    hub.readers_per_session.acquire_unchecked(session_id)
    try:
        yield b"retry: 1000\n\n"
        if since is None:
            snap = live.core.snapshot()
            since = live.core.last_seq
            yield b"event: init\nid: %d\ndata: %s\n\n" % (since, orjson.dumps(snap))
        cursor = since
        while True:
            if hub.sessions.get(live.id) is not live:
                if live.gone is not None:
                    break
                live.waiters -= 1
                try:
                    live = await hub.get(live.id)
                finally:
                    live.waiters += 1
            changed = live.wait_changed()
            events = await hub.events_after(live, cursor, hub.config.max_frame_events)
            if events:
                cursor = events[-1].seq
                hub.metrics.events_out.labels("sse").inc(len(events))
                yield b"".join(b"id: %d\ndata: %s\n\n" % (e.seq, e.encoded) for e in events)
                continue
            if live.gone is not None or hub.closing:
                break
            try:
                await asyncio.wait_for(asyncio.shield(changed), SSE_KEEPALIVE)
            except TimeoutError:
                yield b": keepalive\n\n"
        if live.gone is not None:
            err = protocol.Gone(f"share was {live.gone}")
            yield b"event: error\ndata: %s\n\n" % orjson.dumps(err.to_json())
    except AgentsyncError as err:
        yield b"event: error\ndata: %s\n\n" % orjson.dumps(err.to_json())
    finally:
        live.waiters -= 1
        hub.metrics.connections.labels("sse").dec()
        hub.readers_per_session.release(session_id)


# --- export and import -----------------------------------------------------------------

EXPORT_FORMAT = "agentsync.export/1"


async def export_session(request: Request) -> Response:
    hub = hub_of(request)
    live = await readable_session(request)
    last = live.core.last_seq

    async def lines() -> AsyncIterator[bytes]:
        header = {
            "format": EXPORT_FORMAT,
            "session": live.core.state.info,
            "epoch": live.core.epoch,
            "last_seq": last,
        }
        yield orjson.dumps(header) + b"\n"
        cursor = 0
        while cursor < last:
            page = await hub.store.read_events(live.id, cursor, 1000)
            page = [e for e in page if e.seq <= last]
            if not page:
                break
            yield b"".join(e.encoded + b"\n" for e in page)
            cursor = page[-1].seq

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{live.id}.jsonl"'},
    )


async def import_session(request: Request) -> Response:
    hub = hub_of(request)
    await admit_creation(request)
    body = await read_body(request, hub.config.max_body_bytes * 16)
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise BadRequest("the body must be an agentsync export (JSON Lines)")
    header = protocol.decode_json(lines[0])
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise BadRequest(f"the first line must be an export header with format {EXPORT_FORMAT!r}")
    batch: list[protocol.NewEvent] = []
    for i, line in enumerate(lines[1:]):
        batch.append(protocol.parse_event(protocol.decode_json(line), i))
    info = header.get("session") if isinstance(header.get("session"), dict) else {}
    options: dict[str, Any] = {"title": info.get("title", "") if info else ""}
    read = request.query_params.get("read")
    if read is not None:
        options["read"] = read  # validated with the rest by new_share_from (400 if bad)
    share, secret, read_token = new_share_from(hub, options)
    await hub.store.create_share(share)
    live = await hub.get(share.id)
    step = hub.config.max_batch
    try:
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            await hub.append(live, chunk, rate_limited=False)
    except AgentsyncError:
        await hub.delete(share.id)
        raise
    out = share_created(hub, share, secret, read_token)
    out["imported"] = len(batch)
    log.info("share %s imported with %d events", share.id, len(batch))
    return json_response(out, 201)


# --- health ----------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    hub = hub_of(request)
    try:
        await asyncio.wait_for(hub.store.ping(), 2.0)
    except Exception as exc:
        return json_response({"status": "unavailable", "store": str(exc)}, 503)
    if getattr(request.app.state, "draining", False):
        return json_response({"status": "draining"}, 503)
    body: dict[str, Any] = {"status": "ready", "sessions_loaded": len(hub.sessions)}
    if hub.relay is not None:
        # Without the bus a node still stores every write and serves its own readers;
        # taking it out of the balancer would not help, so it stays ready, degraded.
        try:
            await asyncio.wait_for(hub.relay.bus.ping(), 2.0)
            body["bus"] = "up"
        except Exception as exc:
            body.update(status="degraded", bus=f"down: {exc}")
    return json_response(body)


async def metrics(request: Request) -> Response:
    return Response(
        hub_of(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
