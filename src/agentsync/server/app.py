"""The composition root: a :class:`Node` built from a Config, its ASGI app, and ``run``.

Nothing is global: the node owns the store, the metrics and the hub, and the Starlette
app reaches them through ``app.state``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from agentsync.archive.base import Archive
from agentsync.bus.base import Bus
from agentsync.config import Config
from agentsync.hub import Hub
from agentsync.limits import AddressLimits
from agentsync.metrics import Metrics
from agentsync.protocol import AgentsyncError, BadRequest, NotFound
from agentsync.server import admin, http, openapi, opencode, stream_sessions, ws
from agentsync.server import streams as durable_streams
from agentsync.server.guard import Guard, mask_tokens
from agentsync.server.httpproto import direct_http_protocol
from agentsync.server.web import routes as web
from agentsync.server.wsproto import AgentsyncWebSocketProtocol
from agentsync.store.base import Store
from agentsync.streams.manager import StreamManager
from agentsync.streams.store import StreamStore

log = logging.getLogger("agentsync")
GC_THRESHOLD = 50_000  # allocations between young collections (CPython default: 700)


@dataclass
class Node:
    """One agentsync server process."""

    config: Config
    store: Store  # durable shares, logs and snapshots
    metrics: Metrics  # this node's Prometheus registry
    hub: Hub  # live sessions, fan-out
    limits: AddressLimits  # per-client-address rate limits and connection caps
    streams: StreamManager = field(init=False)  # Durable Streams at /v1/stream/

    def __post_init__(self) -> None:
        self.streams = StreamManager(self.config, make_stream_store(self.store), self.metrics)
        relay = self.hub.relay
        if relay is not None and self.streams.shared:  # writes elsewhere arrive by the bus
            relay.streams = self.streams
            self.streams.signals = relay

    @classmethod
    def from_config(cls, config: Config) -> Node:
        store = make_store(config)
        metrics = Metrics()
        shared = shared_limits(config)
        hub = Hub(config, store, metrics, make_bus(config), shared, archive=make_archive(config))
        return cls(config, store, metrics, hub, AddressLimits(config, shared))


def make_store(config: Config) -> Store:
    """The store ``--store`` names (not opened yet): SQLite in ``--data``, or PostgreSQL."""
    if config.store_backend == "postgresql":
        from agentsync.store.postgres import PostgresStore

        try:
            return PostgresStore.from_url(config.store)
        except ValueError as exc:
            raise SystemExit(f"agentsync: --store {config.store_label}: {exc}") from None
    from agentsync.store.sqlite import SQLiteStore

    return SQLiteStore(config.sqlite_path, synchronous=config.sqlite_synchronous)


def make_stream_store(store: Store) -> StreamStore | None:
    """Durable Streams live in the node's own store (SQLite or PostgreSQL)."""
    from agentsync.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from agentsync.streams.sqlite import SQLiteStreamStore

        return SQLiteStreamStore(store)
    from agentsync.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        from agentsync.streams.postgres import PostgresStreamStore

        return PostgresStreamStore(store)
    return None


def make_bus(config: Config) -> Bus | None:
    """The bus ``--bus`` names, or None for a node that is alone."""
    if not config.bus:
        return None
    if not config.bus.startswith(("redis://", "rediss://", "unix://")):
        raise SystemExit(f"agentsync: --bus {config.bus!r}: use redis://HOST:PORT/DB")
    if config.store_backend == "sqlite":
        raise SystemExit(
            "agentsync: --bus joins nodes that share one store: use it with "
            "--store postgresql://..., not with the SQLite file of one node"
        )
    from agentsync.bus.redis import RedisBus

    return RedisBus(config.bus)


def make_archive(config: Config) -> Archive | None:
    """The archive ``--archive`` names (not opened yet), or None when archiving is off.

    A directory archive belongs to one node: with --bus (several nodes) the default is
    none, and a directory is refused, since another node could not restore from it.
    """
    spec = config.archive.strip()
    if spec.lower() == "none" or (not spec and config.bus):
        return None
    if spec.startswith("s3://"):
        from agentsync.archive.s3 import S3Archive

        try:
            return S3Archive.from_url(spec)
        except ValueError as exc:
            raise SystemExit(f"agentsync: --archive {spec}: {exc}") from None
    if "://" in spec and not spec.startswith("file://"):
        raise SystemExit(f"agentsync: --archive {spec!r}: use a directory, s3://... or none")
    if config.bus:
        raise SystemExit(
            "agentsync: --archive: a directory is this node's alone; with --bus use "
            "s3://BUCKET/PREFIX (shared by the nodes) or none"
        )
    from agentsync.archive.local import LocalArchive

    path = urlsplit(spec).path if spec.startswith("file://") else spec
    return LocalArchive(path or Path(config.data) / "archive")


def shared_limits(config: Config) -> Any | None:
    """With a bus, rate limits are shared through the same Redis (see limits.py)."""
    if not config.bus:
        return None
    from redis.asyncio import Redis

    return Redis.from_url(
        config.bus, single_connection_client=True, socket_timeout=1.0, socket_connect_timeout=1.0
    )


async def _agentsync_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AgentsyncError)
    hub: Hub = request.app.state.hub
    hub.metrics.rejected.labels(exc.code).inc()
    return http.error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return http.error_response(NotFound(f"no route for {request.method} {request.url.path}"))
    err = BadRequest(str(exc.detail))
    err.status = exc.status_code
    err.code = "method_not_allowed" if exc.status_code == 405 else "bad_request"
    return http.error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return http.internal_error_response()


def tune_gc() -> None:
    """Collect garbage less often, and never walk what startup built: under load the
    default thresholds ran a collection every few hundred requests, about a tenth of
    the server's CPU (py-spy, bench/durable_streams.py). Reference counting still
    frees almost everything at once; only cycles wait longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def create_app(node: Node) -> Guard:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.hub.start()
        await node.streams.start()
        tune_gc()
        log.info("agentsync ready: data in %s", node.config.store_label)
        try:
            yield
        finally:
            await node.streams.stop()
            await node.hub.stop()
            log.info("agentsync stopped: every acknowledged event is stored")

    routes = [
        # First: Durable Streams are the most frequent requests (POST is served by
        # durable_streams.Appends before the router).
        Route(
            "/v1/stream/sessions/{session_id}",
            stream_sessions.endpoint,
            methods=stream_sessions.METHODS,
        ),
        Route(
            "/v1/stream/{path:path}",
            durable_streams.endpoint,
            methods=["GET", "HEAD", "PUT", "DELETE", "OPTIONS"],
        ),
        Route("/v1/shares", http.create_share, methods=["POST"]),
        Route("/v1/shares/{session_id}", http.delete_share, methods=["DELETE"]),
        Route("/v1/sessions/import", http.import_session, methods=["POST"]),
        Route("/v1/sessions/{session_id}/events", http.append_events, methods=["POST"]),
        Route("/v1/sessions/{session_id}/events", http.list_events, methods=["GET"]),
        Route("/v1/sessions/{session_id}", http.get_snapshot, methods=["GET"]),
        Route("/v1/sessions/{session_id}/stream", http.stream_events, methods=["GET"]),
        Route("/v1/sessions/{session_id}/export", http.export_session, methods=["GET"]),
        WebSocketRoute("/v1/sessions/{session_id}/ws", ws.websocket_endpoint),
        Route("/api/share", opencode.create_share, methods=["POST"]),
        Route("/api/share/{session_id}/sync", opencode.sync, methods=["POST"]),
        Route("/api/share/{session_id}/data", opencode.share_data, methods=["GET"]),
        Route("/api/share/{session_id}", opencode.delete_share, methods=["DELETE"]),
        Route("/share/{session_id}", web.share_page, methods=["GET"]),
        Route("/static/{name}", web.static_asset, methods=["GET"]),
        Route("/healthz", http.healthz, methods=["GET"]),
        Route("/readyz", http.readyz, methods=["GET"]),
        Route("/metrics", http.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_endpoint, methods=["GET"]),
        Route("/v1/admin/shares", admin.list_shares, methods=["GET"]),
        Route("/v1/admin/shares/{session_id}", admin.show_share, methods=["GET"]),
        Route("/v1/admin/shares/{session_id}", admin.delete_share, methods=["DELETE"]),
        Route("/v1/admin/shares/{session_id}/expire", admin.expire_share, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            AgentsyncError: _agentsync_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.hub = node.hub
    app.state.node = node
    app.state.streams = node.streams
    app.state.limits = node.limits
    app.state.draining = False
    # The Guard admits every request; appends (the hot path) are answered before
    # Starlette's own middleware and router (straight from the Guard when no CORS
    # applies), the rest by the app.
    appends = durable_streams.Appends(app, node.streams)
    return Guard(
        appends, config=node.config, limits=node.limits, metrics=node.metrics, direct=appends
    )


class _Server(uvicorn.Server):
    """uvicorn, told to close our readers with a resumable code before its own shutdown."""

    def __init__(
        self, config: uvicorn.Config, hub: Hub, streams: StreamManager | None = None
    ) -> None:
        super().__init__(config)
        self.hub = hub
        self.streams = streams

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("shutting down: closing readers with 4000 (resume), flushing writes")
        self.hub.begin_shutdown()
        if self.streams is not None:
            self.streams.begin_shutdown()
        await super().shutdown(sockets)


def uvicorn_config(node: Node, app: Guard) -> uvicorn.Config:
    config = node.config
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ws=AgentsyncWebSocketProtocol,
        http=direct_http_protocol(app),  # httptools, with appends answered without a task
        loop="uvloop" if _has_uvloop() else "asyncio",
        ws_per_message_deflate=config.ws_compression,
        ws_max_size=config.max_frame_bytes,
        proxy_headers=False,  # the guard reads X-Forwarded-For, from --trusted-proxies only
        server_header=False,  # no "server: uvicorn" on every response (one header less)
        lifespan="on",
        log_level=config.log_level,
        access_log=config.log_level == "debug",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=config.keep_alive_seconds,  # type: ignore[arg-type]  # a float works
    )


class _ConnectionLogFilter(logging.Filter):
    """Per-connection WebSocket lines are access logs: shown only at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not (
            msg.startswith('%s - "WebSocket')
            or msg.startswith("connection ")
            # a client's bad frame (closed with 1007), not a server error: any client
            # could otherwise flood the log with tracebacks
            or msg.startswith("Invalid UTF-8 sequence received from client")
            # an SSE reader that stopped reading, cut off on purpose (and logged so)
            or (msg.startswith("ASGI callable returned without") and durable_streams.CUT_OFF.get())
        )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT; exit cleanly after closing readers and flushing."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The store's threads hand the GIL back and forth with the event loop; at the default
    # 5 ms switch interval a loop waiting for the GIL shows up as 5 ms p99 fan-out latency.
    sys.setswitchinterval(config.gil_switch_ms / 1000)
    config.check()
    if config.log_level != "debug":
        logging.getLogger("uvicorn.error").addFilter(_ConnectionLogFilter())
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(mask_tokens)
    node = Node.from_config(config)
    server = _Server(uvicorn_config(node, create_app(node)), node.hub, node.streams)
    # uvicorn re-raises the signal it caught once it has shut down; with these handlers in
    # place that re-raise is harmless and the process exits 0 after a clean shutdown.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise SystemExit(1)
