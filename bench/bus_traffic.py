"""Bus traffic per node: a node receives the bus messages of the sessions it serves, only.

Two agentsync nodes A and B (fanout.Cluster: PostgreSQL with a fresh schema, a Redis bus, both
nodes pinned to core 0; load on core 1). Sessions:

- S1 (--sessions, default 3): created and written through A, read by --readers WebSocket
  readers each on A;
- S2 (as many): created and written through B, read on B only;
- S3 (one): created and written through A, read by --readers readers on A *and* on B.

Readers are fanout.py's epoll readers (idle.py's `reader_proc`: all of a node's readers in
one process), connected before the first phase. Three phases, each a wrk run of --writers
connections posting one event per request for --duration s (ingest.py's `run_wrk`):

1. S1 through A: A publishes one bus message per append; B, which has no S1 session loaded
   and so no S1 channel subscribed, must receive ~0;
2. S2 through B: the opposite;
3. S3 through A: B has S3 loaded (its readers) and receives every message A publishes.

Per phase, node side (deltas of each node's /metrics): agentsync_bus_messages out/in and the
events it stored. Redis side: bytes each node's Redis connections received (the kernel's
`bytes_received` of its sockets to Redis, `ss -tin`, matched to the node by psutil), the
number of channels each node's subscriber connection holds (`CLIENT LIST` `sub=`) and Redis's
`total_net_output_bytes` (INFO stats; the machine's Redis, so other tenants count too).
Afterwards every reader must have every seq of its sessions once (gap/dup 0/0).

    python bench/bus_traffic.py
    python bench/bus_traffic.py --sessions 5 --readers 10 --writers 16 --duration 5 --json

A node receives its own publishes back too (it is subscribed to the channels of the sessions
it serves, and Redis pub/sub has no "not to the publisher"): A's `in` counts S1's messages in
phase 1, dropped on arrival because their seqs are already held.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlparse

import psutil
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import (
    LOAD_CORE,
    Cluster,
    add_cluster_args,
    http,
    node_stats,
    pin,
    recv,
    scrape_all,
    stop_all,
)
from idle import reader_proc
from ingest import run_wrk, setup_sessions

SS_RE = re.compile(r"127\.0\.0\.1:(\d+)\s+\S+:(\d+)\s*\n[^\n]*?bytes_received:(\d+)")


def redis_port(url: str) -> int:
    return urlparse(url).port or 6379


def node_redis_ports(cluster: Cluster, rport: int) -> list[set[int]]:
    """Per node: the local ports of its TCP connections to Redis."""
    out = []
    for x in cluster.nodes:
        ports: set[int] = set()
        for p in x.procs():
            try:
                conns = p.net_connections(kind="tcp")
            except psutil.Error:
                continue
            ports |= {c.laddr.port for c in conns if c.raddr and c.raddr.port == rport}
        out.append(ports)
    return out


def redis_side(r: redis.Redis, cluster: Cluster, rport: int) -> dict[str, Any]:
    """Bytes each node received from Redis so far, its subscriptions, Redis's output bytes."""
    mine = node_redis_ports(cluster, rport)
    ss = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( dport = :{rport} )"],
        capture_output=True,
        text=True,
    ).stdout
    received = {int(m[1]): int(m[3]) for m in SS_RE.finditer(ss) if int(m[2]) == rport}
    subs = {}
    for c in r.client_list():
        port = int(str(c.get("addr", ":0")).rsplit(":", 1)[-1])
        subs[port] = int(c.get("sub", 0))
    stats = r.info("stats")
    return {
        "bytes_received": [sum(received.get(p, 0) for p in ports) for ports in mine],
        "subscriptions": [sum(subs.get(p, 0) for p in ports) for ports in mine],
        "redis_out_bytes": int(stats.get("total_net_output_bytes", 0)),
    }


def last_seq(node: Any, sid: str, secret: str) -> int:
    path = f"/v1/sessions/{sid}/events?since=0&limit=1"
    status, data = http("GET", "127.0.0.1", node.port, path, token=secret)
    if status != 200:
        raise RuntimeError(f"GET {path} -> {status}")
    return int(json.loads(data)["last_seq"])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=3, help="sessions in S1 and in S2")
    ap.add_argument("--readers", type=int, default=5, help="readers per session and node")
    ap.add_argument("--writers", type=int, default=8, help="wrk connections per phase")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of writes per phase")
    ap.add_argument("--agentsync-cmd", default=None, help="as in fanout.py")
    add_cluster_args(ap)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    pin(LOAD_CORE)
    rport = redis_port(a.bus)
    rc = redis.Redis.from_url(a.bus)
    data_dir = tempfile.mkdtemp(prefix="agentsync-bus-")
    cluster = Cluster(2, a.agentsync_cmd, data_dir, a.store, a.bus)
    node_a, node_b = cluster.nodes
    ctx = mp.get_context("fork")
    procs: list[Any] = []
    pipes: list[Any] = []
    phases: list[dict[str, Any]] = []
    try:
        s1 = setup_sessions(node_a, a.sessions)
        s2 = setup_sessions(node_b, a.sessions)
        s3 = setup_sessions(node_a, 1)
        owner = {sid: node_a for sid, _ in s1 + s3} | {sid: node_b for sid, _ in s2}
        secrets_ = dict(s1 + s2 + s3)

        def paths(sessions: list[tuple[str, str]]) -> list[tuple[str, int]]:
            return [(f"/v1/sessions/{sid}/ws", a.readers) for sid, _ in sessions]

        plan = [(node_a, paths(s1 + s3)), (node_b, paths(s2 + s3))]
        for node, ps in plan:
            pp, pc = ctx.Pipe()
            p = ctx.Process(target=reader_proc, args=(pc, node.port, ps), daemon=True)
            p.start()
            procs.append(p)
            pipes.append(pp)
        for pp in pipes:
            recv(pp, 60, "reader")
        time.sleep(0.5)
        before = scrape_all(cluster), redis_side(rc, cluster, rport)
        steps = [
            ("S1 written and read on A", node_a, s1),
            ("S2 written and read on B", node_b, s2),
            ("S3 written on A, read on A and B", node_a, s3),
        ]
        for name, node, sessions in steps:
            w = run_wrk([(node.port, sessions, a.writers)], 1, a.duration)
            time.sleep(0.5)  # let the last messages arrive
            after = scrape_all(cluster), redis_side(rc, cluster, rport)
            st = node_stats(before[0], after[0])
            phases.append(
                {
                    "phase": name,
                    "acked": w["ok_requests"],
                    "non200": w["non200"],
                    "bus_out": st["bus_out"],
                    "bus_in": st["bus_in"],
                    "events_in": st["events_in"],
                    "catch_ups": st["catch_ups"],
                    "bytes_from_redis": [
                        y - x
                        for x, y in zip(
                            before[1]["bytes_received"], after[1]["bytes_received"], strict=True
                        )
                    ],
                    "subscriptions": after[1]["subscriptions"],
                    "redis_out_bytes": after[1]["redis_out_bytes"] - before[1]["redis_out_bytes"],
                }
            )
            print(f"# {name}: {phases[-1]}", file=sys.stderr)
            before = after
        targets = {}
        for sid, _ in s1 + s2 + s3:
            targets[f"/v1/sessions/{sid}/ws"] = last_seq(owner[sid], sid, secrets_[sid])
        for pp in pipes:
            pp.send(("target", targets, 30))
        results = [recv(pp, 60, "reader")[1] for pp in pipes]
        for pp in pipes:
            pp.send(("quit",))
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        problems = stop_all([cluster])
        rc.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    readers = [
        {"node": node.name, "readers": sum(n for _, n in ps), **res}
        for (node, ps), res in zip(plan, results, strict=True)
    ]
    if a.json:
        out = {"args": vars(a), "phases": phases, "readers": readers, "log_problems": problems}
        print(json.dumps(out, indent=1))
        return
    print(
        f"nodes A = {node_a.name}, B = {node_b.name}; {a.sessions} sessions in S1 and in S2, "
        f"1 in S3; {a.readers} readers per session and node; wrk -c{a.writers}, 1 event per "
        f"request, {a.duration:g} s per phase"
    )
    print()
    print(
        "| phase | appends acked | A bus out | A bus in | B bus out | B bus in "
        "| A bytes from Redis | B bytes from Redis | A/B channels subscribed "
        "| Redis output bytes (all clients) |"
    )
    print("|" + "---|" * 10)
    for x in phases:
        (ao, bo), (ai, bi) = x["bus_out"], x["bus_in"]
        ra, rb = x["bytes_from_redis"]
        sa, sb = x["subscriptions"]
        print(
            f"| {x['phase']} | {x['acked']:,} | {ao:,} | {ai:,} | {bo:,} | {bi:,} "
            f"| {ra:,} | {rb:,} | {sa} / {sb} | {x['redis_out_bytes']:,} |"
        )
    print()
    print("| readers on | readers | complete | events | gap/dup | failed |")
    print("|---|---|---|---|---|---|")
    for x in readers:
        print(
            f"| {x['node']} | {x['readers']} | {x['done']} | {x['events']:,} "
            f"| {x['gaps']}/{x['dups']} | {x['failed']} |"
        )


if __name__ == "__main__":
    main()
