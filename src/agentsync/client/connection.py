"""The connection to one share: publishes outbox rows in order, reads the log, reconnects.

Theory of operation. A :class:`Connection` holds the rows its outbox committed and the
server has not acknowledged (``_unacked``, in outbox order). On every (re)connect all of
them are sent again from the first, in ``publish`` frames of up to ``MAX_BATCH`` events,
with at most ``window`` frames in flight; the server deduplicates by event id, so a row
that was stored before a connection broke gets its original seq and nothing doubles. An
``ack`` removes its rows here and in the outbox. Any publish ``error`` that may pass
(rate limit, overload) drops the connection and resends from the first unacknowledged row,
so a later frame can never overtake an earlier one; an error that will not pass (invalid
event) is isolated by resending that batch one event at a time, and the single event the
server refuses is dropped and recorded in ``rejected``.

Reading: the same connection receives the log. ``(epoch, seq)`` of the last event seen is
sent as ``hello.since/epoch`` on reconnect, so readers resume without gap or duplicate; a
fresh ``init`` (the log was replaced) is handed to ``on_snapshot`` again.

Failures: close codes 4000-4499, other closes and network errors reconnect after an
exponential backoff with full jitter (``random.uniform(0, min(cap, base * 2**n))``);
4500-4999 and HTTP 401/403/404/410 stop the connection with the matching
:class:`~agentsync.protocol.AgentsyncError` in ``failed``. When the WebSocket handshake is
refused (a proxy without upgrade support), the connection falls back to HTTP: POST batches
and a long-poll reader, retrying the WebSocket every ``HTTP_FALLBACK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agentsync import protocol
from agentsync.client.outbox import Outbox, OutboxRow
from agentsync.protocol import AgentsyncError, is_resumable

log = logging.getLogger("agentsync.client")

MAX_BATCH: Final = 500  # events per publish frame (the server takes up to 1000)
MAX_BATCH_BYTES: Final = 512 * 1024  # the server refuses frames over 1 MiB
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 30.0
HTTP_FALLBACK_SECONDS: Final = 60.0
LONG_POLL_WAIT: Final = 25
MAX_RECEIVE_BYTES: Final = 64 * 1024 * 1024

# Which error a terminal close code or HTTP status stands for.
_BY_CLOSE: Final[dict[int, type[AgentsyncError]]] = {
    protocol.CLOSE_PROTOCOL_ERROR: protocol.BadRequest,
    protocol.CLOSE_UNAUTHORIZED: protocol.Unauthorized,
    protocol.CLOSE_FORBIDDEN: protocol.Forbidden,
    protocol.CLOSE_NOT_FOUND: protocol.NotFound,
    protocol.CLOSE_GONE: protocol.Gone,
    protocol.CLOSE_TOO_LARGE: protocol.PayloadTooLarge,
}
_BY_STATUS: Final[dict[int, type[AgentsyncError]]] = {
    400: protocol.BadRequest,
    401: protocol.Unauthorized,
    403: protocol.Forbidden,
    404: protocol.NotFound,
    409: protocol.Conflict,
    410: protocol.Gone,
    413: protocol.PayloadTooLarge,
    422: protocol.InvalidEvent,
}
_TERMINAL_STATUS: Final = frozenset({401, 403, 404, 410})
_RETRYABLE_CODES: Final = frozenset({"rate_limited", "unavailable", "too_many_connections"})


def error_for_close(code: int, reason: str) -> AgentsyncError:
    """The error a terminal close code means (4510 → ``Gone``, 4503 → ``Forbidden``…)."""
    kind = _BY_CLOSE.get(code, AgentsyncError)
    return kind(f"the server closed the connection for good ({code}): {reason or kind.code}")


def error_for_response(resp: httpx.Response) -> AgentsyncError:
    """The error an HTTP error response stands for, with the server's code and message."""
    kind = _BY_STATUS.get(resp.status_code, AgentsyncError)
    code, message = kind.code, f"HTTP {resp.status_code}"
    with contextlib.suppress(Exception):
        body = resp.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    return kind(message, code=code)


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt))``; attempt 0 is < 0.5 s."""
    return random.uniform(0.0, min(cap, base * 2 ** min(attempt, 32)))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The session's state at ``seq``: what a reader gets first."""

    session: dict[str, Any]
    messages: list[dict[str, Any]]
    status: str | None
    seq: int
    epoch: str

    @classmethod
    def from_json(cls, snap: dict[str, Any], seq: int, epoch: str) -> Snapshot:
        return cls(
            session=snap.get("session") or {},
            messages=list(snap.get("messages") or []),
            status=snap.get("status"),
            seq=seq,
            epoch=epoch,
        )


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event of the log, with its seq."""

    seq: int
    id: str
    type: str
    ts: int
    data: dict[str, Any]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ReceivedEvent:
        return cls(int(obj["seq"]), str(obj["id"]), str(obj["type"]), int(obj["ts"]), obj["data"])


@dataclass(frozen=True, slots=True)
class Rejected:
    """An outbox event the server refused for good (it will never be resent)."""

    row: OutboxRow
    error: AgentsyncError


class _Retry(Exception):
    """End this connection attempt and reconnect (after ``delay`` if given)."""

    def __init__(self, why: str, delay: float | None = None) -> None:
        super().__init__(why)
        self.delay = delay


class _Fallback(Exception):
    """The WebSocket handshake was refused: use HTTP for a while."""


class Connection:
    """One share's link to the server: a publisher of outbox rows and/or a reader."""

    def __init__(
        self,
        base_url: str,
        session_id: str,
        *,
        secret: str | None = None,
        token: str | None = None,
        name: str | None = None,
        outbox: Outbox | None = None,
        on_event: Callable[[ReceivedEvent], None] | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        transport: str = "auto",
        window: int = 1,
    ) -> None:
        if transport not in ("auto", "ws", "http"):
            raise ValueError("transport must be 'auto', 'ws' or 'http'")
        if outbox is not None and secret is None:
            raise ValueError("publishing needs the share's secret")
        self.base_url = base_url.rstrip("/")
        self.session_id = session_id
        self.secret = secret
        self.token = secret or token
        self.name = name
        self.outbox = outbox
        self.on_event = on_event
        self.on_snapshot = on_snapshot
        self.transport = transport
        self.window = max(1, window)
        # reader position
        self.epoch: str | None = None
        self.seq: int | None = None
        self.participants: list[dict[str, Any]] = []
        # publisher state
        self._unacked: collections.deque[OutboxRow] = collections.deque()
        self._sent = 0  # rows at the head of _unacked that are in flight
        self._inflight: dict[int, list[OutboxRow]] = {}
        self._single_until = 0  # send rows with ord <= this one at a time (isolating a bad one)
        self._ref = 0
        self._committed_generation = 0
        self.rejected: list[Rejected] = []
        # lifecycle
        self.failed: AgentsyncError | None = None
        self.connected = False
        self.connects = 0  # successful (re)connects, for tests and diagnostics
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._http_until = 0.0
        self._ws: ClientConnection | None = None
        self._connected_in_attempt = False
        self._http_path = f"/v1/sessions/{session_id}"

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Attach to the outbox (rows left by a previous process go first) and connect."""
        self._loop = asyncio.get_running_loop()
        if self.outbox is not None:
            leftover = self.outbox.attach(self.session_id, self._on_committed_threadsafe)
            self._unacked.extend(leftover)
            self._committed_generation = self.outbox.committed_generation
        self._task = asyncio.create_task(self._run(), name=f"agentsync-{self.session_id}")

    async def stop(self) -> None:
        """Disconnect now (unacknowledged rows stay in the outbox for next time)."""
        if self.outbox is not None:
            self.outbox.detach(self.session_id, self._on_committed_threadsafe)
        if self._task is not None:
            await _cancel(self._task)
        self._notify()

    @property
    def pending(self) -> int:
        """Events committed to the outbox and not yet acknowledged."""
        return len(self._unacked)

    async def flush(self) -> None:
        """Wait until every event enqueued so far is committed and acknowledged.

        Raises the terminal error if the connection stopped (bound it with
        ``asyncio.timeout``).
        """
        assert self.outbox is not None
        target = self.outbox.generation
        while True:
            self._raise_if_failed()
            if self.outbox.error is not None:
                raise RuntimeError("the outbox writer failed") from self.outbox.error
            if self._committed_generation >= target and not self._unacked:
                return
            await self.wait_changed(0.5)

    async def wait_changed(self, at_most: float) -> None:
        """Return when the state changed (acks, commits, connects) or after ``at_most``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            # Not wait_for: on 3.11 it swallows a cancel that races the result.
            await asyncio.wait([fut], timeout=at_most)
        finally:
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _raise_if_failed(self) -> None:
        if self.failed is not None:
            raise self.failed

    # --- outbox → here (called from the outbox's writer thread) ------------------------

    def _on_committed_threadsafe(self, rows: list[OutboxRow], generation: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._on_committed, rows, generation)

    def _on_committed(self, rows: list[OutboxRow], generation: int) -> None:
        self._unacked.extend(rows)
        self._committed_generation = max(self._committed_generation, generation)
        self._notify()

    # --- the reconnect loop ------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                use_http = self.transport == "http" or (
                    self.transport == "auto" and time.monotonic() < self._http_until
                )
                if use_http:
                    await self._run_http()
                else:
                    await self._run_ws()
                delay: float | None = None
            except AgentsyncError as err:
                self._fail(err)
                return
            except _Fallback as exc:
                log.info("share %s: WebSocket refused (%s); using HTTP", self.session_id, exc)
                self._http_until = time.monotonic() + HTTP_FALLBACK_SECONDS
                continue
            except _Retry as exc:
                delay = exc.delay
                log.debug("share %s: reconnecting: %s", self.session_id, exc)
            except (OSError, ConnectionClosed, InvalidHandshake, httpx.TransportError,
                    TimeoutError) as exc:  # fmt: skip
                delay = None
                log.debug("share %s: connection lost: %r", self.session_id, exc)
            finally:
                self.connected = False
                self._ws = None
            if self._connected_in_attempt:
                attempt = 0
            self._connected_in_attempt = False
            await asyncio.sleep(delay if delay is not None else backoff_delay(attempt))
            attempt += 1

    def _fail(self, err: AgentsyncError) -> None:
        self.failed = err
        log.warning("share %s: stopped: %s", self.session_id, err)
        self._notify()

    def _on_connected(self) -> None:
        self.connected = True
        self._connected_in_attempt = True
        self.connects += 1
        self._sent = 0
        self._inflight.clear()
        self._notify()

    # --- reading -----------------------------------------------------------------------

    def _on_init(self, snap: dict[str, Any], seq: int, epoch: str) -> None:
        self.epoch, self.seq = epoch, seq
        if self.on_snapshot is not None:
            self.on_snapshot(Snapshot.from_json(snap, seq, epoch))

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        for obj in events:
            seq = int(obj["seq"])
            if self.seq is not None and seq <= self.seq:
                continue
            self.seq = seq
            if self.on_event is not None:
                self.on_event(ReceivedEvent.from_json(obj))

    # --- publishing --------------------------------------------------------------------

    def _next_batch(self) -> list[OutboxRow] | None:
        """The rows to send next, or None when nothing may be sent now."""
        if len(self._inflight) >= self.window or self._sent >= len(self._unacked):
            return None
        batch: list[OutboxRow] = []
        size = 0
        for i in range(self._sent, len(self._unacked)):
            row = self._unacked[i]
            if batch and row.ord <= self._single_until:
                break
            size += 64 + len(row.id) + len(str(row.data))
            if batch and (len(batch) >= MAX_BATCH or size > MAX_BATCH_BYTES):
                break
            batch.append(row)
            if row.ord <= self._single_until:
                break
        self._sent += len(batch)
        self._ref += 1
        self._inflight[self._ref] = batch
        return batch

    def _acked(self, ref: int) -> None:
        batch = self._inflight.pop(ref, None)
        if batch is None:
            return
        # Frames are sent in order and the head of _unacked is always the oldest in flight.
        for _ in batch:
            self._unacked.popleft()
        self._sent -= len(batch)
        if self.outbox is not None:
            self.outbox.ack([row.ord for row in batch])
        self._notify()

    def _refused(self, ref: int, err: AgentsyncError) -> None:
        """A publish the server will never accept: isolate and drop the bad event."""
        batch = self._inflight.get(ref)
        if batch is None:
            return
        if isinstance(err, (protocol.Forbidden, protocol.Unauthorized, protocol.NotFound,
                            protocol.Gone)):  # fmt: skip
            raise err
        if len(batch) > 1:
            self._single_until = batch[-1].ord
            raise _Retry(f"isolating a refused event ({err.code})", delay=0.0)
        log.error("share %s: event %s refused: %s", self.session_id, batch[0].id, err.message)
        self.rejected.append(Rejected(batch[0], err))
        self._acked(ref)

    # --- WebSocket ---------------------------------------------------------------------

    def _ws_url(self) -> str:
        url = self.base_url
        url = "ws" + url[4:] if url.startswith("http") else url
        return f"{url}/v1/sessions/{self.session_id}/ws"

    async def _run_ws(self) -> None:
        try:
            ws = await connect(
                self._ws_url(),
                compression=None,
                max_size=MAX_RECEIVE_BYTES,
                open_timeout=10,
                proxy=None,
                ping_interval=10,
                ping_timeout=10,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 404, 410) or status >= 500 or status == 429:
                raise _Retry(f"handshake refused with HTTP {status}") from exc
            if self.transport == "auto":
                raise _Fallback(f"HTTP {status}") from exc
            raise
        except InvalidHandshake as exc:
            if self.transport == "auto":
                raise _Fallback(str(exc)) from exc
            raise
        self._ws = ws
        try:
            async with ws:
                await self._session_ws(ws)
        except ConnectionClosed:
            pass
        code = ws.close_code if ws.close_code is not None else 1006
        reason = ws.close_reason or ""
        if 4500 <= code < 5000:
            raise error_for_close(code, reason)
        if not is_resumable(code):
            log.debug("share %s: closed with %d %s", self.session_id, code, reason)
        raise _Retry(f"closed with {code} {reason}")

    async def _session_ws(self, ws: ClientConnection) -> None:
        hello: dict[str, Any] = {"op": "hello"}
        if self.token is not None:
            hello["token"] = self.token
        if self.name is not None:
            hello["name"] = self.name
        if self.seq is not None and self.epoch is not None:
            hello["since"], hello["epoch"] = self.seq, self.epoch
        await ws.send(orjson.dumps(hello).decode())
        greeting = orjson.loads(await ws.recv())
        op = greeting.get("op")
        self.participants = list(greeting.get("participants") or [])
        if op == "init":
            self._on_init(greeting["snapshot"], int(greeting["seq"]), str(greeting["epoch"]))
        elif op == "events":
            self.epoch = str(greeting["epoch"])
            self._on_events(greeting["events"])
        else:
            raise protocol.BadRequest(f"unexpected greeting {op!r}")
        if self.outbox is not None and not greeting.get("reader", {}).get("can_write", True):
            raise protocol.Forbidden("the server did not accept the secret for publishing")
        self._on_connected()
        sender = asyncio.create_task(self._ws_sender(ws))
        try:
            async for raw in ws:
                self._on_frame(orjson.loads(raw))
                if sender.done():
                    sender.result()
        finally:
            await _cancel(sender)

    async def _ws_sender(self, ws: ClientConnection) -> None:
        if self.outbox is None:
            return
        while True:
            batch = self._next_batch()
            if batch is None:
                await self.wait_changed(1.0)
                continue
            frame = {"op": "publish", "ref": self._ref, "events": [r.wire() for r in batch]}
            await ws.send(orjson.dumps(frame).decode())

    def _on_frame(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "events":
            self._on_events(msg["events"])
        elif op == "ack":
            self._acked(int(msg["ref"]))
        elif op == "error":
            ref = msg.get("ref")
            code = str(msg.get("code"))
            if code in _RETRYABLE_CODES:
                raise _Retry(f"publish refused: {code}", delay=float(msg.get("retry_after", 1.0)))
            kinds = (k for k in _BY_STATUS.values() if k.code == code)
            kind = next(kinds, protocol.InvalidEvent)
            err = kind(str(msg.get("message")), code=code)
            if isinstance(ref, int):
                self._refused(ref, err)
            else:
                raise err
        elif op == "presence":
            self.participants = list(msg.get("participants") or [])

    # --- HTTP fallback -----------------------------------------------------------------

    async def _run_http(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(10.0, read=LONG_POLL_WAIT + 10.0),
        ) as http:
            if self.seq is None:
                resp = await http.get(self._http_path)
                self._check(resp)
                snap = resp.json()
                self._on_init(snap, int(snap["seq"]), str(snap["epoch"]))
            self._on_connected()
            ends = self._http_until if self.transport == "auto" else float("inf")
            tasks = [asyncio.create_task(self._poll(http))]
            if self.outbox is not None:
                tasks.append(asyncio.create_task(self._post(http)))
            try:
                done, _ = await asyncio.wait(
                    tasks,
                    timeout=max(0.0, ends - time.monotonic()) if ends != float("inf") else None,
                    return_when=asyncio.FIRST_EXCEPTION,
                )
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _check(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        if resp.status_code in _TERMINAL_STATUS:
            raise error_for_response(resp)
        retry_after = resp.headers.get("retry-after")
        delay = float(retry_after) if retry_after else None
        raise _Retry(f"HTTP {resp.status_code}", delay=delay)

    async def _poll(self, http: httpx.AsyncClient) -> None:
        while True:
            params: dict[str, Any] = {"since": self.seq or 0, "wait": LONG_POLL_WAIT,
                                      "limit": 1000}  # fmt: skip
            if self.epoch is not None:
                params["epoch"] = self.epoch
            resp = await http.get(self._http_path + "/events", params=params)
            if resp.status_code == 409:  # the log was replaced: start again from a snapshot
                self.seq = None
                snap_resp = await http.get(self._http_path)
                self._check(snap_resp)
                snap = snap_resp.json()
                self._on_init(snap, int(snap["seq"]), str(snap["epoch"]))
                continue
            self._check(resp)
            body = resp.json()
            self.epoch = str(body["epoch"])
            self._on_events(body["events"])

    async def _post(self, http: httpx.AsyncClient) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                await self.wait_changed(1.0)
                continue
            ref = self._ref
            resp = await http.post(self._http_path + "/events", content=orjson.dumps(
                {"events": [r.wire() for r in batch]}
            ), headers={"Content-Type": "application/json"})  # fmt: skip
            if resp.status_code in (400, 413, 422):
                self._refused(ref, error_for_response(resp))
                continue
            self._check(resp)
            self._acked(ref)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it, without swallowing our own cancellation."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception as exc:
        log.debug("task ended with %r", exc)


__all__ = [
    "Connection",
    "ReceivedEvent",
    "Rejected",
    "Snapshot",
    "backoff_delay",
    "error_for_close",
    "error_for_response",
]
