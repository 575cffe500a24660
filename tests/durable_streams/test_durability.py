"""Durable Streams under SIGKILL: acknowledged = committed, idempotent producers resume.

Four idempotent producers append JSON values to one stream, concurrently; the server is
SIGKILLed twice while appends are in flight (and after two producers each lost the
acknowledgement of a committed append) and restarted on the same data directory. Each
producer then re-sends its unacknowledged append with the same (id, epoch, seq), as the
official clients do, and carries on: a lost append is stored now (200), a committed one
is recognised (204) and not stored again. The stream must hold every acknowledged
append exactly once, each producer's in its order, with no gap in any producer's seqs;
a reader that saved its offset before the kill gets exactly the rest after it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

STREAM = "/v1/stream/durable-producers"
PRODUCERS = 4
KILLS = 2
ACKS_BEFORE_KILL = 60


async def read_all(client: httpx.AsyncClient, offset: str = "-1") -> tuple[list[Any], str]:
    """Every value from ``offset`` to the tail, and the offset to resume from."""
    values: list[Any] = []
    while True:
        resp = await client.get(STREAM, params={"offset": offset})
        assert resp.status_code == 200, resp.text
        batch = resp.json()
        values += batch
        offset = resp.headers["stream-next-offset"]
        if resp.headers.get("stream-up-to-date") == "true":
            return values, offset


class Progress:
    """Acknowledgements so far; ``reached`` is set once there are ``target`` of them."""

    def __init__(self) -> None:
        self.acks = 0
        self.target = 0
        self.reached = asyncio.Event()

    def ack(self) -> None:
        self.acks += 1
        if self.acks >= self.target:
            self.reached.set()

    def expect(self, more: int) -> None:
        self.target = self.acks + more
        self.reached.clear()


class Producer:
    """One idempotent producer: sequential appends, each retried with its own tuple."""

    def __init__(self, name: str, progress: Progress) -> None:
        self.progress = progress
        self.name = name
        self.seq = 0  # the next seq to send
        self.acked: list[int] = []
        self.in_flight: int | None = None

    async def send(self, client: httpx.AsyncClient) -> int:
        seq = self.seq if self.in_flight is None else self.in_flight
        self.in_flight = seq
        resp = await client.post(
            STREAM,
            content=orjson.dumps({"p": self.name, "s": seq}),
            headers={
                "content-type": "application/json",
                "producer-id": self.name,
                "producer-epoch": "0",
                "producer-seq": str(seq),
            },
        )
        assert resp.status_code in (200, 204), (resp.status_code, resp.text)
        assert resp.headers["producer-seq"] == str(seq)
        self.acked.append(seq)
        self.progress.ack()
        self.in_flight = None
        self.seq = seq + 1
        return resp.status_code

    async def send_losing_the_ack(self, url: str) -> None:
        """Send the next append and hang up without reading the answer: the server
        commits it, the producer never learns, and must re-send it."""
        host, port = url.removeprefix("http://").split(":")
        body = orjson.dumps({"p": self.name, "s": self.seq})
        request = (
            f"POST {STREAM} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"producer-id: {self.name}\r\nproducer-epoch: 0\r\nproducer-seq: {self.seq}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        await reader.readline()  # the status line: it was committed, then the ack is lost
        writer.close()
        self.in_flight = self.seq

    async def run(self, url: str, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            while not stop.is_set():
                try:
                    await self.send(client)
                except httpx.TransportError:
                    return  # killed: ``in_flight`` stays unacknowledged


async def test_acknowledged_appends_survive_sigkill_exactly_once(server_factory: Any) -> None:
    srv = server_factory(address_limits=False)
    progress = Progress()
    producers = [Producer(f"p{i}", progress) for i in range(PRODUCERS)]
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        resp = await client.put(STREAM, headers={"content-type": "application/json"})
        assert resp.status_code == 201

    saved: list[Any] = []
    saved_offset = "-1"
    retried_statuses: list[int] = []
    for _ in range(KILLS):
        # Half the producers are appending when the server dies; the other half stop
        # first and each loses the acknowledgement of one committed append.
        steady, lossy = producers[: PRODUCERS // 2], producers[PRODUCERS // 2 :]
        stop, stop_lossy = asyncio.Event(), asyncio.Event()
        progress.expect(ACKS_BEFORE_KILL)
        tasks = [asyncio.create_task(p.run(srv.url, stop)) for p in steady]
        lossy_tasks = [asyncio.create_task(p.run(srv.url, stop_lossy)) for p in lossy]
        async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as reader:
            await asyncio.wait_for(progress.reached.wait(), 30)
            more, saved_offset = await read_all(reader, saved_offset)
            saved += more
        stop_lossy.set()
        await asyncio.gather(*lossy_tasks)
        for p in lossy:
            await p.send_losing_the_ack(srv.url)
        await asyncio.to_thread(srv.kill)  # the steady producers' appends are in flight
        stop.set()
        await asyncio.gather(*tasks)
        await srv.arestart()
        async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
            for p in producers:
                if p.in_flight is not None:
                    retried_statuses.append(await p.send(client))
    assert 204 in retried_statuses, "no committed-but-unacknowledged append was retried"
    print(f"retried after SIGKILL: {retried_statuses} (200 lost by the kill, 204 committed)")

    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
        for p in producers:  # a few more after the last restart
            for _ in range(3):
                assert await p.send(client) == 200
        # an old tuple is a duplicate, answered with the highest seq accepted
        old = await client.post(
            STREAM,
            content=b'{"p":"again"}',
            headers={
                "content-type": "application/json",
                "producer-id": "p0",
                "producer-epoch": "0",
                "producer-seq": "0",
            },
        )
        assert old.status_code == 204
        assert old.headers["producer-seq"] == str(producers[0].seq - 1)

        everything, tail = await read_all(client)
        rest, rest_tail = await read_all(client, saved_offset)

    assert saved + rest == everything, "resuming from the saved offset lost or repeated data"
    assert rest_tail == tail
    for p in producers:
        seqs = [v["s"] for v in everything if v["p"] == p.name]
        assert seqs == list(range(p.seq)), f"{p.name}: {seqs[:20]}..."
        assert set(p.acked) <= set(seqs)
    assert len(everything) == sum(p.seq for p in producers)
    assert srv.runs == KILLS + 1
