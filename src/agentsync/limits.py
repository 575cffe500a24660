"""Rate limits (token buckets) and connection caps.

On one node every limit lives in this process. With several nodes (``--bus redis://``)
the rate limits are shared through Redis, so a client cannot multiply its allowance by
spreading its requests over the nodes: ``RedisRateLimiter`` runs GCRA (the token bucket
as one timestamp per key) in a Lua script with Redis's clock. Its calls go over one
connection, so they complete in the order they were made: a pipelined writer's batches
reach the log in the order it sent them. When Redis cannot be reached, each node falls
back to its own bucket rather than refuse everything. Connection caps stay per node.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, ClassVar

from agentsync.config import Config
from agentsync.protocol import RateLimited, TooManyConnections

log = logging.getLogger("agentsync.limits")


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``rate <= 0`` disables the limit."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return 0 on success, else seconds until they would exist."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if cost > self.burst:
            cost = self.burst
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key (a session, an address), the least recently used forgotten."""

    shared: ClassVar[bool] = False  # only ``acheck`` sees a limit shared between nodes

    def __init__(self, rate: float, burst: float, *, what: str, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.what = what
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str, cost: float = 1.0) -> None:
        """Raise RateLimited (429 with Retry-After) when ``key`` is over its limit."""
        if self.rate <= 0:
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        self._refuse_if(bucket.take(cost))

    async def acheck(self, key: str, cost: float = 1.0) -> None:
        """``check``, for callers that may be sharing the limit with other nodes."""
        self.check(key, cost)

    def _refuse_if(self, wait: float) -> None:
        if wait > 0:
            raise RateLimited(
                f"{self.what} rate limit: {self.rate:g}/s with bursts of {self.burst:g}; "
                f"retry in {wait:.2f}s",
                retry_after=wait,
            )


# GCRA: the key holds the "theoretical arrival time" (ms) of the next token; a request of
# cost c is allowed when tat + c*interval - burst*interval <= now.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, tolerance, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local wait = new_tat - tolerance - now
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return '0'
"""


class RedisRateLimiter(RateLimiter):
    """The same limit for every node of a cluster (see the module docstring)."""

    shared = True

    def __init__(self, rate: float, burst: float, *, what: str, redis: Any, prefix: str) -> None:
        super().__init__(rate, burst, what=what)
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(GCRA) if rate > 0 else None
        self._warned = 0.0

    async def acheck(self, key: str, cost: float = 1.0) -> None:
        if self._script is None:
            return
        cost = min(cost, self.burst)
        interval = 1000.0 / self.rate
        try:
            wait_ms = float(
                await self._script(
                    keys=[f"agentsync:rl:{self.prefix}:{key}"],
                    args=[interval, interval * self.burst, cost],
                )
            )
        except Exception as exc:
            now = time.monotonic()
            if now - self._warned > 10:
                self._warned = now
                log.warning("shared rate limits unavailable (%s); limiting per node", exc)
            self.check(key, cost)
            return
        self._refuse_if(wait_ms / 1000.0)


def make_limiter(rate: float, burst: float, what: str, redis: Any | None) -> RateLimiter:
    """A limiter shared through ``redis`` when given, else this process's own."""
    if redis is None:
        return RateLimiter(rate, burst, what=what)
    prefix = what.replace(" ", "-")
    return RedisRateLimiter(rate, burst, what=what, redis=redis, prefix=prefix)


class ConnectionCounter:
    """Open connections per key, refused past ``limit`` (0 disables)."""

    def __init__(self, limit: int, *, what: str) -> None:
        self.limit = limit
        self.what = what
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        count = self._open.get(key, 0)
        if self.limit > 0 and count >= self.limit:
            raise TooManyConnections(
                f"{self.what} already has {count} open connections (the limit); "
                "close some or retry later"
            )
        self._open[key] = count + 1

    def acquire_unchecked(self, key: str) -> None:
        """Count a connection admitted by an earlier check of ``count``."""
        self._open[key] = self._open.get(key, 0) + 1

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def count(self, key: str) -> int:
        return self._open.get(key, 0)


class AddressLimits:
    """Every per-client-address limit of a node (SPEC §5), built from its Config."""

    def __init__(self, config: Config, redis: Any | None = None) -> None:
        on = config.address_limits

        def bucket(rate: float, burst: float, what: str) -> RateLimiter:
            return make_limiter(rate if on else 0.0, burst, what, redis)

        self.requests = bucket(config.ip_rate_limit, config.ip_rate_burst, "address request")
        self.ws_connects = bucket(
            config.ws_connect_rate, config.ws_connect_burst, "address WebSocket connect"
        )
        # Per node even in a cluster: a check that waited on Redis could let a pipelined
        # writer's later batch overtake an earlier one on the same socket.
        self.ws_publishes = RateLimiter(
            config.ws_publish_rate if on else 0.0,
            config.ws_publish_burst,
            what="address WebSocket publish",
        )
        self.share_creates = bucket(
            config.shares_per_hour / 3600.0, max(1.0, config.shares_per_hour), "share creation"
        )
        self.connections = ConnectionCounter(
            config.max_connections_per_address if on else 0, what="this address"
        )
