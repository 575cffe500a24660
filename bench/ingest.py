"""HTTP ingest benchmark: acknowledged events/s of `POST /v1/sessions/{id}/events`.

agentsync runs pinned to core 0 (``taskset -c 0``, SQLite in a fresh temp data dir, rate
limits off); the load runs pinned to core 1. Points: 1 and 100 concurrent writers, batches of
1 and 50 events, writers each owning a session ("own") or all sharing one ("shared"). Every
writer is a keep-alive HTTP/1.1 connection in a closed loop (next request when the previous
one is answered), so the 1-writer rows are also the append ack latency of a single writer.

    python bench/ingest.py                      # wrk if installed, else the Python client
    python bench/ingest.py --client python --writers 1,100 --batches 1,50 --duration 5
    python bench/ingest.py --json

Load generator: `wrk` (apt-get install -y wrk) with a Lua script that rotates the request
over the sessions; a Python one (httpx.AsyncClient, one task per writer) saturates one core
near a few thousand requests/s, i.e. it measures itself, not the server: use it only
without wrk. The table says which one ran and flags a load core at >= 90 % CPU.

Columns: acked ev/s = 200-answered requests x batch / duration; req/s; p50/p99 ms = request
latency (the ack of an append, which comes only after its commit); stored = events the server
holds afterwards (checked through GET .../events), which must be >= acked; non-200 = answers
other than 200 (e.g. 429 if rate limiting were on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import LOAD_CORE, Server, http, pin, start_servers

LUA = r"""
local sessions = {%(sessions)s}
local secrets = {%(secrets)s}
local body = %(body)s
local n = #sessions
local i = 0
request = function()
  i = i + 1
  local k = (i %% n) + 1
  return wrk.format("POST", "/v1/sessions/" .. sessions[k] .. "/events",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. secrets[k]}, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "\nRESULT {\"requests\": %%d, \"duration_us\": %%d, \"status\": %%d, \"connect\": %%d, " ..
    "\"read\": %%d, \"write\": %%d, \"timeout\": %%d, \"p50_us\": %%d, \"p99_us\": %%d}\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def body_for(batch: int) -> str:
    ev = {"type": "message.delta", "data": {"id": "m1", "delta": "tok tok tok "}}
    return json.dumps({"events": [ev] * batch}, separators=(",", ":"))


def run_wrk(port: int, sessions: list[tuple[str, str]], writers: int, batch: int, dur: float):
    script = LUA % {
        "sessions": ",".join(lua_str(s) for s, _ in sessions),
        "secrets": ",".join(lua_str(k) for _, k in sessions),
        "body": lua_str(body_for(batch)),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{writers}"]
        cmd += [f"-d{max(1, round(dur))}s", "--timeout", "10s", "-s", f.name]
        cmd += [f"http://127.0.0.1:{port}/"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ps = psutil.Process(p.pid)
        cpu = 0.0
        while p.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = ps.cpu_times()
                cpu = t.user + t.system
            time.sleep(0.1)
        out = p.stdout.read() if p.stdout else ""
    finally:
        os.unlink(f.name)
    line = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"wrk failed: {out[-500:]}")
    r = json.loads(line[-1][7:])
    secs = r["duration_us"] / 1e6
    bad = r["status"] + r["read"] + r["write"] + r["timeout"] + r["connect"]
    return {
        "ok_requests": r["requests"] - r["status"],
        "non200": r["status"],
        "socket_errors": r["read"] + r["write"] + r["timeout"] + r["connect"],
        "secs": secs,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "load_cpu_pct": 100 * cpu / secs,
        "bad": bad,
    }


async def py_load(port: int, sessions: list[tuple[str, str]], writers: int, batch: int, dur: float):
    import httpx

    body = body_for(batch).encode()
    lat: list[int] = []
    counts = {"ok": 0, "non200": 0, "err": 0}
    limits = httpx.Limits(max_connections=writers, max_keepalive_connections=writers)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as c:
        end = time.monotonic() + dur

        async def writer(i: int) -> None:
            sid, secret = sessions[i % len(sessions)]
            headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
            url = f"/v1/sessions/{sid}/events"
            while time.monotonic() < end:
                t = time.monotonic_ns()
                try:
                    r = await c.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    counts["err"] += 1
                    continue
                lat.append(time.monotonic_ns() - t)
                counts["ok" if r.status_code == 200 else "non200"] += 1

        t0 = time.monotonic()
        cpu0 = time.process_time()
        await asyncio.gather(*(writer(i) for i in range(writers)))
        secs = time.monotonic() - t0
        cpu = time.process_time() - cpu0
    lat.sort()
    return {
        "ok_requests": counts["ok"],
        "non200": counts["non200"],
        "socket_errors": counts["err"],
        "secs": secs,
        "p50_ms": lat[len(lat) // 2] / 1e6 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] / 1e6 if lat else None,
        "load_cpu_pct": 100 * cpu / secs,
    }


def run_python(port: int, sessions: list[tuple[str, str]], writers: int, batch: int, dur: float):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()

    def target() -> None:
        pin(LOAD_CORE)
        child.send(asyncio.run(py_load(port, sessions, writers, batch, dur)))

    p = ctx.Process(target=target, daemon=True)
    p.start()
    if not parent.poll(dur + 60):
        p.kill()
        raise TimeoutError("python load generator hung")
    r = parent.recv()
    p.join()
    return r


def setup_sessions(srv: Server, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        sid, secret = srv.new_session()
        body = {
            "events": [
                {"type": "message", "data": {"id": "m1", "role": "assistant", "content": ""}}
            ]
        }
        status, data = http(
            "POST", "127.0.0.1", srv.port, f"/v1/sessions/{sid}/events", body, token=secret
        )
        if status != 200:
            raise RuntimeError(f"first append -> {status} {data[:200]!r}")
        out.append((sid, secret))
    return out


def stored(srv: Server, sessions: list[tuple[str, str]]) -> int:
    total = 0
    for sid, secret in sessions:
        path = f"/v1/sessions/{sid}/events?since=0&limit=1"
        status, data = http("GET", "127.0.0.1", srv.port, path, token=secret)
        if status == 200:
            total += json.loads(data)["last_seq"] - 1  # minus the setup `message` event
    return total


def run_point(srv: Server, client: str, writers: int, batch: int, shared: bool, a: Any):
    sessions = setup_sessions(srv, 1 if shared else writers)
    cpu0 = srv.cpu()
    run = run_wrk if client == "wrk" else run_python
    r = run(srv.port, sessions, writers, batch, a.duration)
    cpu = srv.cpu() - cpu0
    acked = r["ok_requests"] * batch
    return {
        "client": client,
        "writers": writers,
        "sessions": "shared (1)" if shared else f"own ({len(sessions)})",
        "batch": batch,
        "acked_events_per_s": acked / r["secs"],
        "requests_per_s": r["ok_requests"] / r["secs"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "acked": acked,
        "stored": stored(srv, sessions),
        "non200": r["non200"],
        "socket_errors": r["socket_errors"],
        "server_cpu_pct": 100 * cpu / r["secs"],
        "server_cpu_us_per_event": 1e6 * cpu / max(1, acked),
        "load_cpu_pct": r["load_cpu_pct"],
        "server_rss_mb": srv.rss() / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--writers", default="1,100")
    ap.add_argument("--batches", default="1,50")
    ap.add_argument("--sessions", default="own,shared", help="own,shared")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    ap.add_argument("--agentsync-cmd", default=None, help="as in fanout.py")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    client = a.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    pin(LOAD_CORE)
    data_dir = tempfile.mkdtemp(prefix="agentsync-ingest-")
    [srv] = start_servers(["agentsync"], a.agentsync_cmd, data_dir)
    rows = []
    try:
        for w in (int(x) for x in a.writers.split(",")):
            for b in (int(x) for x in a.batches.split(",")):
                modes = [m for m in a.sessions.split(",") if m]
                for mode in modes if w > 1 else modes[:1]:
                    runs = [
                        run_point(srv, client, w, b, mode == "shared", a) for _ in range(a.repeat)
                    ]
                    row = dict(runs[-1])
                    for k in (
                        "acked_events_per_s",
                        "requests_per_s",
                        "p50_ms",
                        "p99_ms",
                        "server_cpu_pct",
                        "server_cpu_us_per_event",
                        "load_cpu_pct",
                    ):
                        vals = [x[k] for x in runs if x[k] is not None]
                        row[k] = statistics.median(vals) if vals else None
                    rows.append(row)
                    print(
                        f"# {w} writers, batch {b}, {row['sessions']}: "
                        f"{row['acked_events_per_s']:,.0f} ev/s",
                        file=sys.stderr,
                    )
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    if a.json:
        print(json.dumps({"args": vars(a), "client": client, "rows": rows}, indent=1))
        return
    print(f"load generator: {client} (pinned to core {LOAD_CORE}); server on core 0")
    print()
    print(
        "| writers | sessions | batch | acked ev/s | req/s | p50 ms | p99 ms | stored/acked "
        "| non-200 | srv CPU % | srv µs/ev | load CPU % | notes |"
    )
    print("|" + "---|" * 13)
    for x in rows:
        notes = []
        if x["load_cpu_pct"] >= 90:
            notes.append("LOAD-BOUND")
        if x["server_cpu_pct"] >= 90:
            notes.append("server-bound")
        if x["stored"] < x["acked"]:
            notes.append("LOST ACKED EVENTS")
        if x["socket_errors"]:
            notes.append(f"{x['socket_errors']} socket errors")
        print(
            f"| {x['writers']} | {x['sessions']} | {x['batch']} "
            f"| {x['acked_events_per_s']:,.0f} | {x['requests_per_s']:,.0f} "
            f"| {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['stored']}/{x['acked']} "
            f"| {x['non200']} | {x['server_cpu_pct']:.0f} | {x['server_cpu_us_per_event']:.1f} "
            f"| {x['load_cpu_pct']:.0f} | {', '.join(notes)} |"
        )


if __name__ == "__main__":
    main()
