"""HTTP ingest benchmark: acknowledged events/s of `POST /v1/sessions/{id}/events`.

agentsync runs pinned to core 0 (``taskset -c 0``, SQLite in a fresh temp data dir, rate
limits off); the load runs pinned to core 1. Points: 1 and 100 concurrent writers, batches of
1 and 50 events, writers each owning a session ("own") or all sharing one ("shared"). Every
writer is a keep-alive HTTP/1.1 connection in a closed loop (next request when the previous
one is answered), so the 1-writer rows are also the append ack latency of a single writer.

    python bench/ingest.py                      # wrk if installed, else the Python client
    python bench/ingest.py --client python --writers 1,100 --batches 1,50 --duration 5
    python bench/ingest.py --servers agentsync,cluster --nodes 3   # + 3 nodes, PG + Redis
    python bench/ingest.py --json

Setups (--servers): `agentsync` is one node over SQLite; `cluster` is --nodes nodes (all on
core 0) over PostgreSQL (--store, a fresh schema per run, dropped afterwards) and a Redis bus
(--bus), see fanout.Cluster. In a cluster the writers are spread over the nodes (node k gets
writers/N of the connections, one wrk process per node, results summed): "own" sessions are
each written through one node only, the "shared" ones (--shared-sessions) through every node.

Load generator: `wrk` (apt-get install -y wrk) with a Lua script that rotates the request
over the sessions; a Python one (httpx.AsyncClient, one task per writer) saturates one core
near a few thousand requests/s, i.e. it measures itself, not the server: use it only
without wrk. The table says which one ran and flags a load core at >= 90 % CPU.

Columns: acked ev/s = 200-answered requests x batch / duration; req/s; p50/p99 ms = request
latency (the ack of an append, which comes only after its commit; over several wrk processes
the percentile of their merged distributions); stored = events the server holds afterwards
(checked through GET .../events), which must be >= acked; non-200 = answers other than 200
(e.g. 429 if rate limiting were on, 503 when a write could not be stored); conflicts = appends
that found their seqs taken by another node (agentsync_append_conflicts, from /metrics).
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
from fanout import (
    LOAD_CORE,
    Server,
    add_cluster_args,
    http,
    node_stats,
    pin,
    scrape_all,
    services_cpu,
    start_servers,
    stop_all,
)

# wrk percentiles dumped per process, so that several processes' latencies can be merged
QUANTILES = (
    [float(p) for p in range(1, 99)]
    + [99 + i / 10 for i in range(10)]
    + [99.9 + i / 100 for i in range(1, 10)]
)

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
"""

# Appended to every wrk script: prints one RESULT line of JSON that run_wrk_scripts parses.
WRK_REPORT = r"""
local quantiles = {QUANTILES}
done = function(summary, latency, requests)
  local e = summary.errors
  local q = {}
  for _, p in ipairs(quantiles) do
    q[#q + 1] = string.format("[%.2f,%d]", p, latency:percentile(p))
  end
  q[#q + 1] = string.format("[100,%d]", latency.max)
  io.write(string.format(
    "\nRESULT {\"requests\": %d, \"duration_us\": %d, \"status\": %d, \"connect\": %d, " ..
    "\"read\": %d, \"write\": %d, \"timeout\": %d, \"q\": [%s]}\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    table.concat(q, ",")))
end
""".replace("QUANTILES", ",".join(f"{q:g}" for q in QUANTILES))

# (port, sessions, connections): one node's share of the load
Target = tuple[int, list[tuple[str, str]], int]


def lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def body_for(batch: int) -> str:
    ev = {"type": "message.delta", "data": {"id": "m1", "delta": "tok tok tok "}}
    return json.dumps({"events": [ev] * batch}, separators=(",", ":"))


def merged_percentile(parts: list[tuple[int, list[list[float]]]], p: float) -> float | None:
    """The p-th percentile of a mixture: each part is (requests, [[pct, value], ...]) of one
    wrk process, weighted by its requests. Exact for one part (its own percentile)."""
    parts = [(w, q) for w, q in parts if w > 0]
    total = sum(w for w, _ in parts)
    if not total:
        return None
    for v in sorted({v for _, q in parts for _, v in q}):
        f = sum(w * max((pp for pp, vv in q if vv <= v), default=0.0) for w, q in parts)
        if f / total >= p - 1e-9:
            return v
    return max(v for _, q in parts for _, v in q)


def run_wrk(targets: list[Target], batch: int, dur: float) -> dict[str, Any]:
    """One wrk process per target, all at once (see run_wrk_scripts)."""
    jobs = []
    for port, sessions, conns in targets:
        script = LUA % {
            "sessions": ",".join(lua_str(s) for s, _ in sessions),
            "secrets": ",".join(lua_str(k) for _, k in sessions),
            "body": lua_str(body_for(batch)),
        }
        jobs.append((port, script, conns))
    return run_wrk_scripts(jobs, dur)


def run_wrk_scripts(jobs: list[tuple[int, str, int]], dur: float) -> dict[str, Any]:
    """One wrk process per (port, Lua script, connections), `-t1 -cN`, pinned to the load
    core, all at once; results summed, latencies merged. ``non200`` counts answers >= 400."""
    procs = []
    try:
        for port, script, conns in jobs:
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
                f.write(script + WRK_REPORT)
            cmd = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{conns}"]
            cmd += [f"-d{max(1, round(dur))}s", "--timeout", "10s", "-s", f.name]
            cmd += [f"http://127.0.0.1:{port}/"]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append((p, psutil.Process(p.pid), f.name))
        cpu = [0.0] * len(procs)
        while any(p.poll() is None for p, _, _ in procs):
            for i, (p, ps, _) in enumerate(procs):
                if p.poll() is None:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        t = ps.cpu_times()
                        cpu[i] = t.user + t.system
            time.sleep(0.1)
        outs = [p.stdout.read() if p.stdout else "" for p, _, _ in procs]
    finally:
        for p, _, name in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            os.unlink(name)
    results = []
    for out in outs:
        line = [x for x in out.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"wrk failed: {out[-500:]}")
        results.append(json.loads(line[-1][7:]))
    secs = max(r["duration_us"] for r in results) / 1e6
    parts = [(r["requests"], r["q"]) for r in results]
    p50, p99 = merged_percentile(parts, 50), merged_percentile(parts, 99)
    errors = sum(r["read"] + r["write"] + r["timeout"] + r["connect"] for r in results)
    status = sum(r["status"] for r in results)
    return {
        "ok_requests": sum(r["requests"] for r in results) - status,
        "non200": status,
        "socket_errors": errors,
        "secs": secs,
        "p50_ms": p50 / 1000 if p50 is not None else None,
        "p99_ms": p99 / 1000 if p99 is not None else None,
        "load_cpu_pct": 100 * sum(cpu) / secs,
    }


async def py_load(targets: list[Target], batch: int, dur: float) -> dict[str, Any]:
    import httpx

    body = body_for(batch).encode()
    lat: list[int] = []
    counts = {"ok": 0, "non200": 0, "err": 0}
    end = time.monotonic() + dur

    async def writer(c: httpx.AsyncClient, sid: str, secret: str) -> None:
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

    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for port, sessions, conns in targets:
            limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
            c = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits)
            await stack.enter_async_context(c)
            tasks += [writer(c, *sessions[i % len(sessions)]) for i in range(conns)]
        t0 = time.monotonic()
        cpu0 = time.process_time()
        await asyncio.gather(*tasks)
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


def run_python(targets: list[Target], batch: int, dur: float) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()

    def target() -> None:
        pin(LOAD_CORE)
        child.send(asyncio.run(py_load(targets, batch, dur)))

    p = ctx.Process(target=target, daemon=True)
    p.start()
    if not parent.poll(dur + 60):
        p.kill()
        raise TimeoutError("python load generator hung")
    r = parent.recv()
    p.join()
    return r


def setup_sessions(srv: Server, n: int) -> list[tuple[str, str]]:
    """``n`` shares created and first written through ``srv`` (so it has them loaded)."""
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


def plan(srv: Any, writers: int, shared: bool, a: Any) -> tuple[list[Target], list[Any]]:
    """Each node's connections and sessions (every node the same shared ones, or sessions
    of its own created through it); and every session once."""
    nodes = srv.nodes
    n = len(nodes)
    conns = [writers // n + (1 if k < writers % n else 0) for k in range(n)]
    if shared:
        common = setup_sessions(nodes[0], a.shared_sessions)
        return [(x.port, common, c) for x, c in zip(nodes, conns, strict=True) if c], common
    targets = [(x.port, setup_sessions(x, c), c) for x, c in zip(nodes, conns, strict=True) if c]
    return targets, [s for _, ss, _ in targets for s in ss]


def run_point(srv: Any, client: str, writers: int, batch: int, shared: bool, a: Any):
    targets, sessions = plan(srv, writers, shared, a)
    m0 = scrape_all(srv)
    cpu0, scpu0 = srv.cpu(), services_cpu()
    run = run_wrk if client == "wrk" else run_python
    r = run(targets, batch, a.duration)
    cpu, scpu = srv.cpu() - cpu0, services_cpu() - scpu0
    st = node_stats(m0, scrape_all(srv))
    acked = r["ok_requests"] * batch
    kind = "shared" if shared else "own"
    where = f", via {len(targets)} node{'s' * (len(targets) > 1)}" if len(srv.nodes) > 1 else ""
    return {
        "server": srv.name,
        "client": client,
        "writers": writers,
        "sessions": f"{kind} ({len(sessions)}{where})",
        "batch": batch,
        "acked_events_per_s": acked / r["secs"],
        "requests_per_s": r["ok_requests"] / r["secs"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "acked": acked,
        "stored": stored(srv, sessions),
        "non200": r["non200"],
        "socket_errors": r["socket_errors"],
        "conflicts": st["conflicts"],
        "rejected": st["rejected"],
        "bus_out": sum(st["bus_out"]),
        "bus_in": sum(st["bus_in"]),
        "server_cpu_pct": 100 * cpu / r["secs"],
        "server_cpu_us_per_event": 1e6 * cpu / max(1, acked),
        "services_cpu_pct": 100 * scpu / r["secs"],
        "load_cpu_pct": r["load_cpu_pct"],
        "server_rss_mb": srv.rss() / 2**20,
    }


MEDIANS = (
    "acked_events_per_s",
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_pct",
    "server_cpu_us_per_event",
    "services_cpu_pct",
    "load_cpu_pct",
)


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setup | writers | sessions | batch | acked ev/s | req/s | p50 ms | p99 ms "
        "| stored/acked | non-200 | conflicts | srv CPU % | srv µs/ev | pg+redis CPU % "
        "| load CPU % | notes |",
        "|" + "---|" * 16,
    ]
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
        if x["rejected"]:
            notes.append("rejected " + ", ".join(f"{k}: {v}" for k, v in x["rejected"].items()))
        lines.append(
            f"| {x['server']} | {x['writers']} | {x['sessions']} | {x['batch']} "
            f"| {x['acked_events_per_s']:,.0f} | {x['requests_per_s']:,.0f} "
            f"| {fmt_ms(x['p50_ms'])} | {fmt_ms(x['p99_ms'])} | {x['stored']}/{x['acked']} "
            f"| {x['non200']} | {x['conflicts']} | {x['server_cpu_pct']:.0f} "
            f"| {x['server_cpu_us_per_event']:.1f} | {x['services_cpu_pct']:.0f} "
            f"| {x['load_cpu_pct']:.0f} | {', '.join(notes)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--servers", default="agentsync", help="comma list: agentsync,cluster")
    ap.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--writers", default="1,100")
    ap.add_argument("--batches", default="1,50")
    ap.add_argument("--sessions", default="own,shared", help="own,shared")
    ap.add_argument("--shared-sessions", type=int, default=1, help="sessions of `shared`")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    ap.add_argument("--agentsync-cmd", default=None, help="as in fanout.py")
    add_cluster_args(ap)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    client = a.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    pin(LOAD_CORE)
    data_dir = tempfile.mkdtemp(prefix="agentsync-ingest-")
    names = [s.strip() for s in a.servers.split(",") if s.strip()]
    servers = start_servers(
        names, a.agentsync_cmd, data_dir, nodes=a.nodes, store=a.store, bus=a.bus
    )
    rows = []
    try:
        for w in (int(x) for x in a.writers.split(",")):
            for b in (int(x) for x in a.batches.split(",")):
                modes = [m for m in a.sessions.split(",") if m]
                for mode in modes if w > 1 else modes[:1]:
                    for srv in servers:
                        runs = [
                            run_point(srv, client, w, b, mode == "shared", a)
                            for _ in range(a.repeat)
                        ]
                        row = dict(runs[-1])
                        for k in MEDIANS:
                            vals = [x[k] for x in runs if x[k] is not None]
                            row[k] = statistics.median(vals) if vals else None
                        rows.append(row)
                        print(
                            f"# {srv.name}: {w} writers, batch {b}, {row['sessions']}: "
                            f"{row['acked_events_per_s']:,.0f} ev/s",
                            file=sys.stderr,
                        )
    finally:
        problems = stop_all(servers)
        shutil.rmtree(data_dir, ignore_errors=True)
    if a.json:
        out = {"args": vars(a), "client": client, "rows": rows, "log_problems": problems}
        print(json.dumps(out, indent=1))
        return
    print(f"load generator: {client} (pinned to core {LOAD_CORE}); servers on core 0")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
