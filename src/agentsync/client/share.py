"""``AsyncShare``: stream an agent's session into agentsync from asyncio code.

Writer methods (``add_message``, ``stream_text``, ``tool_call`` …) only append to the
durable outbox and return: they never wait for the network and may be called from any
thread. ``flush()`` waits until everything is committed and acknowledged; ``close()``
flushes and disconnects. See ``connection.py`` for reconnects and ``outbox.py`` for the
durability contract.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from agentsync.client.connection import (
    Connection,
    ReceivedEvent,
    Rejected,
    Snapshot,
    error_for_response,
)
from agentsync.client.outbox import Outbox
from agentsync.protocol import AgentsyncError, new_id, now_ms, validate_data

UserMessageCallback = Callable[[ReceivedEvent], Awaitable[None] | None]
OutboxLike = Outbox | str | os.PathLike[str] | None
_HTTP_TIMEOUT = 10.0


def parse_share_url(url: str) -> tuple[str, str]:
    """``http://host[/prefix]/share/ID`` (or ``…/v1/sessions/ID``) → (base URL, ID)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    for marker in ("/share/", "/v1/sessions/"):
        head, sep, tail = path.rpartition(marker)
        if sep and tail and "/" not in tail:
            return f"{parts.scheme}://{parts.netloc}{head}", tail
    raise ValueError(f"not a share link: {url!r} (expected http://HOST/share/ID)")


class AsyncShare:
    """A share being written (with its secret) and/or read.

    Make one with :meth:`create` or :meth:`open`; use ``async with`` or call
    :meth:`close`. Without a secret the share is read-only (``subscribe`` only).
    """

    def __init__(
        self,
        server_url: str,
        session_id: str,
        *,
        secret: str | None = None,
        token: str | None = None,
        share_url: str | None = None,
        name: str | None = None,
        outbox: OutboxLike = None,
        transport: str = "auto",
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.session_id = session_id
        self.secret = secret
        self.token = token
        self.url = share_url or f"{self.server_url}/share/{session_id}"
        self.name = name
        self.transport = transport
        self.read_token: str | None = None
        self.expires_at: int | None = None
        self._owns_outbox = not isinstance(outbox, Outbox)
        self._outbox: Outbox | None = None
        if secret is not None:
            self._outbox = outbox if isinstance(outbox, Outbox) else Outbox(outbox)
            # The outbox's stable id marks events as ours (also after a restart on it);
            # the run id keeps ids unique across runs on the same outbox.
            self._id_prefix = f"{self._outbox.client_id}.{new_id(4)}."
            self._own_prefix = f"{self._outbox.client_id}."
        else:
            self._id_prefix = self._own_prefix = f"{new_id(6)}."
        self._counter = itertools.count(1)
        self._callbacks: list[UserMessageCallback] = []
        self._user_queues: list[asyncio.Queue[ReceivedEvent | None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._conn: Connection | None = None
        self._closed = False

    # --- making one --------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        server_url: str,
        *,
        title: str | None = None,
        read: Literal["public", "token"] = "public",
        ttl_seconds: int | None = None,
        name: str | None = None,
        outbox: OutboxLike = None,
        transport: str = "auto",
    ) -> AsyncShare:
        """Create a new share on ``server_url`` and connect to it as its writer."""
        body: dict[str, Any] = {"read": read}
        if title is not None:
            body["title"] = title
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT) as http:
            resp = await http.post(server_url.rstrip("/") + "/v1/shares", json=body)
        if resp.status_code != 201:
            raise error_for_response(resp)
        made = resp.json()
        share = cls(
            server_url,
            made["session_id"],
            secret=made["secret"],
            share_url=made["share_url"],
            name=name,
            outbox=outbox,
            transport=transport,
        )
        share.read_token = made.get("read_token")
        share.expires_at = made.get("expires_at")
        share._connect()
        return share

    @classmethod
    async def open(
        cls,
        share_url: str,
        secret: str | None = None,
        token: str | None = None,
        *,
        name: str | None = None,
        outbox: OutboxLike = None,
        transport: str = "auto",
    ) -> AsyncShare:
        """Open an existing share by its link; with the secret, continue writing it.

        Rows of this share left in the outbox by an earlier process are sent first.
        """
        base, session_id = parse_share_url(share_url)
        share = cls(
            base,
            session_id,
            secret=secret,
            token=token,
            share_url=share_url,
            name=name,
            outbox=outbox,
            transport=transport,
        )
        if secret is not None:
            share._connect()
        return share

    def _connect(self) -> None:
        self._conn = Connection(
            self.server_url,
            self.session_id,
            secret=self.secret,
            name=self.name,
            outbox=self._outbox,
            on_event=self._on_event,
            transport=self.transport,
        )
        self._conn.start()

    # --- writing: returns at once ------------------------------------------------------

    def _publish(self, type_: str, data: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None or self._outbox is None:
            raise PermissionError("this share was opened without its secret: read-only")
        if conn.failed is not None:
            raise conn.failed
        self._outbox.enqueue(
            self.session_id, f"{self._id_prefix}{next(self._counter):x}", type_, data, now_ms()
        )

    def add_message(
        self,
        role: str,
        content: str = "",
        id: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Add (or replace) a message; returns its id, for ``stream_text`` and tools."""
        message_id = id or f"m-{self._id_prefix}{next(self._counter):x}"
        data: dict[str, Any] = {"id": message_id, "role": role, "content": content}
        if metadata is not None:
            data["metadata"] = metadata
        validate_data("message", data, "add_message")
        self._publish("message", data)
        return message_id

    def stream_text(self, message_id: str, delta: str) -> None:
        """Append ``delta`` to a message's content (consecutive deltas are coalesced)."""
        conn = self._conn
        if conn is None or conn.failed is not None or self._outbox is None:
            self._publish("message.delta", {})  # raises the reason
            return
        self._outbox.enqueue(
            self.session_id,
            f"{self._id_prefix}{next(self._counter):x}",
            "message.delta",
            {"id": message_id, "delta": delta},
            now_ms(),
        )

    def tool_call(
        self, message_id: str, name: str, arguments: Any = None, id: str | None = None
    ) -> str:
        """Record a tool call on a message; returns the tool call's id."""
        call_id = id or f"t-{self._id_prefix}{next(self._counter):x}"
        data = {"messageId": message_id, "id": call_id, "name": name, "arguments": arguments}
        validate_data("tool_call", data, "tool_call")
        self._publish("tool_call", data)
        return call_id

    def tool_result(
        self, message_id: str, tool_call_id: str, output: Any, error: str | None = None
    ) -> None:
        data: dict[str, Any] = {"messageId": message_id, "toolCallId": tool_call_id,
                                "output": output}  # fmt: skip
        if error is not None:
            data["error"] = error
        validate_data("tool_result", data, "tool_result")
        self._publish("tool_result", data)

    def set_status(self, status: str) -> None:
        data = {"status": status}
        validate_data("status", data, "set_status")
        self._publish("status", data)

    def update_session(
        self, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        data: dict[str, Any] = {}
        if title is not None:
            data["title"] = title
        if metadata is not None:
            data["metadata"] = metadata
        validate_data("session.update", data, "update_session")
        self._publish("session.update", data)

    # --- waiting and stopping ----------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every event published so far is committed and acknowledged.

        Bound it with ``asyncio.timeout``; raises the terminal error if the share stopped.
        """
        if self._conn is not None:
            await self._conn.flush()

    async def close(self, flush: bool = True) -> None:
        """Flush (unless ``flush=False`` or the share stopped for good), disconnect, and
        close an owned outbox. Events not acknowledged stay in the outbox for next time."""
        if self._closed:
            return
        try:
            if flush and self._conn is not None and self._conn.failed is None:
                await self._conn.flush()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._closed = True
        if self._conn is not None:
            await self._conn.stop()
        for task in list(self._background):
            task.cancel()
        for queue in self._user_queues:
            queue.put_nowait(None)
        if self._outbox is not None and self._owns_outbox:
            self._outbox.close()

    async def delete(self) -> None:
        """Delete the share on the server (its log and snapshot), then disconnect."""
        if self.secret is None:
            raise PermissionError("deleting a share needs its secret")
        if self._conn is not None:
            await self._conn.stop()
        async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT) as http:
            resp = await http.delete(
                f"{self.server_url}/v1/shares/{self.session_id}",
                headers={"Authorization": f"Bearer {self.secret}"},
            )
        if resp.status_code not in (204, 410):
            raise error_for_response(resp)
        await self._shutdown()

    async def __aenter__(self) -> AsyncShare:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- state -------------------------------------------------------------------------

    @property
    def failed(self) -> AgentsyncError | None:
        """The terminal error that stopped this share (deleted, forbidden …), if any."""
        return self._conn.failed if self._conn is not None else None

    @property
    def pending(self) -> int:
        """Events committed to the outbox and not yet acknowledged."""
        return self._conn.pending if self._conn is not None else 0

    @property
    def rejected(self) -> list[Rejected]:
        """Events the server refused for good (invalid); they are not resent."""
        return self._conn.rejected if self._conn is not None else []

    @property
    def participants(self) -> list[dict[str, Any]]:
        """Who is connected with a name (presence), as the server last told us."""
        return self._conn.participants if self._conn is not None else []

    @property
    def outbox(self) -> Outbox | None:
        return self._outbox

    # --- reading -----------------------------------------------------------------------

    async def subscribe(self) -> AsyncGenerator[Snapshot | ReceivedEvent, None]:
        """The session as a reader sees it: a :class:`Snapshot`, then every event in
        order, resuming after network loss. A new snapshot comes only if the server's
        log was replaced. Raises the terminal error (e.g. ``Gone``) if the share ends."""
        queue: asyncio.Queue[Snapshot | ReceivedEvent | None] = asyncio.Queue()
        reader = Connection(
            self.server_url,
            self.session_id,
            token=self.secret or self.token,
            on_event=queue.put_nowait,
            on_snapshot=queue.put_nowait,
            transport=self.transport,
        )
        reader.start()
        try:
            while True:
                if queue.empty():
                    if reader.failed is not None:
                        raise reader.failed
                    get = asyncio.ensure_future(queue.get())
                    while not get.done() and reader.failed is None:
                        await asyncio.wait([get], timeout=0.5)
                    if not get.done():
                        get.cancel()
                        raise reader.failed or RuntimeError("reader stopped")
                    item = get.result()
                else:
                    item = queue.get_nowait()
                if item is not None:
                    yield item
        finally:
            await reader.stop()

    def on_user_message(self, callback: UserMessageCallback) -> None:
        """Call ``callback(event)`` for every user message posted by someone else (a
        ``message`` event with role ``user`` this client did not publish). It runs on the
        share's event loop; a coroutine function is scheduled as a task."""
        self._callbacks.append(callback)

    async def user_messages(self) -> AsyncIterator[ReceivedEvent]:
        """The user messages others post, as they arrive (see :meth:`on_user_message`)."""
        queue: asyncio.Queue[ReceivedEvent | None] = asyncio.Queue()
        self._user_queues.append(queue)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._user_queues.remove(queue)

    def _on_event(self, event: ReceivedEvent) -> None:
        if (
            event.type != "message"
            or event.data.get("role") != "user"
            or event.id.startswith(self._own_prefix)
        ):
            return
        for queue in self._user_queues:
            queue.put_nowait(event)
        for callback in self._callbacks:
            result = callback(event)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._background.add(task)
                task.add_done_callback(self._background.discard)
