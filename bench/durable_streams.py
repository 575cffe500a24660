"""Durable Streams benchmark: agentsync beside the Node reference server and rakaia-streams.

    python bench/durable_streams.py                      # every server, both points
    python bench/durable_streams.py --repeat 3           # medians of 3 runs per point
    python bench/durable_streams.py --servers agentsync,ref-file --points appends --json

Servers (--servers), each pinned to core 0 (``taskset -c 0``); the load runs on core 1:

- ``agentsync``: ``agentsync serve`` over SQLite in a fresh data dir. Durable: an append is
  answered after the group commit that holds it (``synchronous=NORMAL``: survives SIGKILL).
- ``agentsync-full``: the same with ``--sqlite-synchronous FULL`` (also survives power loss).
- ``cluster``: ``--nodes`` agentsync nodes over PostgreSQL + Redis (see fanout.Cluster); the
  appends are spread over the nodes, the SSE readers too, the writer uses node 0.
- ``ref-memory`` / ``ref-file``: npm ``@durable-streams/server`` 0.3.7, the protocol's
  reference server (``DurableStreamTestServer``), in memory / with its file-backed store
  (``dataDir``); installed once into ``~/.cache/agentsync-tests`` (needs npm).
- ``rakaia``: PyPI ``rakaia-streams`` 0.9.0, ``uvicorn rakaia:app`` (in memory), in its own
  cached venv with the same uvicorn, httptools and uvloop as agentsync.

Points (--points):

- ``appends``: ``wrk -t1 -c50 -d5s`` (``--conns``, ``--duration``) POSTs a small JSON message
  (``{"type":"token","text":...}``, 60 bytes) to ``application/json`` streams, rotating over
  ``--streams`` streams (50: about one per connection; 1: every producer on one stream).
  appends/s counts answers below 400; p50/p99 is wrk's request latency; ``stored`` is what a
  full catch-up read finds afterwards and must be >= the appends acknowledged.
- ``sse``: ``--readers`` (100) SSE readers (``live=sse`` from ``offset=-1`` of a fresh
  stream) and one writer appending ``--rate`` (100) messages/s for ``--duration`` s, each
  stamped with ``time.monotonic_ns()``; latency = receipt - stamp, for every message on every
  reader. ``gap/dup`` counts messages a reader missed or saw twice (both must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.durable_streams.run_reference import install_server
from tests.durable_streams.runner import cache_root

from fanout import LOAD_CORE, Cluster, Server, agentsync_server, free_port, pct, pin
from ingest import lua_str, run_wrk_scripts

RAKAIA_VERSION = "0.9.0"
PREFIX = "/v1/stream"
JSON = "application/json"
MESSAGE = json.dumps(
    {"type": "token", "text": "tok tok tok tok tok tok tok"}, separators=(",", ":")
)
SERVERS = ("agentsync", "ref-memory", "ref-file", "rakaia")
STAMP_RE = re.compile(rb'"i":\s*(\d+),\s*"t":\s*(\d+)')
UP_TO_DATE_RE = re.compile(rb'"upToDate":\s*true')

APPEND_LUA = r"""
local paths = {%(paths)s}
local body = %(body)s
local n = #paths
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", paths[(i %% n) + 1], {["Content-Type"] = "%(ctype)s"}, body)
end
"""


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------


def rakaia_venv(version: str = RAKAIA_VERSION) -> Path:
    """A cached venv with rakaia-streams and agentsync's own uvicorn, httptools and uvloop."""
    venv = cache_root() / f"rakaia-streams-{version}"
    uvicorn = venv / "bin" / "uvicorn"
    if not uvicorn.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = [f"{p}=={importlib.metadata.version(p)}" for p in ("uvicorn", "httptools", "uvloop")]
        cmd = [str(venv / "bin" / "pip"), "install", "-q", f"rakaia-streams=={version}", *pins]
        subprocess.run(cmd, check=True)
    return venv


def start_server(name: str, a: argparse.Namespace, data_dir: str) -> Any:
    """One server of --servers, ready to answer; a ``Server`` (or ``Cluster``)."""
    probe = f"{PREFIX}/ready-probe"
    if name in ("agentsync", "agentsync-full"):
        extra = ["--sqlite-synchronous", "FULL"] if name == "agentsync-full" else []
        return agentsync_server(name, a.agentsync_cmd, os.path.join(data_dir, name), extra)
    if name == "cluster":
        return Cluster(a.nodes, a.agentsync_cmd, data_dir, a.store, a.bus)
    port = free_port()
    if name in ("ref-memory", "ref-file"):
        prefix = install_server()
        env = {"DS_PORT": str(port)}
        if name == "ref-file":
            env["DS_DATA_DIR"] = os.path.join(data_dir, name)
            os.makedirs(env["DS_DATA_DIR"])
        node = shutil.which("node") or "node"
        cmd = [node, str(prefix / "serve.mjs")]
        return Server(name, cmd, port, env, ready=(probe, 404), cwd=str(prefix))
    if name == "rakaia":
        uvicorn = rakaia_venv() / "bin" / "uvicorn"
        cmd = [str(uvicorn), "rakaia:app", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--log-level", "warning", "--no-access-log"]
        return Server(name, cmd, port, {}, ready=(probe, 404))
    raise SystemExit(
        f"unknown server {name!r}; one of {', '.join(SERVERS)}, agentsync-full, cluster"
    )


def request(
    port: int, method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": JSON} if method in ("PUT", "POST") else {}
        c.request(method, path, body=body or None, headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def create_streams(port: int, n: int) -> list[str]:
    """``n`` fresh empty JSON streams; their paths."""
    run = uuid.uuid4().hex[:8]
    paths = [f"{PREFIX}/bench-{run}/{k}" for k in range(n)]
    for path in paths:
        status, _, data = request(port, "PUT", path)
        if status not in (200, 201):
            raise RuntimeError(f"PUT {path} -> {status} {data[:200]!r}")
    return paths


def count_messages(port: int, path: str) -> int:
    """Messages in a JSON stream, by catch-up reads from the start to the tail."""
    offset, total = "-1", 0
    for _ in range(100_000):
        status, headers, data = request(port, "GET", f"{path}?offset={offset}")
        if status != 200:
            raise RuntimeError(f"GET {path}?offset={offset} -> {status} {data[:200]!r}")
        total += len(json.loads(data)) if data.strip() else 0
        nxt = headers.get("stream-next-offset", offset)
        if headers.get("stream-up-to-date") == "true" or nxt == offset:
            return total
        offset = nxt
    raise RuntimeError(f"{path}: no end in sight")


# --------------------------------------------------------------------------------------
# Point 1: appends/s with 50 producers (wrk)
# --------------------------------------------------------------------------------------


def run_appends(srv: Any, streams: int, a: argparse.Namespace) -> dict[str, Any]:
    nodes = srv.nodes
    paths = create_streams(nodes[0].port, streams)
    conns = [a.conns // len(nodes) + (k < a.conns % len(nodes)) for k in range(len(nodes))]
    script = APPEND_LUA % {
        "paths": ",".join(lua_str(p) for p in paths),
        "body": lua_str(MESSAGE),
        "ctype": JSON,
    }
    cpu0 = srv.cpu()
    r = run_wrk_scripts(
        [(x.port, script, c) for x, c in zip(nodes, conns, strict=True) if c], a.duration
    )
    cpu = srv.cpu() - cpu0
    stored = sum(count_messages(nodes[0].port, p) for p in paths)
    return {
        "server": srv.name,
        "streams": streams,
        "appends_per_s": r["ok_requests"] / r["secs"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "acked": r["ok_requests"],
        "stored": stored,
        "errors": r["non200"] + r["socket_errors"],
        "server_cpu_pct": 100 * cpu / r["secs"],
        "load_cpu_pct": r["load_cpu_pct"],
        "server_rss_mb": srv.rss() / 2**20,
    }


# --------------------------------------------------------------------------------------
# Point 2: append-to-delivery latency to 100 SSE readers
# --------------------------------------------------------------------------------------


class SSEReader(asyncio.Protocol):
    """A minimal ``live=sse`` client: HTTP/1.1 head, chunked body, SSE events; it records
    the latency and index of every stamped message."""

    def __init__(self, path: str, latencies: list[int]) -> None:
        self.path = path
        self.latencies = latencies
        self.buf = b""
        self.body = b""
        self.head_done = False
        self.chunked = False
        self.up_to_date = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.seen: list[int] = []
        self.target = 1 << 62  # messages to wait for; set by the point
        self.complete = asyncio.Event()
        self.status = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(
            f"GET {self.path}?offset=-1&live=sse HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].lower(), self.buf[end + 4 :]
            self.status = int(head.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in head
            self.head_done = True
        if self.chunked:
            self.dechunk()
        else:
            self.body += self.buf
            self.buf = b""
        while (end := self.body.find(b"\n\n")) >= 0:
            event, self.body = self.body[:end], self.body[end + 2 :]
            self.on_event(event, now)

    def dechunk(self) -> None:
        while True:
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(self.buf[:eol].split(b";")[0], 16)
            if len(self.buf) < eol + 2 + size + 2:
                return
            self.body += self.buf[eol + 2 : eol + 2 + size]
            self.buf = self.buf[eol + 2 + size + 2 :]

    def on_event(self, event: bytes, now: int) -> None:
        if event.startswith(b"event: control") or event.startswith(b"event:control"):
            if UP_TO_DATE_RE.search(event) and not self.up_to_date.done():
                self.up_to_date.set_result(None)
            return
        for i, t in STAMP_RE.findall(event):
            self.seen.append(int(i))
            self.latencies.append(now - int(t))
        if len(self.seen) >= self.target:
            self.complete.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.up_to_date.done():
            self.up_to_date.set_exception(
                ConnectionError(f"lost before up to date ({self.status})")
            )


async def sse_point(
    port: int, reader_ports: list[int], path: str, a: argparse.Namespace
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[int] = []
    readers: list[SSEReader] = []
    for k in range(a.readers):
        rport = reader_ports[k % len(reader_ports)]
        _, proto = await loop.create_connection(
            lambda: SSEReader(path, latencies), "127.0.0.1", rport
        )
        readers.append(proto)
    await asyncio.wait_for(asyncio.gather(*(r.up_to_date for r in readers)), 30)
    count = int(a.rate * a.duration)
    for reader in readers:
        reader.target = count
    r_stream, w_stream = await asyncio.open_connection("127.0.0.1", port)
    cpu0 = time.process_time()
    start = time.monotonic()
    failed = 0
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / a.rate - time.monotonic()))
        body = f'{{"i":{i},"t":{time.monotonic_ns()}}}'.encode()
        w_stream.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {JSON}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await r_stream.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if length:
            await r_stream.readexactly(int(length.group(1)))
        failed += int(head.split(b" ", 2)[1]) >= 400
    with contextlib.suppress(TimeoutError):  # what is missing then is reported as gaps
        await asyncio.wait_for(asyncio.gather(*(r.complete.wait() for r in readers)), 10)
    secs = time.monotonic() - start
    cpu = time.process_time() - cpu0
    w_stream.close()
    for r in readers:
        r.transport.close()
    gaps = dups = 0
    for r in readers:
        dups += len(r.seen) - len(set(r.seen))
        gaps += count - len(set(r.seen))
        if r.seen != sorted(r.seen):
            gaps += 1  # out of order counts as a gap
    latencies.sort()
    return {
        "delivered": sum(len(r.seen) for r in readers),
        "expected": count * a.readers,
        "append_errors": failed,
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": latencies[-1] / 1e6 if latencies else None,
        "gaps": gaps,
        "dups": dups,
        "load_cpu_pct": 100 * cpu / secs,
    }


def run_sse(srv: Any, a: argparse.Namespace) -> dict[str, Any]:
    nodes = srv.nodes
    (path,) = create_streams(nodes[0].port, 1)
    cpu0 = srv.cpu()
    t0 = time.monotonic()
    r = asyncio.run(sse_point(nodes[0].port, [x.port for x in nodes], path, a))
    secs = time.monotonic() - t0
    return {
        "server": srv.name,
        "readers": a.readers,
        "rate": a.rate,
        **r,
        "server_cpu_pct": 100 * (srv.cpu() - cpu0) / secs,
    }


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

MEDIANS = ("appends_per_s", "p50_ms", "p99_ms", "max_ms", "server_cpu_pct", "load_cpu_pct")


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(runs[-1])
    for k in MEDIANS:
        vals = [x[k] for x in runs if x.get(k) is not None]
        if vals:
            row[k] = statistics.median(vals)
    for k in ("errors", "gaps", "dups", "append_errors"):
        if k in row:
            row[k] = sum(x[k] for x in runs)
    if "stored" in row:
        row["lost"] = sum(max(0, x["acked"] - x["stored"]) for x in runs)
    return row


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def appends_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | streams | appends/s | p50 ms | p99 ms | vs ref-file | stored ≥ acked "
        "| errors | srv CPU % | load CPU % |",
        "|" + "---|" * 10,
    ]
    ref = {x["streams"]: x["appends_per_s"] for x in rows if x["server"] == "ref-file"}
    for x in rows:
        base = ref.get(x["streams"])
        ratio = f"{x['appends_per_s'] / base:.1f}x" if base else "-"
        ok = "yes" if not x["lost"] else f"NO: {x['lost']} lost"
        lines.append(
            f"| {x['server']} | {x['streams']} | {x['appends_per_s']:,.0f} | {ms(x['p50_ms'])} "
            f"| {ms(x['p99_ms'])} | {ratio} | {ok} | {x['errors']} | {x['server_cpu_pct']:.0f} "
            f"| {x['load_cpu_pct']:.0f}{' LOAD-BOUND' * (x['load_cpu_pct'] >= 90)} |"
        )
    return "\n".join(lines)


def sse_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | readers | appends/s | delivered | p50 ms | p99 ms | max ms | gap/dup "
        "| append errors | srv CPU % | load CPU % |",
        "|" + "---|" * 11,
    ]
    for x in rows:
        lines.append(
            f"| {x['server']} | {x['readers']} | {x['rate']:g} | {x['delivered']}/{x['expected']} "
            f"| {ms(x['p50_ms'])} | {ms(x['p99_ms'])} | {ms(x['max_ms'])} "
            f"| {x['gaps']}/{x['dups']} | {x['append_errors']} | {x['server_cpu_pct']:.0f} "
            f"| {x['load_cpu_pct']:.0f}{' LOAD-BOUND' * (x['load_cpu_pct'] >= 90)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--points", default="appends,sse", help="appends,sse")
    ap.add_argument("--streams", default="50,1", help="streams the producers rotate over")
    ap.add_argument("--conns", type=int, default=50, help="concurrent producers (wrk -c)")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--readers", type=int, default=100)
    ap.add_argument("--rate", type=float, default=100.0, help="appends/s in the sse point")
    ap.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    ap.add_argument("--agentsync-cmd", default=None, help="as in fanout.py")
    ap.add_argument("--nodes", type=int, default=3, help="nodes of `cluster`")
    ap.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--bus", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not shutil.which("wrk") and "appends" in a.points:
        raise SystemExit("the appends point needs wrk: apt-get install -y wrk")
    pin(LOAD_CORE)
    data_dir = tempfile.mkdtemp(prefix="agentsync-ds-bench-")
    appends: list[dict[str, Any]] = []
    sse: list[dict[str, Any]] = []
    try:
        names = [s.strip() for s in a.servers.split(",") if s.strip()]
        counts = [int(x) for x in a.streams.split(",")]
        with contextlib.ExitStack() as stack:
            servers = []
            for name in names:  # all up at once (idle ones cost nothing): rounds interleave
                servers.append(start_server(name, a, data_dir))
                stack.callback(servers[-1].stop)
            appends_runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
            sse_runs: dict[str, list[dict[str, Any]]] = {}
            for round_ in range(a.repeat):
                # The machine's speed drifts: each round runs every server, in alternating
                # order, so that a slow spell hits them all alike.
                for srv in servers if round_ % 2 == 0 else servers[::-1]:
                    if "appends" in a.points:
                        for n in counts:
                            run = run_appends(srv, n, a)
                            appends_runs.setdefault((srv.name, n), []).append(run)
                            rate = run["appends_per_s"]
                            print(f"# {srv.name}: {n} streams: {rate:,.0f}/s", file=sys.stderr)
                    if "sse" in a.points:
                        sse_runs.setdefault(srv.name, []).append(run_sse(srv, a))
                        p99 = ms(sse_runs[srv.name][-1]["p99_ms"])
                        print(f"# {srv.name}: sse p99 {p99} ms", file=sys.stderr)
            appends = [
                median_row(appends_runs[(srv.name, n)])
                for srv in servers
                if "appends" in a.points
                for n in counts
            ]
            sse = [median_row(sse_runs[srv.name]) for srv in servers if "sse" in a.points]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    if a.json:
        print(json.dumps({"args": vars(a), "appends": appends, "sse": sse}, indent=1))
        return
    print(f"servers on core 0, load on core {LOAD_CORE}; medians of {a.repeat} run(s)\n")
    if appends:
        print(
            f"appends: wrk -t1 -c{a.conns} -d{a.duration:g}s, {len(MESSAGE)}-byte JSON messages\n"
        )
        print(appends_table(appends) + "\n")
    if sse:
        print(
            f"append -> delivery, {a.readers} SSE readers, "
            f"{a.rate:g} appends/s for {a.duration:g} s\n"
        )
        print(sse_table(sse))


if __name__ == "__main__":
    main()
