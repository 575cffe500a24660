"""Admission at the edge: who is the client, may it come in, may its browser page.

An ASGI middleware in front of every route. It resolves the client's address (trusting
``X-Forwarded-For`` only from ``--trusted-proxies``), applies the per-address request and
WebSocket-connect rate limits and the per-address cap on open streaming connections, and
checks the ``Origin`` of browser WebSockets. Refusals are the documented answers: 429 with
``Retry-After`` over HTTP; over WebSocket the connection is accepted and closed at once
with a close code (resumable 4029/4003, or terminal 4503 for a foreign origin), never a
silent drop.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import orjson
from starlette.middleware.cors import CORSMiddleware

from agentsync.config import Config
from agentsync.limits import AddressLimits
from agentsync.metrics import Metrics
from agentsync.protocol import AgentsyncError, Forbidden, RateLimited

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger("agentsync.guard")


def parse_networks(spec: str) -> list[Network]:
    networks: list[Network] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SystemExit(
                f"agentsync: --trusted-proxies: {item!r} is not an IP address or CIDR"
            ) from None
    return networks


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(scope: Scope, trusted: list[Network]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    address in ``X-Forwarded-For`` that is not itself a trusted proxy."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not trusted or not _in(peer, trusted):
        return peer
    forwarded = [
        value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name == b"x-forwarded-for"
    ]
    hops = [h.strip() for h in ",".join(forwarded).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class OriginPolicy:
    """Which browser origins may open WebSockets: ``*``, a list, or by default the
    server's own origin (the Host it was reached at, and ``--public-url``)."""

    def __init__(self, config: Config) -> None:
        spec = config.allowed_origins.strip()
        self.any = spec == "*"
        self.allowed = {o.strip().rstrip("/").lower() for o in spec.split(",") if o.strip()}
        if config.public_url:
            parts = urlsplit(config.public_url)
            self.allowed.add(f"{parts.scheme}://{parts.netloc}".lower())

    def allows(self, scope: Scope) -> bool:
        origin = _header(scope, b"origin")
        if origin is None or self.any:
            return True  # not a browser (browsers always send Origin on WebSockets)
        origin = origin.rstrip("/").lower()
        if origin in self.allowed:
            return True
        host = _header(scope, b"host")
        return host is not None and urlsplit(origin).netloc == host.lower()


UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
STREAMING_PATH = re.compile(r"^/v1/sessions/[^/]+/(ws|stream)$")
# Durable Streams: its own CORS policy, and live reads (long-poll, SSE) count as streaming.
DURABLE_STREAMS_PREFIX = "/v1/stream/"
DURABLE_STREAMS_REQUEST_HEADERS = [
    "Authorization", "Content-Type", "If-None-Match", "Stream-Seq", "Stream-TTL",
    "Stream-Expires-At", "Stream-Closed", "Producer-Id", "Producer-Epoch", "Producer-Seq",
    "Stream-Forked-From", "Stream-Fork-Offset", "Stream-Fork-Sub-Offset",
]  # fmt: skip
DURABLE_STREAMS_RESPONSE_HEADERS = [
    "Stream-Next-Offset", "Stream-Cursor", "Stream-Up-To-Date", "Stream-Closed",
    "Stream-TTL", "Stream-Expires-At", "Stream-SSE-Data-Encoding", "Producer-Epoch",
    "Producer-Seq", "Producer-Expected-Seq", "Producer-Received-Seq", "ETag", "Location",
    "Content-Type", "Retry-After",
]  # fmt: skip


SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
CROSS_ORIGIN_RESOURCE = (b"cross-origin-resource-policy", b"cross-origin")


RawResponse = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body
Respond = Callable[[RawResponse], None]


class DirectRoute(Protocol):
    """Requests answered without the ASGI app (the append hot path). ``route`` names the
    stream path of a request it serves. The Guard calls ``serve`` without wrapping ``send``;
    the HTTP protocol (:mod:`.httpproto`) calls ``start`` with the whole body, and it
    calls ``respond`` once, perhaps later, from a callback. Both leave the security
    headers to their caller."""

    def route(self, scope: Scope) -> str | None: ...

    async def serve(
        self,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra_headers: tuple[tuple[bytes, bytes], ...],
    ) -> None: ...

    def start(
        self, path: str, headers: Mapping[str, str], body: bytes, respond: Respond
    ) -> None: ...


class Guard:
    """The one middleware: admission (above), CORS for requests that carry an Origin,
    and the security headers every response carries. One layer instead of three keeps
    the per-request cost down on the append path; ``direct`` (appends) skips even the
    wrapping of ``send`` when no CORS applies, and :meth:`direct_target` admits the
    appends the HTTP protocol answers without ASGI."""

    def __init__(
        self,
        app: ASGIApp,
        config: Config,
        limits: AddressLimits,
        metrics: Metrics,
        direct: DirectRoute | None = None,
    ):
        self.app = app
        self.direct = direct
        cors = [o.strip() for o in config.cors_origins.split(",") if o.strip()]
        self.cors: ASGIApp = CORSMiddleware(
            app,
            allow_origins=cors,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
        self.streams_cors: ASGIApp = CORSMiddleware(
            app,
            allow_origins=cors,
            allow_methods=["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"],
            allow_headers=DURABLE_STREAMS_REQUEST_HEADERS,
            expose_headers=DURABLE_STREAMS_RESPONSE_HEADERS,
            max_age=600,
        )
        self.limits = limits
        self.metrics = metrics
        self.trusted = parse_networks(config.trusted_proxies)
        self.origins = OriginPolicy(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        address = client_address(scope, self.trusted)
        scope.setdefault("state", {})["client_address"] = address
        path = scope.get("path", "")
        durable_stream = path.startswith(DURABLE_STREAMS_PREFIX)
        if kind == "websocket":
            streaming = True
        elif durable_stream:
            streaming = _live_read(scope.get("query_string", b""))
        else:
            streaming = path.startswith("/v1/sessions/") and bool(STREAMING_PATH.match(path))
        try:
            if scope.get("path") in UNLIMITED_PATHS:
                pass  # health probes and scrapes are never refused
            elif kind == "websocket":
                if not self.origins.allows(scope):
                    raise Forbidden(
                        f"origin {_header(scope, b'origin')!r} may not open WebSockets here; "
                        "the operator can allow it with --allowed-origins"
                    )
                await self.limits.ws_connects.acheck(address)
            else:
                await self.limits.requests.acheck(address)
            if streaming:
                self.limits.connections.acquire(address)
        except AgentsyncError as err:
            self.metrics.rejected.labels(err.code).inc()
            log.info("refused %s %s from %s: %s", kind, scope.get("path"), address, err.message)
            if kind == "websocket":
                await _refuse_websocket(receive, send, err)
            else:
                await _refuse_http(_with_security_headers(send, durable_stream), err)
            return
        app = self.app
        if kind == "http":
            if _header(scope, b"origin") is not None:
                app = self.streams_cors if durable_stream else self.cors
            elif durable_stream and not streaming and self.direct is not None:
                target = self.direct.route(scope)
                if target is not None:
                    await self.direct.serve(target, scope, receive, send, STREAM_SECURITY_HEADERS)
                    return
            send = _with_security_headers(send, durable_stream)
        if not streaming:
            await app(scope, receive, send)
            return
        try:
            await app(scope, receive, send)
        finally:
            self.limits.connections.release(address)

    def direct_target(self, scope: Scope) -> str | None:
        """The target of a request that ``direct`` may answer outside ASGI (an append
        without an ``Origin``), admitted here and now; else None, and ``__call__``
        takes the request (and refuses it if it is over its limit). A limit shared
        through Redis is checked only there: it needs a round trip."""
        direct = self.direct
        requests = self.limits.requests
        if direct is None or (requests.shared and requests.enabled):
            return None
        if _header(scope, b"origin") is not None or _live_read(scope.get("query_string", b"")):
            return None
        target = direct.route(scope)
        if target is None:
            return None
        address = client_address(scope, self.trusted)
        try:
            requests.check(address)
        except AgentsyncError:
            return None
        scope.setdefault("state", {})["client_address"] = address
        return target


SECURITY_NAMES = frozenset(name for name, _ in (*SECURITY_HEADERS, CROSS_ORIGIN_RESOURCE))
STREAM_SECURITY_HEADERS = (*SECURITY_HEADERS, CROSS_ORIGIN_RESOURCE)


def _with_security_headers(send: Send, durable_stream: bool = False) -> Send:
    # Durable Streams are read cross-origin by design (their clients run in browsers).
    extra = STREAM_SECURITY_HEADERS if durable_stream else SECURITY_HEADERS

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if any(name.lower() in SECURITY_NAMES for name, _ in headers):  # its own wins
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in present)
            else:
                headers.extend(extra)
            message["headers"] = headers
        await send(message)

    return send_with_headers


async def _refuse_http(send: Send, err: AgentsyncError) -> None:
    headers = [(b"content-type", b"application/json")]
    if isinstance(err, RateLimited) or err.status == 429:
        retry = getattr(err, "retry_after", 1.0)
        headers.append((b"retry-after", str(max(1, int(retry + 0.999))).encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(err.to_json())})


async def _refuse_websocket(receive: Receive, send: Send, err: AgentsyncError) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": err.close_code, "reason": err.message[:120]})


_CREDENTIALS = re.compile(
    r"""([?&](?:token|secret|key)=)[^&\s"']+"""  # ?token=... in a URL
    r"""|("(?:token|secret|read_token|admin_key)"\s*:\s*")[^"]+"""  # "token": "..." in JSON
    r"""|((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+""",  # Authorization header values
    re.IGNORECASE,
)


def _mask(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2) or match.group(3)) + "***"


def mask_tokens(record: logging.LogRecord) -> bool:
    """A logging filter: credentials in a log line (``?token=``, a hello frame's
    ``"token"``, a bearer header) are written as ``***``."""
    try:
        text = record.getMessage()
    except Exception:
        return True
    masked = _CREDENTIALS.sub(_mask, text)
    if masked != text:
        record.msg, record.args = masked, None
    return True


def _live_read(query_string: bytes) -> bool:
    """A Durable Streams long-poll or SSE read, decoded as Starlette decodes the query
    (``?%6Cive=sse`` is ``live=sse`` too)."""
    if not query_string:
        return False
    query = query_string.decode("latin-1")
    return any(key == "live" and value for key, value in parse_qsl(query, keep_blank_values=True))
