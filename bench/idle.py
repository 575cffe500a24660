"""Idle readers: server RSS with N WebSocket readers connected and doing nothing.

The server under test runs pinned to core 0 (``taskset -c 0``); reader processes run pinned to
core 1. Each reader sends ``{"op":"hello"}`` and waits for its ``init`` frame; when all N are
connected the server's RSS is sampled (psutil, process + children, after a short settle). Then
one event is published to every share and every reader must receive it (live, not just open).

    python bench/idle.py                                  # agentsync + peer, 100x100 and 1x10000
    python bench/idle.py --layouts 100x100 --servers agentsync
    python bench/idle.py --readers 2000 --layouts 20x100,1x2000 --json

Layouts are SHARESxREADERS (their product is the reader count; ``--readers N`` rescales the
default layouts). Reported per server and layout: RSS before the readers (shares created),
with all readers connected, and after the live check; per-connection RSS (total / N and
delta / N); connect time; how many readers got the published event (must be N, gap/dup 0/0).

Uses fanout.py's helpers (Server, the epoll Reader/ReaderGroup, pin). File descriptors: the
soft RLIMIT_NOFILE of this process and its children (readers and the server it spawns) is
raised to the hard limit; the server's effective limit is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import resource
import select
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import psutil
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect as ws_sync_connect

from fanout import LOAD_CORE, ReaderGroup, Server, pin, recv, start_servers

HOST = "127.0.0.1"


def raise_nofile(want: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def reader_proc(conn: Any, port: int, paths: list[tuple[str, int]]) -> None:
    """Hold len(paths) groups of idle readers in one epoll; report after the live check."""
    pin(LOAD_CORE)
    raise_nofile(sum(n for _, n in paths) + 100)
    ep = select.epoll()
    by_fd: dict[int, Any] = {}
    groups: list[ReaderGroup] = []
    t0 = time.monotonic()
    try:
        for path, n in paths:
            g = ReaderGroup(HOST, port, path, n, sample_every=1 << 60)
            g.ep.close()
            g.ep, g.by_fd = ep, by_fd  # one epoll set for every group of this process
            g.connect_all()
            groups.append(g)
    except Exception as e:
        done = sum(len(g.conns) for g in groups)
        conn.send(("error", f"reader connect failed after {done} groups' readers: {e!r}"))
        return
    conn.send(("ready", time.monotonic() - t0))
    cmd = conn.recv()  # ("target", {path: seq}, timeout)
    if cmd[0] != "target":
        return
    for g in groups:
        g.set_target(cmd[1][g.path])
    total = sum(g.n for g in groups)
    deadline = time.monotonic() + cmd[2]
    while sum(len(g.done) for g in groups) < total and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.05, 1024):
            r = by_fd.get(fd)
            if r is None:
                continue
            try:
                data = r.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or not r.feed(data):
                r.g.lost(r)
    codes: dict[str, int] = {}
    for g in groups:
        for k, v in g.close_codes.items():
            codes[k] = codes.get(k, 0) + v
    conn.send(
        (
            "result",
            {
                "done": sum(len(g.done) for g in groups),
                "events": sum(g.events for g in groups),
                "gaps": sum(g.gaps for g in groups),
                "dups": sum(g.dups for g in groups),
                "failed": sum(g.failed for g in groups),
                "cutoffs": sum(g.cutoffs for g in groups),
                "close_codes": codes,
            },
        )
    )
    conn.recv()  # "quit": keep the sockets open until the orchestrator is done measuring
    bye = Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True)
    for g in groups:
        for r in g.conns:
            with contextlib.suppress(OSError):
                r.sock.send(bye)
                r.sock.close()


def publish_one(port: int, sid: str, secret: str) -> int:
    """Connect as the writer, publish one `message` event, return its seq."""
    with ws_sync_connect(f"ws://{HOST}:{port}/v1/sessions/{sid}/ws", compression=None) as ws:
        ws.send(json.dumps({"op": "hello", "token": secret}))
        while json.loads(ws.recv(30)).get("op") not in ("init", "events"):
            pass
        ev = {"type": "message", "data": {"id": "m1", "role": "assistant", "content": ""}}
        ws.send(json.dumps({"op": "publish", "ref": 1, "events": [ev]}))
        while True:
            m = json.loads(ws.recv(30))
            if m.get("op") == "ack":
                return int(m["seqs"][0])
            if m.get("op") == "error":
                raise RuntimeError(f"publish: {m}")


def settled_rss(srv: Server, settle: float) -> int:
    time.sleep(settle)
    samples = []
    for _ in range(5):
        samples.append(srv.rss())
        time.sleep(0.1)
    return max(samples)


def run_layout(srv: Server, shares: int, per: int, a: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    sessions = [srv.new_session() for _ in range(shares)]
    rss0 = settled_rss(srv, 0.5)
    n = shares * per
    # spread readers over the processes: a list of (path, count) per process
    nproc = max(1, min(a.reader_procs, n))
    plan: list[list[tuple[str, int]]] = [[] for _ in range(nproc)]
    for i, (sid, _) in enumerate(sessions):
        path = f"/v1/sessions/{sid}/ws"
        if shares >= nproc:  # whole shares per process
            plan[i % nproc].append((path, per))
        else:  # split each share's readers over the processes
            for j in range(nproc):
                cnt = per // nproc + (1 if j < per % nproc else 0)
                if cnt:
                    plan[j].append((path, cnt))
    procs, pipes = [], []
    out: dict[str, Any] = {"server": srv.name, "layout": f"{shares}x{per}", "readers": n}
    try:
        t0 = time.monotonic()
        for paths in plan:
            pp, pc = ctx.Pipe()
            p = ctx.Process(target=reader_proc, args=(pc, srv.port, paths), daemon=True)
            p.start()
            procs.append(p)
            pipes.append(pp)
        for pp in pipes:
            recv(pp, a.connect_timeout, "reader")
        out["connect_s"] = time.monotonic() - t0
        rss1 = settled_rss(srv, a.settle)
        out["server_fds"] = sum(q.num_fds() for q in srv.procs())
        seqs = {}
        t1 = time.monotonic()
        for sid, secret in sessions:
            seqs[f"/v1/sessions/{sid}/ws"] = publish_one(srv.port, sid, secret)
        for pp in pipes:
            pp.send(("target", seqs, a.live_timeout))
        res = [recv(pp, a.live_timeout + 30, "reader")[1] for pp in pipes]
        out["live_s"] = time.monotonic() - t1
        rss2 = settled_rss(srv, 0.3)
        for pp in pipes:
            pp.send(("quit",))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    codes: dict[str, int] = {}
    for x in res:
        for c, v in x["close_codes"].items():
            codes[c] = codes.get(c, 0) + v
    out.update(
        rss_before_mb=rss0 / 2**20,
        rss_mb=rss1 / 2**20,
        rss_after_live_mb=rss2 / 2**20,
        kib_per_conn=rss1 / n / 1024,
        delta_kib_per_conn=(rss1 - rss0) / n / 1024,
        live=sum(x["done"] for x in res),
        events=sum(x["events"] for x in res),
        gaps=sum(x["gaps"] for x in res),
        dups=sum(x["dups"] for x in res),
        failed=sum(x["failed"] for x in res),
        close_codes=codes,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--servers", default="agentsync,peer", help="comma list: agentsync,peer")
    ap.add_argument("--readers", type=int, default=10_000, help="N (rescales default layouts)")
    ap.add_argument("--layouts", default=None, help="comma list of SHARESxREADERS")
    ap.add_argument("--reader-procs", type=int, default=4, help="reader processes (core 1)")
    ap.add_argument("--settle", type=float, default=1.5, help="s to wait before sampling RSS")
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--live-timeout", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.layouts is None:
        n = a.readers
        a.layouts = f"{max(1, n // 100)}x{min(n, 100)},1x{n}"
    layouts = [tuple(int(v) for v in x.split("x")) for x in a.layouts.split(",")]
    pin(LOAD_CORE)
    shell_soft, shell_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = raise_nofile(max(s * r for s, r in layouts) + 1000)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"nofile_shell": [shell_soft, shell_hard], "nofile_now": [soft, hard]}
    for name in [s.strip() for s in a.servers.split(",") if s.strip()]:
        for shares, per in layouts:  # a fresh server per layout: freed memory is not reused
            data_dir = tempfile.mkdtemp(prefix="agentsync-idle-")
            (srv,) = start_servers([name], None, data_dir)
            try:
                lim = psutil.Process(srv.proc.pid).rlimit(psutil.RLIMIT_NOFILE)
                info[f"nofile_{name}"] = list(lim)
                info[f"rss_empty_{name}_mb"] = srv.rss() / 2**20
                row = run_layout(srv, shares, per, a)
            except Exception as e:
                print(f"# {name} {shares}x{per}: {e!r}", file=sys.stderr)
                continue
            finally:
                srv.stop()
                shutil.rmtree(data_dir, ignore_errors=True)
            rows.append(row)
            if not a.json:
                print(
                    f"# {name} {row['layout']}: {row['rss_mb']:.0f} MB, "
                    f"{row['kib_per_conn']:.1f} KiB/conn, live {row['live']}/{row['readers']}",
                    file=sys.stderr,
                )
    if a.json:
        print(json.dumps({"args": vars(a), "info": info, "rows": rows}, indent=1))
        return
    sys.stderr.flush()
    print(
        f"RLIMIT_NOFILE: shell {shell_soft}/{shell_hard}, raised to {soft}/{hard}; "
        + ", ".join(
            f"{k[7:]} server {v[0]}/{v[1]}"
            for k, v in info.items()
            if k.startswith("nofile_") and k not in ("nofile_shell", "nofile_now")
        )
    )
    print()
    print(
        "| server | layout | N | connect s | RSS before MB | RSS MB | KiB/conn | Δ KiB/conn "
        "| RSS after live MB | live | gap/dup | failed | target < 1 GiB |"
    )
    print("|" + "---|" * 13)
    for x in rows:
        print(
            f"| {x['server']} | {x['layout']} | {x['readers']} | {x['connect_s']:.1f} "
            f"| {x['rss_before_mb']:.0f} | {x['rss_mb']:.0f} | {x['kib_per_conn']:.1f} "
            f"| {x['delta_kib_per_conn']:.1f} | {x['rss_after_live_mb']:.0f} "
            f"| {x['live']}/{x['readers']} | {x['gaps']}/{x['dups']} | {x['failed']} "
            f"| {'yes' if x['rss_mb'] < 1024 else 'NO'} |"
        )
    ratios = []
    by = {(x["server"], x["layout"]): x for x in rows}
    for (s, lay), x in by.items():
        p = by.get(("peer", lay))
        if s == "agentsync" and p:
            ratios.append(
                f"| {lay} | {x['rss_mb'] / p['rss_mb']:.2f}x "
                f"| {x['delta_kib_per_conn'] / max(1e-9, p['delta_kib_per_conn']):.2f}x |"
            )
    if ratios:
        print()
        print("| layout | RSS agentsync/peer | Δ KiB/conn agentsync/peer |")
        print("|---|---|---|")
        print("\n".join(ratios))


if __name__ == "__main__":
    main()
