"""Rate limits shared by the nodes of a cluster through Redis (limits.RedisRateLimiter).

Uses the machine's Redis (skips without it, fails under AGENTSYNC_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from agentsync.limits import RateLimiter, RedisRateLimiter, make_limiter
from agentsync.protocol import RateLimited
from conftest import service_missing

REDIS_URL = os.environ.get("AGENTSYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis() -> AsyncIterator[Any]:
    client = Redis.from_url(REDIS_URL, single_connection_client=True, socket_timeout=1.0)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        service_missing(f"Redis at {REDIS_URL} is not reachable: {exc}")
    yield client
    await client.aclose()


def two_nodes(redis: Any, rate: float, burst: float) -> tuple[RateLimiter, RateLimiter]:
    what = f"test {uuid.uuid4().hex[:8]}"  # a key space of this test's own
    return make_limiter(rate, burst, what, redis), make_limiter(rate, burst, what, redis)


async def test_nodes_share_one_allowance(redis: Any) -> None:
    a, b = two_nodes(redis, rate=5, burst=10)
    assert isinstance(a, RedisRateLimiter)
    for i in range(10):  # the burst, spread over both nodes
        await (a if i % 2 else b).acheck("client")
    for node in (a, b):
        with pytest.raises(RateLimited) as refused:
            await node.acheck("client")
        assert 0 < refused.value.retry_after <= 0.2 + 0.05
    await a.acheck("another client")  # keys are independent
    await asyncio.sleep(0.25)  # 5/s refills one token in 0.2 s
    await b.acheck("client")
    with pytest.raises(RateLimited):
        await a.acheck("client")


async def test_a_batch_costs_its_size_and_never_more_than_the_burst(redis: Any) -> None:
    a, b = two_nodes(redis, rate=100, burst=50)
    await a.acheck("s", 30)
    with pytest.raises(RateLimited):
        await b.acheck("s", 30)
    await b.acheck("s", 20)
    a2, _ = two_nodes(redis, rate=100, burst=50)
    await a2.acheck("t", 500)  # capped at the burst, as the local bucket does


async def test_checks_complete_in_the_order_they_were_made(redis: Any) -> None:
    limiter, _ = two_nodes(redis, rate=1000, burst=10_000)
    done: list[int] = []

    async def check(i: int) -> None:
        await limiter.acheck("order")
        done.append(i)

    await asyncio.gather(*(check(i) for i in range(200)))
    assert done == list(range(200))


async def test_without_redis_each_node_limits_on_its_own() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    limiter = make_limiter(5, 3, "fallback", dead)
    try:
        for _ in range(3):
            await limiter.acheck("client")
        with pytest.raises(RateLimited):
            await limiter.acheck("client")
    finally:
        await dead.aclose()
