"""``Share``: the blocking form of :class:`AsyncShare`, for synchronous agent code.

Each ``Share`` owns one daemon thread running its event loop (plus the outbox's writer
thread). Writer methods do not touch that loop at all (they append to the outbox), so they
cost the same microseconds as in ``AsyncShare``. ``close()`` — also called by ``with``,
and at interpreter exit if forgotten — flushes, stops the loop and joins both threads.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any, Literal, TypeVar

from agentsync.client.connection import ReceivedEvent, Rejected, Snapshot
from agentsync.client.outbox import Outbox
from agentsync.client.share import AsyncShare, OutboxLike, UserMessageCallback
from agentsync.protocol import AgentsyncError

T = TypeVar("T")


class _LoopThread:
    """An event loop running in one daemon thread, until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name="agentsync-share", daemon=True)
        self.thread.start()
        ready.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking Share method was called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("timed out") from None

    def stop(self) -> None:
        if self.loop.is_closed():
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        if self.thread.is_alive():
            self.run(drain())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
        self.loop.close()


class Share:
    """A share, driven from synchronous code. Same API as :class:`AsyncShare`."""

    def __init__(self, inner: AsyncShare, runner: _LoopThread) -> None:
        self._inner = inner
        self._runner = runner
        self._closed = False
        atexit.register(self.close)

    @classmethod
    def create(
        cls,
        server_url: str,
        *,
        title: str | None = None,
        read: Literal["public", "token"] = "public",
        ttl_seconds: int | None = None,
        name: str | None = None,
        outbox: OutboxLike = None,
        transport: str = "auto",
    ) -> Share:
        runner = _LoopThread()
        try:
            inner = runner.run(
                AsyncShare.create(
                    server_url,
                    title=title,
                    read=read,
                    ttl_seconds=ttl_seconds,
                    name=name,
                    outbox=outbox,
                    transport=transport,
                )
            )
        except BaseException:
            runner.stop()
            raise
        return cls(inner, runner)

    @classmethod
    def open(
        cls,
        share_url: str,
        secret: str | None = None,
        token: str | None = None,
        *,
        name: str | None = None,
        outbox: OutboxLike = None,
        transport: str = "auto",
    ) -> Share:
        runner = _LoopThread()
        try:
            inner = runner.run(
                AsyncShare.open(
                    share_url, secret, token, name=name, outbox=outbox, transport=transport
                )
            )
        except BaseException:
            runner.stop()
            raise
        return cls(inner, runner)

    # --- attributes --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def session_id(self) -> str:
        return self._inner.session_id

    @property
    def secret(self) -> str | None:
        return self._inner.secret

    @property
    def read_token(self) -> str | None:
        return self._inner.read_token

    @property
    def failed(self) -> AgentsyncError | None:
        return self._inner.failed

    @property
    def pending(self) -> int:
        return self._inner.pending

    @property
    def rejected(self) -> list[Rejected]:
        return self._inner.rejected

    @property
    def participants(self) -> list[dict[str, Any]]:
        return self._inner.participants

    @property
    def outbox(self) -> Outbox | None:
        return self._inner.outbox

    # --- writing: these never touch the loop -------------------------------------------

    def add_message(
        self,
        role: str,
        content: str = "",
        id: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        return self._inner.add_message(role, content, id, metadata=metadata)

    def stream_text(self, message_id: str, delta: str) -> None:
        self._inner.stream_text(message_id, delta)

    def tool_call(
        self, message_id: str, name: str, arguments: Any = None, id: str | None = None
    ) -> str:
        return self._inner.tool_call(message_id, name, arguments, id)

    def tool_result(
        self, message_id: str, tool_call_id: str, output: Any, error: str | None = None
    ) -> None:
        self._inner.tool_result(message_id, tool_call_id, output, error)

    def set_status(self, status: str) -> None:
        self._inner.set_status(status)

    def update_session(
        self, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        self._inner.update_session(title, metadata)

    # --- blocking ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event published so far is committed and acknowledged."""
        self._runner.run(self._inner.flush(), timeout)

    def delete(self) -> None:
        try:
            self._runner.run(self._inner.delete())
        finally:
            self._stop()

    def close(self, timeout: float | None = None) -> None:
        """Flush (for at most ``timeout`` seconds), disconnect, and stop and join this
        share's threads. Idempotent. Unacknowledged events stay in the outbox."""
        if self._closed:
            return
        try:
            try:
                if self._inner.failed is None:
                    self._runner.run(self._inner.flush(), timeout)
            finally:
                self._runner.run(self._inner.close(flush=False))
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._runner.stop()

    def __enter__(self) -> Share:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------

    def subscribe(self, timeout: float | None = None) -> Iterator[Snapshot | ReceivedEvent]:
        """A snapshot, then every event (blocking iterator; ``timeout`` per item)."""
        agen = self._inner.subscribe()
        try:
            while True:
                try:
                    yield self._runner.run(_anext(agen), timeout)
                except StopAsyncIteration:
                    return
        finally:
            if not self._runner.loop.is_closed():
                self._runner.run(agen.aclose())

    def on_user_message(self, callback: UserMessageCallback) -> None:
        """``callback(event)`` for each user message others post; it runs on this share's
        loop thread, so it should hand work over (e.g. to a ``queue.Queue``)."""
        self._inner.on_user_message(callback)


async def _anext(agen: AsyncGenerator[T, None]) -> T:
    return await agen.__anext__()
