"""Token buckets for rate limits."""

from __future__ import annotations

import time
from collections import OrderedDict

from agentsync.config import Config
from agentsync.protocol import RateLimited, TooManyConnections


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
        wait = bucket.take(cost)
        if wait > 0:
            raise RateLimited(
                f"{self.what} rate limit: {self.rate:g}/s with bursts of {self.burst:g}; "
                f"retry in {wait:.2f}s",
                retry_after=wait,
            )


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

    def __init__(self, config: Config) -> None:
        on = config.address_limits

        def bucket(rate: float, burst: float, what: str) -> RateLimiter:
            return RateLimiter(rate if on else 0.0, burst, what=what)

        self.requests = bucket(config.ip_rate_limit, config.ip_rate_burst, "address request")
        self.ws_connects = bucket(
            config.ws_connect_rate, config.ws_connect_burst, "address WebSocket connect"
        )
        self.ws_publishes = bucket(
            config.ws_publish_rate, config.ws_publish_burst, "address WebSocket publish"
        )
        self.share_creates = bucket(
            config.shares_per_hour / 3600.0, max(1.0, config.shares_per_hour), "share creation"
        )
        self.connections = ConnectionCounter(
            config.max_connections_per_address if on else 0, what="this address"
        )
