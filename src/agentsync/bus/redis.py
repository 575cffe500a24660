"""The Bus over Redis pub/sub: one channel per session, subscribed only while loaded.

One connection publishes (pipelined, in order); one connection subscribes, read by one
task. redis-py's own silent reconnects are turned off on the subscriber: a reconnect must
be seen, because pub/sub drops what was published meanwhile, and the hub then reads the
gap from the store (``on_resync``). While Redis is away the node keeps serving its own
readers; subscriptions made meanwhile take effect when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from agentsync.bus.base import OnMessage, OnResync

log = logging.getLogger("agentsync.bus")

SUBSCRIBE_WAIT = 2.0  # seconds to wait for Redis to confirm a subscription
RECONNECT_MAX = 2.0  # seconds between reconnect attempts, at most


class RedisBus:
    def __init__(self, url: str, *, name: str = "agentsync-bus") -> None:
        self.url = url
        self.name = name  # CLIENT SETNAME of the subscriber connection (CLIENT LIST shows it)
        self.channels: set[str] = set()
        self.connected = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._on_message: OnMessage | None = None
        self._on_resync: OnResync | None = None
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_keepalive": True}
        self._publisher = Redis.from_url(url, socket_timeout=5.0, **options)
        self._subscriber = Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), client_name=name, **options
        )

    async def open(self, on_message: OnMessage, on_resync: OnResync) -> None:
        self._on_message = on_message
        self._on_resync = on_resync
        self._task = asyncio.create_task(self._run(), name="redis-bus")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), SUBSCRIBE_WAIT)
        if not self.connected.is_set():
            log.warning("Redis at %s is not reachable yet; serving local readers only", self.url)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._publisher.aclose()
        await self._subscriber.aclose()

    async def ping(self) -> None:
        await self._publisher.ping()
        if not self.connected.is_set():
            raise ConnectionError("the Redis subscriber connection is down")

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            return  # subscribed on reconnect, followed by on_resync
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(confirmed)
        try:
            await pubsub.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_WAIT)
        except (RedisError, OSError, TimeoutError) as exc:
            # The reader task sees the broken connection too, reconnects, resubscribes
            # and resyncs: nothing is lost by returning now.
            log.warning("subscribing to %s: %s", channel, exc)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe(channel)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        async with self._publisher.pipeline(transaction=False) as pipe:
            for channel, payload in messages:
                pipe.publish(channel, payload)
            await pipe.execute()

    # the subscriber connection

    async def _run(self) -> None:
        delay = 0.05
        while not self._closed:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
                # A subscribed connection is what tells us it is up; with no session
                # loaded yet, a private channel stands in.
                await pubsub.subscribe("agentsync:node", *self.channels)
                self._pubsub = pubsub
                self.connected.set()
                if delay > 0.05 or self.channels:
                    log.info("Redis bus connected; catching up %d sessions", len(self.channels))
                    if self._on_resync is not None:
                        self._on_resync()
                delay = 0.05
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                if not self._closed:
                    log.warning("Redis bus connection lost (%s); reconnecting", exc)
            finally:
                self._pubsub = None
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        kind = message["type"]
        if kind == "message":
            if channel in self.channels and self._on_message is not None:
                self._on_message(channel, message["data"])
        elif kind == "subscribe":
            for waiter in self._confirmations.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
