"""Token buckets for rate limits."""

from __future__ import annotations

import time
from collections import OrderedDict

from agentsync.protocol import RateLimited


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
