"""The Bus: cross-node fan-out of committed events, one channel per session.

A node that commits events to the store publishes them on the session's channel; every
node that has the session loaded subscribes to that channel and applies what it receives,
so its readers see writes made through other nodes. The bus is a fast path, never the
record: the store is. So the bus may lose messages (Redis pub/sub does when a connection
drops) and a receiver must notice — a seq that jumps past its own, or ``on_resync`` after
a reconnect — and read the missing events from the store.

Contract, for every implementation (tests/bus/ runs the same suite against each):

- ``subscribe(channel)`` returns once the subscription is active: anything published on
  the channel after it returns is delivered, unless the connection is lost meanwhile.
- Messages on one channel are delivered in the order one publisher published them.
- Only subscribed channels are delivered: a node's bus traffic follows the sessions it
  serves, not every session of the cluster.
- After the connection was lost and is back, subscriptions are restored and
  ``on_resync()`` is called: what was published in between may be lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from agentsync.protocol import Event

OnMessage = Callable[[str, bytes], None]
"""Called in the event loop with (channel, payload) for every message received."""
OnResync = Callable[[], None]
"""Called in the event loop after a lost connection is back: messages may be missing."""


class Bus(Protocol):
    async def open(self, on_message: OnMessage, on_resync: OnResync) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise when the bus cannot be reached (for /readyz)."""

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish (channel, payload) pairs in order; raises when the bus is unreachable."""


# --- what travels on a session's channel -------------------------------------------------


def channel_of(session_id: str) -> str:
    return f"agentsync:s:{session_id}"


def session_of(channel: str) -> str:
    return channel.removeprefix("agentsync:s:")


@dataclass(frozen=True, slots=True)
class Committed:
    """Events a node committed, in seq order."""

    events: list[Event]


@dataclass(frozen=True, slots=True)
class Ended:
    """The share was deleted or expired: stop serving it."""

    why: str


@dataclass(frozen=True, slots=True)
class Presence:
    """The named readers one node has on the session (all of them, each time), and who
    just joined or left there. An empty list says the node has none left."""

    node: str
    participants: list[dict[str, Any]]
    change: dict[str, Any] | None = None  # {"joined": {...}} or {"left": {...}}


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    """A node loaded the session: the others announce their readers of it."""

    node: str


def encode_presence(presence: Presence) -> bytes:
    body = {"node": presence.node, "participants": presence.participants}
    if presence.change:
        body.update(presence.change)
    return b"P" + orjson.dumps(body)


def encode_presence_query(node: str) -> bytes:
    return b"Q" + node.encode()


def encode_committed(events: Sequence[Event]) -> bytes:
    # An envelope is compact JSON, which never holds a raw newline.
    return b"E" + b"\n".join(event.encoded for event in events)


def encode_ended(why: str) -> bytes:
    return b"G" + why.encode()


def last_seq_of(payload: bytes) -> int | None:
    """The seq of a Committed message's last event, read without decoding the message:
    a node skips its own echoes and what it already holds for the cost of this."""
    if payload[:1] != b"E":
        return None
    last = payload[payload.rfind(b"\n") + 1 :] if b"\n" in payload else payload[1:]
    if not last.startswith(b'{"seq":'):
        return None
    end = last.find(b",", 7)
    return int(last[7:end]) if end > 7 else None


BusMessage = Committed | Ended | Presence | PresenceQuery


def decode(payload: bytes) -> BusMessage:
    kind, body = payload[:1], payload[1:]
    if kind == b"G":
        return Ended(body.decode())
    if kind == b"Q":
        return PresenceQuery(body.decode())
    if kind == b"P":
        obj = orjson.loads(body)
        change = {k: obj[k] for k in ("joined", "left") if k in obj}
        return Presence(obj["node"], list(obj["participants"]), change or None)
    if kind != b"E":
        raise ValueError(f"unknown bus message kind {kind!r}")
    events = []
    for line in body.split(b"\n"):
        obj = orjson.loads(line)
        events.append(Event(obj["seq"], obj["id"], obj["type"], obj["ts"], obj["data"], line))
    return Committed(events)
