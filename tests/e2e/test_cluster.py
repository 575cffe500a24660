"""Three real nodes over PostgreSQL and Redis: writes through all of them, readers on all
of them, one node SIGKILLed and Redis restarted mid-stream; every reader ends complete,
in order, with no gap and no duplicate, and every acknowledged event is stored.

PostgreSQL is the machine's (a schema of its own per test); Redis is a server this test
starts on a free port, so that restarting it disturbs nothing else. Without PostgreSQL or
redis-server the test skips, except under AGENTSYNC_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets

from conftest import PG_URL, free_port, fresh_pg_schema, service_missing

from ._support import bearer, create_share, message


class RedisServer:
    """A redis-server of the test's own, restartable on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/tmp",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server is not installed")
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    async with fresh_pg_schema("cluster_") as schema:
        yield schema


class Reader:
    """A resumable WebSocket reader that moves to another node when its node goes away,
    and fails the test on any gap or duplicate."""

    def __init__(self, nodes: list[Any], home: int, session_id: str) -> None:
        self.nodes = nodes
        self.home = home
        self.session_id = session_id
        self.seqs: list[int] = []
        self.epoch: str | None = None
        self.problems: list[str] = []
        self.reconnects = 0
        self.stop = False

    def apply(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            expected = (self.seqs[-1] if self.seqs else 0) + 1
            if event["seq"] != expected:
                self.problems.append(f"got seq {event['seq']}, expected {expected}")
            self.seqs.append(event["seq"])

    async def run(self) -> None:
        attempt = 0
        while not self.stop:
            node = self.nodes[(self.home + attempt) % len(self.nodes)]
            try:
                async with websockets.connect(
                    f"{node.ws_url}/v1/sessions/{self.session_id}/ws", open_timeout=3
                ) as ws:
                    hello: dict[str, Any] = {"op": "hello", "since": len(self.seqs)}
                    if self.epoch:
                        hello["epoch"] = self.epoch
                    await ws.send(json.dumps(hello))
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame["op"] == "init":
                            if self.seqs:
                                self.problems.append(f"snapshot instead of resume: {frame}")
                            self.epoch = frame["epoch"]
                            self.seqs = list(range(1, frame["seq"] + 1))
                        elif frame["op"] == "events":
                            self.epoch = frame.get("epoch", self.epoch)
                            self.apply(frame["events"])
            except (TimeoutError, OSError, websockets.WebSocketException):
                pass
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(0.05)


async def test_three_nodes_survive_a_node_kill_and_a_redis_restart(
    server_factory: Any, redis_server: RedisServer, pg_schema: str
) -> None:
    flags = {
        "rate_limit": 0,
        "store": f"{PG_URL}?schema={pg_schema}",
        "bus": redis_server.url,
    }
    nodes = [server_factory(**flags) for _ in range(3)]
    async with httpx.AsyncClient(base_url=nodes[0].url, timeout=10) as http:
        shares = [await create_share(http, title=f"cluster {i}") for i in range(3)]
    readers = [Reader(nodes, home, share["session_id"]) for share in shares for home in range(3)]
    reader_tasks = [asyncio.create_task(r.run()) for r in readers]
    acked: dict[str, dict[str, int]] = {s["session_id"]: {} for s in shares}
    stop = asyncio.Event()

    async def writer(w: int, share: dict[str, Any]) -> None:
        """Sends batches through the nodes in turn; retries each batch, same ids, on
        whichever node answers, until acknowledged."""
        sid = share["session_id"]
        n = 0
        async with httpx.AsyncClient(timeout=5) as client:
            while not stop.is_set():
                n += 1
                batch = [message(f"w{w}-{n}-{k}", f"text {n}") for k in range(1 + n % 3)]
                for attempt in range(200):
                    node = nodes[(w + n + attempt) % 3]
                    try:
                        resp = await client.post(
                            f"{node.url}/v1/sessions/{sid}/events",
                            json={"events": batch},
                            headers=bearer(share["secret"]),
                        )
                    except httpx.HTTPError:
                        await asyncio.sleep(0.05)
                        continue
                    if resp.status_code == 200:
                        for event, seq in zip(batch, resp.json()["seqs"], strict=True):
                            assert acked[sid].setdefault(event["id"], seq) == seq
                        break
                    assert resp.status_code in (429, 503), resp.text
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"batch {n} of writer {w} was never acknowledged")
                await asyncio.sleep(0.005)

    writers = [asyncio.create_task(writer(w, shares[w % 3])) for w in range(6)]
    try:
        await asyncio.sleep(1.5)
        nodes[1].kill()
        await asyncio.sleep(1.0)
        await nodes[1].arestart()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(1.0)  # nodes serve their own readers meanwhile
        await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await asyncio.gather(*writers)

    async with httpx.AsyncClient(base_url=nodes[2].url, timeout=10) as http:
        for share in shares:
            sid = share["session_id"]
            stored: list[dict[str, Any]] = []
            while True:
                resp = await http.get(
                    f"/v1/sessions/{sid}/events",
                    params={"since": len(stored), "limit": 10_000},
                )
                assert resp.status_code == 200, resp.text
                stored += resp.json()["events"]
                if len(stored) >= resp.json()["last_seq"]:
                    break
            assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
            assert {e["id"]: e["seq"] for e in stored} == acked[sid]  # acked = stored
    deadline = time.monotonic() + 20
    for reader in readers:
        last = len(acked[reader.session_id])
        while len(reader.seqs) < last and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    for reader in readers:
        reader.stop = True
    for task in reader_tasks:
        task.cancel()
    await asyncio.gather(*reader_tasks, return_exceptions=True)
    for reader in readers:
        last = len(acked[reader.session_id])
        assert reader.problems == [], reader.problems[:5]
        assert reader.seqs == list(range(1, last + 1)), (reader.home, len(reader.seqs), last)
    assert sum(len(a) for a in acked.values()) > 300
    assert all(r.reconnects >= 1 for r in readers if r.home == 1)  # node 1 really went away


async def test_two_nodes_share_rate_limits_and_presence(
    server_factory: Any, redis_server: RedisServer, pg_schema: str
) -> None:
    flags = {
        "rate_limit": 5,
        "rate_burst": 10,
        "store": f"{PG_URL}?schema={pg_schema}",
        "bus": redis_server.url,
    }
    a, b = server_factory(**flags), server_factory(**flags)
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{a.url}/v1/shares", json={})
        share = resp.json()
        sid = share["session_id"]
        statuses = []
        for i in range(12):
            node = (a, b)[i % 2]
            resp = await http.post(
                f"{node.url}/v1/sessions/{sid}/events",
                json={"events": [message(f"m{i}", "x")]},
                headers=bearer(share["secret"]),
            )
            statuses.append(resp.status_code)
        # One allowance of 10 for the session, whichever node the writes go to.
        assert statuses[:10] == [200] * 10 and statuses[10:] == [429, 429], statuses
        assert "retry-after" in resp.headers
        ready = (await http.get(f"{b.url}/readyz")).json()
        assert ready["status"] == "ready" and ready["bus"] == "up"

    async def watcher(node: Any, name: str) -> Any:
        ws = await websockets.connect(f"{node.ws_url}/v1/sessions/{sid}/ws")
        await ws.send(json.dumps({"op": "hello", "name": name}))
        json.loads(await ws.recv())
        return ws

    ann = await watcher(a, "ann")
    ben = await watcher(b, "ben")
    try:
        names: set[str] = set()
        while names != {"ann", "ben"}:
            frame = json.loads(await asyncio.wait_for(ann.recv(), 5))
            if frame["op"] == "presence":
                names = {p["name"] for p in frame["participants"]}
    finally:
        await ann.close()
        await ben.close()
