"""An in-process Bus: several hubs in one process (tests), same contract as Redis."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from agentsync.bus.base import OnMessage, OnResync


class LocalBroker:
    """What the hubs of one process share; each hub gets its own ``LocalBus`` on it."""

    def __init__(self) -> None:
        self.subscribers: defaultdict[str, set[LocalBus]] = defaultdict(set)


class LocalBus:
    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self.channels: set[str] = set()
        self._on_message: OnMessage | None = None
        self._on_resync: OnResync | None = None

    async def open(self, on_message: OnMessage, on_resync: OnResync) -> None:
        self._on_message = on_message
        self._on_resync = on_resync

    async def close(self) -> None:
        for channel in list(self.channels):
            await self.unsubscribe(channel)

    async def ping(self) -> None:
        return None

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        self.broker.subscribers[channel].add(self)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        subscribers = self.broker.subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self.broker.subscribers[channel]

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        for channel, payload in messages:
            for bus in self.broker.subscribers.get(channel, ()):
                loop.call_soon(bus._deliver, channel, payload)

    def _deliver(self, channel: str, payload: bytes) -> None:
        if channel in self.channels and self._on_message is not None:
            self._on_message(channel, payload)

    def simulate_reconnect(self) -> None:
        """What a dropped and restored connection looks like to the hub."""
        if self._on_resync is not None:
            self._on_resync()
