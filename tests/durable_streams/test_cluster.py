"""Two real nodes over one PostgreSQL schema and a Redis bus: one producer appends to one
stream through both, a retry of an acknowledged append through the other node is a
duplicate, and a long-poll reader on one node wakes for an append made on the other: by
the bus notice (a waiting node's fallback re-load comes only every 5 s, after the 4 s
long-poll has given up), also after Redis restarted."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from e2e.test_cluster import RedisServer, redis_server  # noqa: F401 (fixture)

from ._backends import PG_URL, pg_schema


async def bus_in(http: httpx.AsyncClient, base: str) -> float:
    """Messages the node has received from the bus (its Prometheus counter)."""
    text = (await http.get(f"{base}/metrics")).text
    for line in text.splitlines():
        if line.startswith('agentsync_bus_messages_total{direction="in"}'):
            return float(line.split()[-1])
    return 0.0


def produce(seq: int) -> dict[str, str]:
    return {
        "content-type": "text/plain",
        "producer-id": "p",
        "producer-epoch": "0",
        "producer-seq": str(seq),
    }


async def test_two_nodes_share_producers_and_wake_each_others_readers(
    server_factory: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async with pg_schema() as schema:
        flags = {
            "address_limits": False,
            "stream_long_poll_seconds": 4,
            "store": f"{PG_URL}?schema={schema}",
            "bus": redis_server.url,
        }
        a, b = server_factory(**flags), server_factory(**flags)
        async with httpx.AsyncClient(timeout=10) as http:
            url_a, url_b = f"{a.url}/v1/stream/shared", f"{b.url}/v1/stream/shared"
            put = await http.put(url_a, headers={"content-type": "text/plain"})
            assert put.status_code == 201
            assert (await http.head(url_b)).status_code == 200  # node B caches it now
            for seq in range(6):
                node, other = (url_a, url_b) if seq % 2 == 0 else (url_b, url_a)
                body = f"{seq};".encode()
                first = await http.post(node, headers=produce(seq), content=body)
                assert first.status_code == 200, (seq, first.text)
                again = await http.post(other, headers=produce(seq), content=body)
                assert again.status_code == 204, (seq, again.text)  # acknowledged: duplicate
            gap = await http.post(url_b, headers=produce(8), content=b"x")
            assert gap.status_code == 409
            assert gap.headers["producer-expected-seq"] == "6"
            for url in (url_a, url_b):
                read = await http.get(url, params={"offset": "-1"})
                assert read.text == "0;1;2;3;4;5;"
            tail = read.headers["stream-next-offset"]

            waiting = asyncio.create_task(
                http.get(url_b, params={"offset": tail, "live": "long-poll"})
            )
            await asyncio.sleep(0.5)
            assert not waiting.done()
            heard = await bus_in(http, b.url)
            append = await http.post(url_a, headers=produce(6), content=b"late")
            assert append.status_code == 200
            woke = await asyncio.wait_for(waiting, 3)
            assert (woke.status_code, woke.text) == (200, "late")
            assert await bus_in(http, b.url) > heard, "node B was not told over the bus"

            # Redis restarts: the nodes resubscribe, and the notices flow again.
            redis_server.stop()
            redis_server.start()
            tail = woke.headers["stream-next-offset"]
            for attempt in range(20):  # until node A publishes again (it retries)
                waiting = asyncio.create_task(
                    http.get(url_b, params={"offset": tail, "live": "long-poll"})
                )
                await asyncio.sleep(0.5)
                heard = await bus_in(http, b.url)
                append = await http.post(url_a, headers=produce(7 + attempt), content=b"+")
                assert append.status_code == 200
                woke = await asyncio.wait_for(waiting, 5)
                tail = woke.headers["stream-next-offset"]
                if woke.status_code == 200 and await bus_in(http, b.url) > heard:
                    break
            else:
                raise AssertionError("the bus never woke node B's reader after the restart")

            # Closed and deleted on A: B does not serve its cached metadata.
            close = await http.post(url_a, headers={"stream-closed": "true"})
            assert close.status_code == 204
            assert (await http.head(url_b)).headers.get("stream-closed") == "true"
            refused = await http.post(url_b, headers={"content-type": "text/plain"}, content=b"x")
            assert refused.status_code == 409
            assert (await http.delete(url_a)).status_code == 204
            assert (await http.get(url_b, params={"offset": "-1"})).status_code == 404
