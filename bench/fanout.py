"""Fan-out benchmark: agentsync vs a bare `websockets` broadcast server, same load, same run.

Each server runs pinned to core 0 (``taskset -c 0``); the load (one writer process and a few
reader processes) runs pinned to core 1. For each point (R readers x mode) a fresh session is
created, the writer publishes ``message.delta`` events over the WebSocket ``publish`` op, one
event per publish, either at a fixed rate or at saturation (a window of in-flight publishes,
as fast as acks allow), and every reader checks that it sees every seq exactly once, in order.

    python bench/fanout.py                       # both servers, R=10,100,1000, rate+sat
    python bench/fanout.py --readers 100 --modes rate --duration 5 --repeat 3
    python bench/fanout.py --servers peer --json
    python bench/fanout.py --servers agentsync,cluster --nodes 3 --readers 300 --modes rate

Setups (--servers): `peer` (peer_broadcast.py), `agentsync` (one node, SQLite) and `cluster`:
--nodes agentsync nodes over PostgreSQL (--store; a fresh ``schema=bench_<hex>`` per run,
dropped afterwards) and a Redis bus (--bus), all nodes on core 0 (see Cluster). In a cluster
the writer is on node 0 and the R readers are spread evenly over the nodes, so (N-1)/N of
them get the events through the bus; the readers of each node are in their own processes,
and a second table splits deliveries, latency and gap/dup into same-node (node 0) and
cross-node readers. A third table has node counters over the point from each node's
/metrics (bus messages out/in per node, append conflicts, store catch-ups, slow consumers,
rejected requests, appends slower than 100 ms) and the CPU of the machine's PostgreSQL and
Redis processes (not pinned: they run wherever the scheduler puts them).

Reported per server and point (medians over --repeat runs):
- delivered ev/s: events received by all readers / (first publish -> last reader caught up)
- p50/p99 ms: publish->receive latency (writer's monotonic_ns stamp in the event's data,
  read by the reader when it parses the frame; sampled over all connections)
- drain s: how long after the last publish the last reader got the last event
- CPU us/dlv: server CPU seconds (psutil, process + children) / events delivered
- RSS MB: peak server RSS sampled during the point
- gap/dup: per-reader seq discontinuities (must be 0/0); cut: server-initiated closes
  (readers resume from their seq, counted in `reconn`)
- srv CPU %: server process CPU / wall time of the point (100 % = its whole core).
- load CPU %: writer + reader processes' CPU / wall time. At >= 90 % (--load-bound-pct) the
  load generator, not the server, limits the numbers: marked `LOAD-BOUND`.
- core1 %: busy share of the load core from /proc/stat, including other tenants' processes
  (the machine is shared): core1 well above load CPU % means something else competed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import orjson
import psutil
from websockets.frames import Frame, Opcode

SERVER_CORE = 0
LOAD_CORE = 1
SEQ_RE = re.compile(rb'"seq":\s*(\d+)')
T_RE = re.compile(rb'"t":\s*(\d+)')
MSG_ID = "m1"
FAR = 1 << 62
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def text_frame(payload: bytes) -> bytes:
    return Frame(Opcode.TEXT, payload).serialize(mask=True)


def pin(core: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {core % (os.cpu_count() or 1)})


# --------------------------------------------------------------------------------------
# A lean WebSocket client on a raw asyncio Protocol: handwritten HTTP upgrade and an
# unmasked-frame parser (server frames are never masked), so that a reader costs ~2 us a
# frame. Outgoing frames are built with websockets' Frame (masked, C-accelerated).
# --------------------------------------------------------------------------------------


class LeanWS(asyncio.Protocol):
    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.frag: bytearray | None = None
        self.close_code: int | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    # transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        req = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(req.encode())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buf += data
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i])
            del self.buf[: i + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
            data = bytes(self.buf)
            self.buf.clear()
        elif self.buf:
            self.buf += data
            data = bytes(self.buf)
            self.buf.clear()
        n = len(data)
        pos = 0
        on_text = self.on_text
        while n - pos >= 2:
            b0 = data[pos]
            ln = data[pos + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 4], "big")
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                h = 10
            end = pos + h + ln
            if end > n:
                break
            payload = data[pos + h : end]
            pos = end
            op = b0 & 0x0F
            if b0 & 0x80 and op == 1:
                on_text(payload)
            elif op in (0, 1, 2):
                if op:
                    self.frag = bytearray(payload)
                elif self.frag is not None:
                    self.frag += payload
                if b0 & 0x80 and self.frag is not None:
                    whole, self.frag = bytes(self.frag), None
                    on_text(whole)
            elif op == 9:
                self.transport.write(Frame(Opcode.PONG, payload).serialize(mask=True))  # type: ignore[union-attr]
            elif op == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.transport.close()  # type: ignore[union-attr]
                return
        if pos < n:
            self.buf += data[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(str(exc or "closed during handshake")))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        self.on_lost()

    # overridden
    def on_text(self, payload: bytes) -> None:
        pass

    def on_lost(self) -> None:
        pass

    def send(self, obj: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text_frame(orjson.dumps(obj)))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True))
            self.transport.close()


async def open_ws(factory: Any, host: str, port: int, limit_s: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), limit_s)
    await asyncio.wait_for(proto.opened, limit_s)
    return proto


def pipe_queue(conn: Any) -> asyncio.Queue[Any]:
    """Commands from the orchestrator's Pipe, as an asyncio queue."""
    q: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def ready() -> None:
        while conn.poll():
            try:
                q.put_nowait(conn.recv())
            except EOFError:
                loop.remove_reader(conn.fileno())
                q.put_nowait(("quit",))
                return

    loop.add_reader(conn.fileno(), ready)
    return q


# --------------------------------------------------------------------------------------
# Readers: no asyncio here. Each reader process holds its sockets in one epoll set and
# parses frames in a tight loop (asyncio's per-read callback machinery alone costs more
# than the server's send of a small frame). Handshakes and hellos are done blocking, one
# connection at a time, before the measurement starts.
# --------------------------------------------------------------------------------------


def ws_connect(host: str, port: int, path: str, timeout: float = 30.0) -> tuple[Any, bytes]:
    """Blocking connect + upgrade; returns the socket and any bytes after the response."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed during handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        s.close()
        raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
    return s, rest


class Reader:
    __slots__ = (
        "awaiting_first",
        "buf",
        "close_code",
        "epoch",
        "expected",
        "frag",
        "g",
        "idx",
        "sock",
    )

    def __init__(self, group: ReaderGroup, idx: int) -> None:
        self.g = group
        self.idx = idx
        self.sock: Any = None
        self.buf = b""
        self.frag: bytearray | None = None
        self.awaiting_first = True
        self.expected = 0
        self.epoch: str | None = None
        self.close_code: int | None = None

    def connect(self) -> None:
        g = self.g
        self.sock, self.buf = ws_connect(g.host, g.port, g.path)
        msg: dict[str, Any] = {"op": "hello"}
        if self.expected:
            msg["since"] = self.expected - 1
            msg["epoch"] = self.epoch
        self.sock.sendall(text_frame(orjson.dumps(msg)))
        self.awaiting_first = True
        self.close_code = None

    def wait_first(self, timeout: float = 60.0) -> None:
        """Blocking: read until the init (or resumed events) frame was handled."""
        self.sock.settimeout(timeout)
        data, self.buf = self.buf, b""
        while True:
            if data:
                self.feed(data)
            if not self.awaiting_first:
                break
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError(f"closed before init (code {self.close_code})")
        self.sock.setblocking(False)

    def feed(self, data: bytes) -> bool:
        """Parse frames; False when the connection closed."""
        if self.buf:
            data = self.buf + data
            self.buf = b""
        n = len(data)
        pos = 0
        on_text = self.on_text
        while n - pos >= 2:
            b0 = data[pos]
            ln = data[pos + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 4], "big")
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                h = 10
            end = pos + h + ln
            if end > n:
                break
            payload = data[pos + h : end]
            pos = end
            op = b0 & 0x0F
            if b0 & 0x80 and op == 1:
                on_text(payload)
            elif op in (0, 1, 2):
                if op:
                    self.frag = bytearray(payload)
                elif self.frag is not None:
                    self.frag += payload
                if b0 & 0x80 and self.frag is not None:
                    whole, self.frag = bytes(self.frag), None
                    on_text(whole)
            elif op == 9:
                with contextlib.suppress(OSError):
                    self.sock.send(Frame(Opcode.PONG, payload).serialize(mask=True))
            elif op == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                return False
        if pos < n:
            self.buf = data[pos:]
        return True

    def on_text(self, p: bytes) -> None:
        g = self.g
        if self.awaiting_first:
            m = orjson.loads(p)
            op = m.get("op")
            if op == "init":
                if self.expected:
                    g.resets += 1
                self.expected = m["seq"] + 1
                self.epoch = m.get("epoch")
                self.awaiting_first = False
                return
            if op != "events":
                return
            self.awaiting_first = False
            # The resumed greeting also carries the log's last "seq" at top level: take
            # the events' seqs from the parsed frame, not from the regex.
            seqs = [str(e["seq"]).encode() for e in m["events"]]
        else:
            if b'"events"' not in p:
                return  # presence and other frames
            seqs = SEQ_RE.findall(p)
        n = len(seqs)
        if not n:
            return
        exp = self.expected
        if n == 1:
            s = int(seqs[0])
            if s == exp:
                exp += 1
            elif s < exp:
                g.dups += 1
                n = 0
            else:
                g.gaps += s - exp
                exp = s + 1
        else:
            for s in map(int, seqs):
                if s == exp:
                    exp += 1
                elif s < exp:
                    g.dups += 1
                    n -= 1
                else:
                    g.gaps += s - exp
                    exp = s + 1
        self.expected = exp
        g.events += n
        g.frames += 1
        if g.frames % g.sample_every == 0:
            now = time.monotonic_ns()
            g.lat.extend(now - int(t) for t in T_RE.findall(p))
        if exp > g.target:
            g.conn_done(self)


class ReaderGroup:
    def __init__(self, host: str, port: int, path: str, n: int, sample_every: int) -> None:
        self.host, self.port, self.path, self.n = host, port, path, n
        self.sample_every = sample_every
        self.events = self.frames = self.gaps = self.dups = self.resets = 0
        self.cutoffs = self.reconnects = self.failed = 0
        self.close_codes: dict[str, int] = {}
        self.lat: list[int] = []
        self.target = FAR
        self.done: set[int] = set()
        self.last_done_ns = 0
        self.conns: list[Reader] = []
        self.by_fd: dict[int, Reader] = {}
        self.ep = select.epoll()

    def register(self, r: Reader) -> None:
        fd = r.sock.fileno()
        self.by_fd[fd] = r
        self.ep.register(fd, select.EPOLLIN)

    def connect_all(self) -> None:
        for i in range(self.n):
            r = Reader(self, i)
            r.connect()
            self.conns.append(r)
        for r in self.conns:  # the hellos went out above; now collect the inits
            r.wait_first()
            self.register(r)

    def set_target(self, target: int) -> None:
        self.target = target
        for r in self.conns:
            if r.expected > target:
                self.conn_done(r)

    def conn_done(self, r: Reader) -> None:
        if r.idx not in self.done:
            self.done.add(r.idx)
            self.last_done_ns = time.monotonic_ns()

    def lost(self, r: Reader) -> None:
        fd = r.sock.fileno()
        with contextlib.suppress(OSError, KeyError):
            self.ep.unregister(fd)
        self.by_fd.pop(fd, None)
        r.sock.close()
        code = r.close_code
        self.close_codes[str(code)] = self.close_codes.get(str(code), 0) + 1
        resumable = code is None or 4000 <= code < 4500 or code in (1001, 1006, 1011, 1012, 1013)
        if r.idx in self.done or not resumable:
            self.failed += r.idx not in self.done
            return
        self.cutoffs += 1
        for attempt in range(20):
            try:
                r.connect()
                r.wait_first(10)
            except (OSError, ConnectionError):
                time.sleep(0.05 * (attempt + 1))
                continue
            self.register(r)
            self.reconnects += 1
            return
        self.failed += 1

    def run(self, cmd_conn: Any) -> None:
        """The event loop: frames until told the target seq and everyone reached it."""
        cmd_fd = cmd_conn.fileno()
        self.ep.register(cmd_fd, select.EPOLLIN)
        deadline = None
        by_fd = self.by_fd
        poll = self.ep.poll
        while True:
            for fd, _ in poll(0.05, 1024):
                r = by_fd.get(fd)
                if r is None:
                    if fd == cmd_fd:
                        cmd = cmd_conn.recv()
                        if cmd[0] == "target":
                            self.set_target(cmd[1])
                            deadline = time.monotonic() + cmd[2]
                        elif cmd[0] == "quit":
                            return
                    continue
                try:
                    data = r.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data or not r.feed(data):
                    self.lost(r)
            if deadline is not None and (len(self.done) == self.n or time.monotonic() > deadline):
                return


def reader_main(conn: Any, host: str, port: int, path: str, n: int, sample: int) -> None:
    pin(LOAD_CORE)
    g = ReaderGroup(host, port, path, n, sample)
    try:
        g.connect_all()
    except Exception as e:
        conn.send(("error", f"reader connect failed: {e!r}"))
        return
    conn.send(("ready", None))
    g.run(conn)
    if g.target == FAR:
        return
    lat = g.lat
    if len(lat) > 200_000:
        lat = lat[:: len(lat) // 200_000 + 1]
    conn.send(
        (
            "result",
            {
                "events": g.events,
                "frames": g.frames,
                "gaps": g.gaps,
                "dups": g.dups,
                "resets": g.resets,
                "cutoffs": g.cutoffs,
                "reconnects": g.reconnects,
                "failed": g.failed,
                "close_codes": g.close_codes,
                "lat": lat,
                "done": len(g.done),
                "last_done_ns": g.last_done_ns,
                "behind": [g.target + 1 - r.expected for r in g.conns if r.idx not in g.done],
            },
        )
    )
    for r in g.conns:
        with contextlib.suppress(OSError):
            r.sock.send(Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True))
            r.sock.close()


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------


class Writer(LeanWS):
    def __init__(self, host: str, port: int, path: str) -> None:
        super().__init__(host, port, path)
        self.init: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.ref = 0
        self.inflight: dict[int, tuple[int, int]] = {}
        self.acked = 0
        self.last_seq = 0
        self.errors: list[str] = []
        self.ack_lat: list[int] = []
        self.on_ack: Any = None
        self.idle: asyncio.Event = asyncio.Event()
        self.idle.set()
        self.delta = "tok "
        self.batch = 1

    def on_text(self, p: bytes) -> None:
        if not self.init.done():
            m = orjson.loads(p)
            if m.get("op") == "init" or m.get("op") == "events":
                self.init.set_result(m)
            return
        if b'"ack"' not in p and b'"error"' not in p:
            return
        m = orjson.loads(p)
        op = m.get("op")
        if op == "ack":
            sent = self.inflight.pop(m.get("ref"), None)
            if sent is not None:
                self.ack_lat.append(time.monotonic_ns() - sent[0])
                self.acked += sent[1]
            seqs = m.get("seqs") or [0]
            self.last_seq = max(self.last_seq, *seqs)
        elif op == "error":
            self.inflight.pop(m.get("ref"), None)
            if len(self.errors) < 20:
                self.errors.append(f"{m.get('code')}: {m.get('message')}")
        else:
            return
        if not self.inflight:
            self.idle.set()
        if self.on_ack is not None:
            self.on_ack()

    def publish(self, events: list[dict[str, Any]] | None = None) -> None:
        self.ref += 1
        t = time.monotonic_ns()
        if events is None:
            ev = {"type": "message.delta", "data": {"id": MSG_ID, "delta": self.delta, "t": t}}
            events = [ev] * self.batch
        self.inflight[self.ref] = (t, len(events))
        self.idle.clear()
        self.send({"op": "publish", "ref": self.ref, "events": events})


async def writer_async(conn: Any, host: str, port: int, path: str, secret: str) -> None:
    cmds = pipe_queue(conn)
    try:
        w: Writer = await open_ws(lambda: Writer(host, port, path), host, port)
        w.send({"op": "hello", "token": secret})
        await asyncio.wait_for(w.init, 30)
        w.publish([{"type": "message", "data": {"id": MSG_ID, "role": "assistant", "content": ""}}])
        await asyncio.wait_for(w.idle.wait(), 30)
        if w.errors:
            raise RuntimeError(w.errors[0])
    except Exception as e:
        conn.send(("error", f"writer setup failed: {e!r}"))
        return
    w.ack_lat.clear()
    w.acked = 0  # the setup event is not part of the point (readers join after it)
    conn.send(("ready", w.last_seq))
    cmd = await cmds.get()
    if cmd[0] != "go":
        return
    _, mode, rate, duration, window, batch, max_events, delta = cmd
    w.batch, w.delta = batch, delta
    max_pubs = max(1, max_events // batch)
    t0 = time.monotonic_ns()
    pubs = 0
    if mode == "rate":
        per_s = rate / batch
        end = t0 + int(duration * 1e9)
        while True:
            now = time.monotonic_ns()
            if now >= end or pubs >= max_pubs:
                break
            due = min(max_pubs, int((now - t0) * per_s / 1e9) + 1)
            while pubs < due:
                w.publish()
                pubs += 1
            await asyncio.sleep(0.0005)
    else:
        stop_at = t0 + int(duration * 1e9)
        state = {"pubs": 0, "sending": True}

        def refill() -> None:
            while state["sending"] and len(w.inflight) < window:
                if state["pubs"] >= max_pubs or time.monotonic_ns() >= stop_at:
                    state["sending"] = False
                    return
                w.publish()
                state["pubs"] += 1

        w.on_ack = refill
        refill()
        while state["sending"]:
            await asyncio.sleep(0.01)
            refill()
        pubs = state["pubs"]
    t_last_send = time.monotonic_ns()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(w.idle.wait(), 60)
    t_acked = time.monotonic_ns()
    lat = sorted(w.ack_lat)
    conn.send(
        (
            "done",
            {
                "published": pubs * batch,
                "acked": w.acked,
                "unacked": sum(n for _, n in w.inflight.values()),
                "last_seq": w.last_seq,
                "t0": t0,
                "t_last_send": t_last_send,
                "t_acked": t_acked,
                "errors": w.errors,
                "ack_p50_ms": lat[len(lat) // 2] / 1e6 if lat else None,
                "ack_p99_ms": lat[int(len(lat) * 0.99)] / 1e6 if lat else None,
            },
        )
    )
    # stay connected (and keep reading) until told to quit, so the session stays live
    while (await cmds.get())[0] != "quit":
        pass
    w.close()


def writer_main(conn: Any, host: str, port: int, path: str, secret: str) -> None:
    pin(LOAD_CORE)
    asyncio.run(writer_async(conn, host, port, path, secret))


# --------------------------------------------------------------------------------------
# Servers under test
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, host: str, port: int, path: str, body: Any = None, token: str = "") -> Any:
    import http.client

    c = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


class Server:
    """A server process pinned to the server core, ready once ``GET ready[0]`` answers
    ``ready[1]`` (agentsync's /readyz; other servers: a known 404)."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        env: dict[str, str],
        ready: tuple[str, int] = ("/readyz", 200),
        cwd: str | None = None,
    ) -> None:
        self.name, self.port = name, port
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open for the server's life)
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), *cmd],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited {self.proc.returncode}; log: {self.log.name}")
            try:
                if http("GET", "127.0.0.1", port, ready[0])[0] == ready[1]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} not ready in 60 s; log: {self.log.name}")
            time.sleep(0.1)
        self.ps = psutil.Process(self.proc.pid)

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self.procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def new_session(self) -> tuple[str, str]:
        if self.name == "peer":
            return secrets.token_urlsafe(12), "peer-secret"
        status, data = http("POST", "127.0.0.1", self.port, "/v1/shares", {"title": "bench"})
        if status != 201:
            raise RuntimeError(f"POST /v1/shares -> {status} {data[:200]!r}")
        d = json.loads(data)
        return d["session_id"], d["secret"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def nodes(self) -> list[Server]:
        """The processes serving the setup (one here; a Cluster has several)."""
        return [self]

    def log_problems(self) -> list[str]:
        return log_problems(self.log.name)


def log_problems(path: str, limit: int = 5) -> list[str]:
    """Warning, error and traceback lines of a server log: counts by first words + examples."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            if not PROBLEM_RE.search(line):
                continue
            key = ID_RE.sub("<id>", " ".join(PROBLEM_RE.split(line, 1)[-1].split()[:6]))
            counts[key] = counts.get(key, 0) + 1
            examples.setdefault(key, line.strip()[:300])
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [f"{n}x {examples[k]}" for k, n in top]


PROBLEM_RE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b:?")
ID_RE = re.compile(r"[A-Za-z0-9_-]{12,}|\d+")


def agentsync_server(
    name: str, agentsync_cmd: str | None, data_dir: str, extra: list[str] | None = None
) -> Server:
    """An agentsync node on a free port with rate and address limits off, on core 0."""
    port = free_port()
    if agentsync_cmd:
        cmd = agentsync_cmd.format(port=port, data=data_dir).split()
    else:
        here = os.path.dirname(sys.executable)  # the venv's, when it is not activated
        exe = shutil.which("agentsync") or shutil.which("agentsync", path=here) or "agentsync"
        cmd = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--data", data_dir]
        helptext = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True)
        if "--rate-limit" in helptext.stdout:
            cmd += ["--rate-limit", "0"]
        if "--address-limits" in helptext.stdout:
            cmd += ["--no-address-limits"]
    return Server(name, cmd + (extra or []), port, {"AGENTSYNC_RATE_LIMIT": "0"})


def start_servers(
    names: list[str],
    agentsync_cmd: str | None,
    data_dir: str,
    *,
    nodes: int = 3,
    store: str = PG_URL,
    bus: str = REDIS_URL,
) -> list[Any]:
    """Servers by name: `peer`, `agentsync` (one node, SQLite in data_dir), `cluster`
    (``nodes`` agentsync nodes over PostgreSQL ``store`` + Redis ``bus``, see Cluster)."""
    servers: list[Any] = []
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        for name in names:
            if name == "peer":
                port = free_port()
                cmd = [sys.executable, os.path.join(here, "peer_broadcast.py"), "--port", str(port)]
                servers.append(Server("peer", cmd, port, {}))
            elif name == "cluster":
                servers.append(Cluster(nodes, agentsync_cmd, data_dir, store, bus))
            else:
                servers.append(agentsync_server("agentsync", agentsync_cmd, data_dir))
    except BaseException:
        for srv in servers:
            srv.stop()
        raise
    return servers


# --------------------------------------------------------------------------------------
# Several nodes: one PostgreSQL store, one Redis bus
# --------------------------------------------------------------------------------------


class Cluster:
    """``n`` agentsync nodes sharing a PostgreSQL schema (``bench_<hex>``, created fresh by the
    nodes, dropped by stop()) and a Redis bus; each node has its own port and data dir, all
    pinned to core 0 like a single server. Duck-types Server: ``port``/``new_session`` are
    node 0's, ``cpu``/``rss`` sum the nodes (PostgreSQL's and Redis's own CPU is not in them:
    see ``services_cpu``)."""

    def __init__(self, n: int, agentsync_cmd: str | None, data_dir: str, store: str, bus: str):
        self.name = f"cluster{n}"
        self.schema = f"bench_{secrets.token_hex(4)}"
        self.pg, self.bus = store, bus
        self.store = f"{store}{'&' if '?' in store else '?'}schema={self.schema}"
        self.nodes: list[Server] = []
        try:
            for i in range(n):
                d = os.path.join(data_dir, f"{self.name}-node{i}")
                os.makedirs(d, exist_ok=True)
                extra = ["--store", self.store, "--bus", bus]
                self.nodes.append(agentsync_server(f"node{i}", agentsync_cmd, d, extra))
        except BaseException:
            self.stop()
            raise
        self.port = self.nodes[0].port

    def cpu(self) -> float:
        return sum(x.cpu() for x in self.nodes)

    def rss(self) -> int:
        return sum(x.rss() for x in self.nodes)

    def new_session(self) -> tuple[str, str]:
        return self.nodes[0].new_session()

    def log_problems(self) -> list[str]:
        return [f"{x.name}: {p}" for x in self.nodes for p in x.log_problems()]

    def stop(self) -> None:
        for x in self.nodes:
            x.stop()
        self.drop_schema()

    def drop_schema(self) -> None:
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(self.pg, timeout=10)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            finally:
                await conn.close()

        try:
            asyncio.run(drop())
        except Exception as e:
            print(f"# could not drop schema {self.schema}: {e!r}", file=sys.stderr)


def scrape(port: int) -> dict[str, float]:
    """A node's /metrics as {'name{labels}': value} (empty when it has none, e.g. the peer)."""
    try:
        status, data = http("GET", "127.0.0.1", port, "/metrics")
    except OSError:
        return {}
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in data.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def scrape_all(srv: Any) -> list[dict[str, float]]:
    return [scrape(x.port) for x in srv.nodes] if srv.name != "peer" else []


def node_stats(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, Any]:
    """Counter deltas between two scrape_all()s: bus messages per node, conflicts, errors."""

    def d(i: int, key: str) -> int:
        return round(after[i].get(key, 0.0) - before[i].get(key, 0.0))

    rejected: dict[str, int] = {}
    for i in range(len(after)):
        for key in after[i]:
            if key.startswith("agentsync_requests_rejected_total{"):
                n = d(i, key)
                if n:
                    code = key.split('code="', 1)[-1].rstrip('"}')
                    rejected[code] = rejected.get(code, 0) + n
    nodes = range(len(after))
    return {
        "bus_out": [d(i, 'agentsync_bus_messages_total{direction="out"}') for i in nodes],
        "bus_in": [d(i, 'agentsync_bus_messages_total{direction="in"}') for i in nodes],
        "conflicts": sum(d(i, "agentsync_append_conflicts_total") for i in nodes),
        "catch_ups": sum(d(i, "agentsync_bus_catch_ups_total") for i in nodes),
        "slow_consumers": sum(d(i, "agentsync_slow_consumers_total") for i in nodes),
        "events_in": [d(i, "agentsync_events_in_total") for i in nodes],
        "appends": sum(d(i, "agentsync_append_seconds_count") for i in nodes),
        "appends_over_100ms": sum(
            d(i, "agentsync_append_seconds_count")
            - d(i, 'agentsync_append_seconds_bucket{le="0.1"}')
            for i in nodes
        ),
        "rejected": rejected,
    }


def services_cpu() -> float:
    """CPU seconds of this machine's PostgreSQL and Redis processes (not pinned by us)."""
    total = 0.0
    for p in psutil.process_iter(["name"]):
        name = p.info["name"] or ""
        if name.startswith(("postgres", "redis-server")):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


# --------------------------------------------------------------------------------------
# One point
# --------------------------------------------------------------------------------------


def core_busy(before: Any, after: Any) -> float:
    def busy(t: Any) -> tuple[float, float]:
        idle = t.idle + getattr(t, "iowait", 0.0)
        total = sum(t)
        return total - idle, total

    b0, t0 = busy(before)
    b1, t1 = busy(after)
    return 100.0 * (b1 - b0) / max(1e-9, t1 - t0)


def recv(conn: Any, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer from {what} in {timeout:.0f} s")
    msg = conn.recv()
    if msg[0] == "error":
        raise RuntimeError(msg[1])
    return msg


def pct(xs: list[int], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] / 1e6


def reader_plan(r: int, nodes: int, procs: int) -> list[tuple[int, int]]:
    """(node index, readers) per reader process: R spread evenly over the nodes, and each
    node's readers over ``procs / nodes`` processes (at least one per node)."""
    plan = []
    for k in range(nodes):
        rk = r // nodes + (1 if k < r % nodes else 0)
        nk = max(1, min(max(1, procs // nodes), rk))
        plan += [(k, rk // nk + (1 if i < rk % nk else 0)) for i in range(nk)]
    return [(k, n) for k, n in plan if n]


def locality(results: list[dict[str, Any]], plan: list[tuple[int, int]], same: bool, acked: int):
    """Deliveries, latency and seq checks of the readers on the writer's node (same) or on the
    other nodes (cross)."""
    sel = [(x, n) for x, (k, n) in zip(results, plan, strict=True) if (k == 0) == same]
    lat = [v for x, _ in sel for v in x["lat"]]
    behind = [b for x, _ in sel for b in x["behind"]]
    readers = sum(n for _, n in sel)
    return {
        "readers": readers,
        "nodes": len({k for k, _ in plan if (k == 0) == same}),
        "delivered": sum(x["events"] for x, _ in sel),
        "expected": acked * readers,
        "p50_ms": pct(lat, 0.50),
        "p99_ms": pct(lat, 0.99),
        "max_ms": pct(lat, 1.0),
        "lat_samples": len(lat),
        "gaps": sum(x["gaps"] for x, _ in sel),
        "dups": sum(x["dups"] for x, _ in sel),
        "drained": all(x["done"] == n for x, n in sel),
        "max_behind": max(behind) if behind else 0,
    }


def run_point(srv: Any, r: int, mode: str, a: argparse.Namespace) -> dict[str, Any]:
    """One point against ``srv`` (a Server or a Cluster): the writer on node 0, the readers
    spread over all nodes."""
    ctx = mp.get_context("fork")
    sid, secret = srv.new_session()
    path = f"/v1/sessions/{sid}/ws"
    host, port = "127.0.0.1", srv.port
    ports = [x.port for x in srv.nodes]
    plan = reader_plan(r, len(ports), a.reader_procs)
    sizes = [n for _, n in plan]
    procs: list[Any] = []
    pipes: list[Any] = []
    rss_peak = [srv.rss()]
    stop_sampler = threading.Event()
    try:
        wp, wc = ctx.Pipe()
        wproc = ctx.Process(target=writer_main, args=(wc, host, port, path, secret), daemon=True)
        wproc.start()
        procs.append(wproc)
        recv(wp, 60, "writer")
        sample = max(1, r // a.lat_conns)
        for k, n in plan:
            rp, rc = ctx.Pipe()
            args = (rc, host, ports[k], path, n, sample)
            p = ctx.Process(target=reader_main, args=args, daemon=True)
            p.start()
            procs.append(p)
            pipes.append(rp)
        for rp in pipes:
            recv(rp, 120, "reader")
        time.sleep(0.3)
        load_ps = [psutil.Process(p.pid) for p in procs]

        def load_cpu() -> float:
            return sum(sum(q.cpu_times()[:2]) for q in load_ps)

        def sampler() -> None:
            while not stop_sampler.wait(0.2):
                with contextlib.suppress(Exception):
                    rss_peak[0] = max(rss_peak[0], srv.rss())

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        m0 = scrape_all(srv)
        cpu0, lcpu0, per0, scpu0 = srv.cpu(), load_cpu(), psutil.cpu_times(True), services_cpu()
        ncpu0 = [x.cpu() for x in srv.nodes]
        w0 = time.monotonic_ns()
        wp.send(("go", mode, a.rate, a.duration, a.window, a.batch, a.max_events, a.delta))
        done = recv(wp, a.duration + 90, "writer")[1]
        for rp in pipes:
            rp.send(("target", done["last_seq"], a.drain_timeout))
        results = [recv(rp, a.drain_timeout + 60, "reader")[1] for rp in pipes]
        w1 = time.monotonic_ns()
        cpu1, lcpu1, per1, scpu1 = srv.cpu(), load_cpu(), psutil.cpu_times(True), services_cpu()
        ncpu1 = [x.cpu() for x in srv.nodes]
        m1 = scrape_all(srv)
        stop_sampler.set()
        th.join()
        wp.send(("quit",))
    finally:
        stop_sampler.set()
        for p in procs:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join()

    t0 = done["t0"]
    drained = all(x["done"] == n for x, n in zip(results, sizes, strict=True))
    t_end = max(x["last_done_ns"] for x in results) if drained else w1
    events = sum(x["events"] for x in results)
    lat: list[int] = [v for x in results for v in x["lat"]]
    wall = (t_end - t0) / 1e9
    pub_wall = max(1e-9, (done["t_acked"] - t0) / 1e9)
    point_s = max(1e-9, (w1 - w0) / 1e9)
    behind = [b for x in results for b in x["behind"]]
    codes: dict[str, int] = {}
    for x in results:
        for k, v in x["close_codes"].items():
            codes[k] = codes.get(k, 0) + v
    c0 = core_busy(per0[SERVER_CORE], per1[SERVER_CORE])
    c1 = core_busy(per0[LOAD_CORE % len(per0)], per1[LOAD_CORE % len(per1)])
    expected = done["acked"] * r
    row = {
        "server": srv.name,
        "nodes": len(ports),
        "readers": r,
        "mode": mode,
        "published": done["published"],
        "acked": done["acked"],
        "writer_errors": done["errors"][:3],
        "published_per_s": done["acked"] / pub_wall,
        "ack_p50_ms": done["ack_p50_ms"],
        "ack_p99_ms": done["ack_p99_ms"],
        "delivered": events,
        "events_per_frame": events / max(1, sum(x["frames"] for x in results)),
        "expected_deliveries": expected,
        "delivered_per_s": events / max(1e-9, wall),
        "p50_ms": pct(lat, 0.50),
        "p99_ms": pct(lat, 0.99),
        "lat_samples": len(lat),
        "drained": drained,
        "drain_s": max(0.0, (t_end - done["t_last_send"]) / 1e9),
        "max_behind": max(behind) if behind else 0,
        "server_cpu_s": cpu1 - cpu0,
        "cpu_us_per_delivery": 1e6 * (cpu1 - cpu0) / max(1, events),
        "server_rss_mb": rss_peak[0] / 2**20,
        "load_cpu_pct": 100.0 * (lcpu1 - lcpu0) / point_s,
        "services_cpu_pct": 100.0 * (scpu1 - scpu0) / point_s,
        "core0_pct": c0,
        "core1_pct": c1,
        "gaps": sum(x["gaps"] for x in results),
        "dups": sum(x["dups"] for x in results),
        "snapshot_resets": sum(x["resets"] for x in results),
        "cutoffs": sum(x["cutoffs"] for x in results),
        "reconnects": sum(x["reconnects"] for x in results),
        "failed": sum(x["failed"] for x in results),
        "close_codes": codes,
        "server_cpu_pct": 100.0 * (cpu1 - cpu0) / point_s,
        "node_cpu_pct": [100.0 * (b - a) / point_s for a, b in zip(ncpu0, ncpu1, strict=True)],
        "load_bound": 100.0 * (lcpu1 - lcpu0) / point_s >= a.load_bound_pct,
        "node_stats": node_stats(m0, m1) if m1 else None,
    }
    if len(ports) > 1:
        row["by_locality"] = {
            "same": locality(results, plan, True, done["acked"]),
            "cross": locality(results, plan, False, done["acked"]),
        }
    return row


NUMERIC_MEDIAN = (
    "published_per_s",
    "delivered_per_s",
    "events_per_frame",
    "p50_ms",
    "p99_ms",
    "drain_s",
    "cpu_us_per_delivery",
    "server_rss_mb",
    "load_cpu_pct",
    "server_cpu_pct",
    "core0_pct",
    "core1_pct",
    "services_cpu_pct",
    "ack_p50_ms",
    "ack_p99_ms",
)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[-1])
    for k in NUMERIC_MEDIAN:
        vals = [x[k] for x in runs if x.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    for k in ("gaps", "dups", "failed", "cutoffs", "reconnects", "snapshot_resets", "max_behind"):
        out[k] = max(x[k] for x in runs)
    out["drained"] = all(x["drained"] for x in runs)
    out["load_bound"] = sum(x["load_bound"] for x in runs) * 2 > len(runs)
    out["runs"] = len(runs)
    if "by_locality" in out:
        out["by_locality"] = {}
        for where, last in runs[-1]["by_locality"].items():
            sub = [x["by_locality"][where] for x in runs]
            one = dict(last)
            for k in ("p50_ms", "p99_ms", "max_ms"):
                vals = [y[k] for y in sub if y[k] is not None]
                one[k] = statistics.median(vals) if vals else None
            for k in ("gaps", "dups", "max_behind"):
                one[k] = max(y[k] for y in sub)
            one["drained"] = all(y["drained"] for y in sub)
            out["by_locality"][where] = one
    return out


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def note(x: dict[str, Any]) -> str:
    n = []
    server_bound = x["server_cpu_pct"] is not None and x["server_cpu_pct"] >= 90
    if x["load_bound"] and server_bound:
        n.append("both cores saturated")
    elif x["load_bound"]:
        n.append("LOAD-BOUND")
    elif server_bound:
        n.append("server-bound")
    if not x["drained"]:
        n.append(f"NOT DRAINED (max {x['max_behind']} behind)")
    if x["cutoffs"]:
        n.append(f"{x['cutoffs']} cut/{x['reconnects']} resumed")
    if x["failed"]:
        n.append(f"{x['failed']} failed")
    if x["snapshot_resets"]:
        n.append(f"{x['snapshot_resets']} snapshot resets")
    if x["writer_errors"]:
        n.append("writer errors: " + "; ".join(x["writer_errors"]))
    return ", ".join(n)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| server | R | mode | pub ev/s | delivered ev/s | p50 ms | p99 ms | drain s "
        "| ev/frame | CPU µs/dlv | RSS MB | gap/dup | srv CPU % | load CPU % | core1 % | notes |"
    )
    lines = [head, "|" + "---|" * 16]
    for x in rows:
        lines.append(
            f"| {x['server']} | {x['readers']} | {x['mode']} | {fmt(x['published_per_s'])} "
            f"| {fmt(x['delivered_per_s'])} | {fmt(x['p50_ms'])} | {fmt(x['p99_ms'])} "
            f"| {fmt(x['drain_s'])} | {fmt(x['events_per_frame'], 1)} "
            f"| {fmt(x['cpu_us_per_delivery'])} "
            f"| {fmt(x['server_rss_mb'], 0)} "
            f"| {x['gaps']}/{x['dups']} | {fmt(x['server_cpu_pct'], 0)} "
            f"| {fmt(x['load_cpu_pct'], 0)} | {fmt(x['core1_pct'], 0)} "
            f"| {note(x)} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], num: str = "agentsync", den: str = "peer") -> str:
    by = {(x["server"], x["readers"], x["mode"]): x for x in rows}
    ab = f"{num}/{den}"
    lines = [
        f"| R | mode | delivered ev/s ({ab}) | p99 ({ab}) | CPU/dlv ({ab}) |",
        "|---|---|---|---|---|",
    ]
    any_ = False

    def q(a: Any, b: Any) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "-"

    for (s, r, m), x in by.items():
        p = by.get((den, r, m))
        if s != num or p is None:
            continue
        any_ = True
        lines.append(
            f"| {r} | {m} | {q(x['delivered_per_s'], p['delivered_per_s'])} "
            f"| {q(x['p99_ms'], p['p99_ms'])} "
            f"| {q(x['cpu_us_per_delivery'], p['cpu_us_per_delivery'])} |"
        )
    return "\n".join(lines) if any_ else ""


def locality_table(rows: list[dict[str, Any]]) -> str:
    """Multi-node points split by where the readers are: on the writer's node (same) or on
    another node, fed through the bus (cross)."""
    head = (
        "| server | R | mode | readers | delivered / expected | p50 ms | p99 ms | max ms "
        "| lat samples | gap/dup | drained |"
    )
    lines = [head, "|" + "---|" * 11]
    for x in rows:
        for where, y in (x.get("by_locality") or {}).items():
            node = "node 0" if where == "same" else f"{y['nodes']} other nodes"
            drained = "yes" if y["drained"] else f"NO (max {y['max_behind']} behind)"
            lines.append(
                f"| {x['server']} | {x['readers']} | {x['mode']} "
                f"| {where}-node: {y['readers']} on {node} | {y['delivered']}/{y['expected']} "
                f"| {fmt(y['p50_ms'])} | {fmt(y['p99_ms'])} | {fmt(y['max_ms'])} "
                f"| {y['lat_samples']} | {y['gaps']}/{y['dups']} "
                f"| {drained} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def stats_table(rows: list[dict[str, Any]]) -> str:
    """Node counters (deltas over the point, from each node's /metrics) and the CPU of the
    machine's PostgreSQL and Redis processes."""
    head = (
        "| server | R | mode | bus out per node | bus in per node | conflicts | catch-ups "
        "| slow consumers | rejected | appends > 100 ms | CPU % per node | pg+redis CPU % |"
    )
    lines = [head, "|" + "---|" * 12]
    for x in rows:
        st = x.get("node_stats")
        if not st:
            continue
        rej = ", ".join(f"{k}: {v}" for k, v in st["rejected"].items()) or "0"
        lines.append(
            f"| {x['server']} | {x['readers']} | {x['mode']} "
            f"| {' / '.join(map(str, st['bus_out']))} | {' / '.join(map(str, st['bus_in']))} "
            f"| {st['conflicts']} | {st['catch_ups']} | {st['slow_consumers']} | {rej} "
            f"| {st['appends_over_100ms']}/{st['appends']} "
            f"| {' / '.join(fmt(c, 0) for c in x['node_cpu_pct'])} "
            f"| {fmt(x.get('services_cpu_pct'), 0)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def add_cluster_args(ap: argparse.ArgumentParser) -> None:
    """The `cluster` setup's options (fanout.py and ingest.py)."""
    ap.add_argument("--nodes", type=int, default=3, help="nodes of the `cluster` setup")
    ap.add_argument(
        "--store",
        default=PG_URL,
        help="PostgreSQL URL of the cluster; a fresh schema=bench_<hex> is added, then dropped",
    )
    ap.add_argument("--bus", default=REDIS_URL, help="Redis URL of the cluster's bus")


def stop_all(servers: list[Any]) -> dict[str, list[str]]:
    """Stop the servers; print (to stderr) and return warnings/errors found in their logs."""
    problems: dict[str, list[str]] = {}
    for srv in servers:
        srv.stop()
        found = srv.log_problems()
        if found:
            problems[srv.name] = found
            print(f"# {srv.name}: warnings/errors in the log:", file=sys.stderr)
            for line in found:
                print(f"#   {line}", file=sys.stderr)
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--servers", default="peer,agentsync", help="comma list: peer,agentsync,cluster"
    )
    ap.add_argument("--readers", default="10,100,1000", help="comma list of R")
    ap.add_argument("--modes", default="rate,sat", help="comma list: rate (fixed), sat")
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s in rate mode")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of publishing")
    ap.add_argument("--window", type=int, default=32, help="in-flight publishes in sat mode")
    ap.add_argument("--batch", type=int, default=1, help="events per publish")
    ap.add_argument("--max-events", type=int, default=2_000_000, help="cap per point")
    ap.add_argument("--delta", default="tok ", help="delta text of each event")
    ap.add_argument("--drain-timeout", type=float, default=20.0, help="s to wait for readers")
    ap.add_argument("--reader-procs", type=int, default=2, help="reader processes (core 1)")
    ap.add_argument("--lat-conns", type=int, default=10, help="~connections' worth sampled")
    ap.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    ap.add_argument("--load-bound-pct", type=float, default=90.0)
    ap.add_argument(
        "--agentsync-cmd",
        default=None,
        help="override, e.g. 'agentsync serve --port {port} --data {data}'",
    )
    add_cluster_args(ap)
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    a = ap.parse_args()
    pin(LOAD_CORE)
    names = [s.strip() for s in a.servers.split(",") if s.strip()]
    rs = [int(x) for x in a.readers.split(",")]
    modes = [m.strip() for m in a.modes.split(",")]
    data_dir = tempfile.mkdtemp(prefix="agentsync-bench-")
    servers = start_servers(
        names, a.agentsync_cmd, data_dir, nodes=a.nodes, store=a.store, bus=a.bus
    )
    rows: list[dict[str, Any]] = []
    try:
        for r in rs:
            for mode in modes:
                for srv in servers:
                    runs = []
                    for _ in range(a.repeat):
                        try:
                            runs.append(run_point(srv, r, mode, a))
                        except Exception as e:
                            print(f"# {srv.name} R={r} {mode}: {e}", file=sys.stderr)
                    if runs:
                        row = combine(runs)
                        rows.append(row)
                        if not a.json:
                            print(
                                f"# {srv.name} R={r} {mode}: {fmt(row['delivered_per_s'])} ev/s "
                                f"p99 {fmt(row['p99_ms'])} ms {note(row)}",
                                file=sys.stderr,
                            )
    finally:
        problems = stop_all(servers)
        shutil.rmtree(data_dir, ignore_errors=True)
    if a.json:
        for x in rows:
            x.pop("lat", None)
        out = {"args": vars(a), "cpus": os.cpu_count(), "rows": rows, "log_problems": problems}
        print(json.dumps(out, indent=1))
    else:
        print(table(rows))
        cluster = f"cluster{a.nodes}"
        for extra in (
            ratios(rows),
            ratios(rows, cluster, "agentsync"),
            locality_table(rows),
            stats_table(rows),
        ):
            if extra:
                print()
                print(extra)


if __name__ == "__main__":
    main()
