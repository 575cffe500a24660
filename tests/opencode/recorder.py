"""A minimal stand-in for opencode's share server that records what the client sends.

Routes (the ones opencode 1.18 uses when ``enterprise.url`` points here):

* ``POST /api/share`` ``{"sessionID"}`` -> ``{"id", "secret", "url"}``, with ``url`` =
  ``http://HOST:PORT/share/<id>`` (the form ``opencode import`` parses back into ``<id>``).
* ``POST /api/share/<id>/sync`` ``{"secret", "data": [{"type", "data"}, ...]}`` -> ``{}``;
  each item replaces the stored one with the same key (:func:`item_key`).
* ``GET /api/share/<id>/data`` -> the merged items, a JSON list in first-seen key order.
* ``DELETE /api/share/<id>`` ``{"secret"}`` -> ``{}``; the share is gone afterwards.

A wrong secret is a 403, an unknown share a 404. Any other request is answered 404 and still
recorded. Every request is appended to :attr:`Recorder.log` as ``{"t", "method", "path",
"headers", "body"}`` with ``t`` in seconds since :meth:`Recorder.start`. Tests may replace
what ``GET .../data`` returns for a share with :attr:`Recorder.data_override`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SHARE = re.compile(r"^/api/share/([A-Za-z0-9_-]+)(/sync|/data)?$")
# Request headers worth keeping in the log (the rest are transport noise).
KEPT_HEADERS = ("content-type", "user-agent", "authorization", "x-org-id", "accept")


def item_key(item: dict[str, Any]) -> str:
    """The key under which opencode's client coalesces a sync item (``ShareNext``)."""
    kind = item.get("type")
    data = item.get("data")
    if kind == "message" and isinstance(data, dict):
        return f"message/{data.get('id')}"
    if kind == "part" and isinstance(data, dict):
        return f"part/{data.get('messageID')}/{data.get('id')}"
    return str(kind)


@dataclass
class Share:
    id: str
    secret: str
    session_id: str
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class Recorder:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    host: str = "127.0.0.1"
    log: list[dict[str, Any]] = field(default_factory=list)
    shares: dict[str, Share] = field(default_factory=dict)
    # share id -> (status, JSON payload) served by GET /api/share/<id>/data instead of items.
    data_override: dict[str, tuple[int, Any]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _started: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Recorder:
        rec = self

        class Handler(_Handler):
            owner = rec

        self._changed = threading.Condition(self._lock)
        self._started = time.monotonic()
        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="share-recorder", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries used by tests -------------------------------------------------------------

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.log)

    def merged(self, share_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.shares[share_id].items.values())

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(recorder)`` is true (checked after every request)."""
        assert self._changed is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, 0.25))

    # -- request handling ------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.log.append(
                {
                    "t": round(time.monotonic() - self._started, 3),
                    "method": method,
                    "path": path,
                    "headers": headers,
                    "body": body,
                }
            )
            try:
                return self._route(method, path, body)
            finally:
                assert self._changed is not None
                self._changed.notify_all()

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        path = path.split("?", 1)[0]
        if method == "POST" and path == "/api/share":
            session_id = body.get("sessionID") if isinstance(body, dict) else None
            if not isinstance(session_id, str):
                return 400, {"error": "sessionID required"}
            share_id = secrets.token_hex(4)
            secret = secrets.token_hex(16)
            self.shares[share_id] = Share(share_id, secret, session_id)
            return 200, {"id": share_id, "secret": secret, "url": f"{self.url}/share/{share_id}"}
        m = _SHARE.match(path)
        if m is None:
            return 404, {"error": "not found"}
        tail = m.group(2)
        if method == "GET" and tail == "/data" and m.group(1) in self.data_override:
            return self.data_override[m.group(1)]
        share = self.shares.get(m.group(1))
        if share is None or share.deleted:
            return 404, {"error": "share not found"}
        if method == "GET" and tail == "/data":
            return 200, list(share.items.values())
        given = body.get("secret") if isinstance(body, dict) else None
        if method == "POST" and tail == "/sync":
            if given != share.secret:
                return 403, {"error": "bad secret"}
            for item in body.get("data") or []:
                share.items[item_key(item)] = item
            return 200, {}
        if method == "DELETE" and tail is None:
            if given != share.secret:
                return 403, {"error": "bad secret"}
            share.deleted = True
            return 200, {}
        return 405, {"error": "method not allowed"}


class _Handler(BaseHTTPRequestHandler):
    owner: Recorder
    server_version = "share-recorder/1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() in KEPT_HEADERS}
        status, payload = self.owner.handle(self.command, self.path, headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _any
