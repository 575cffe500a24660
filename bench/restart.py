"""Restart: how fast R readers reconnect and resume after the server restarts, with no gap.

agentsync runs pinned to core 0 (``taskset -c 0``); a writer process and reader processes run
pinned to core 1. One share; R readers connect (``hello``, ``init`` at seq 0); the writer
POSTs ``/v1/sessions/{id}/events`` (Bearer secret, one event per request, its own event ids)
at a steady rate. After --before s the server is stopped (SIGTERM: readers get close 4000,
the server must exit 0; or SIGKILL: readers see an abnormal close, 1006) and started again on
the same port and data dir. Readers are resumable clients: on close they wait a random
0..--jitter-ms, reconnect and send ``hello`` with ``since`` = their last seq and ``epoch``;
a refused connect is retried every --retry-ms (+- 50 %). The writer retries a failed POST with
the same event id (idempotent) and keeps publishing after the restart; after --after s it
stops and every reader must end with exactly seqs 1..N (no gap, no duplicate, no snapshot
reset), N = the store's last seq; the store must hold every acknowledged event id once.

    python bench/restart.py                        # SIGTERM and SIGKILL, R=1000, 200 ev/s
    python bench/restart.py --signals term --repeat 3
    python bench/restart.py --readers 200 --json

Reported: ready→resumed per reader (p50 / p100; ready = the new server's first GET /readyz 200,
polled every 5 ms), stop→all resumed (total), server exit/startup times, writer outage, close
codes, reconnect attempts, gap/dup/reset, store check. Uses fanout.py's Server, Reader and
ReaderGroup (frame parsing, seq checks); the reconnect loop here is non-blocking (epoll).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import heapq
import json
import multiprocessing as mp
import os
import random
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
from http.client import HTTPConnection
from typing import Any, cast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orjson
from websockets.frames import Frame, Opcode

from fanout import (
    LOAD_CORE,
    Reader,
    ReaderGroup,
    Server,
    http,
    pin,
    recv,
    start_servers,
    text_frame,
)

HOST = "127.0.0.1"
ENV = {"AGENTSYNC_RATE_LIMIT": "0"}


# --------------------------------------------------------------------------------------
# Resumable readers: fanout's Reader (frame parser, seq checks) with a non-blocking
# reconnect: connect -> upgrade -> hello(since, epoch) -> greeting, all in one epoll loop.
# --------------------------------------------------------------------------------------


class RReader(Reader):
    def __init__(self, group: ReaderGroup, idx: int) -> None:
        super().__init__(group, idx)
        self.state = "open"  # open | wait | connecting | upgrading
        self.closes: list[tuple[float, int | None]] = []  # (time, close code; None = no frame)
        self.greetings: list[tuple[float, str]] = []  # (time, "init"|"resumed")
        self.attempts = 0
        self.hs = b""

    def on_text(self, p: bytes) -> None:
        if not self.awaiting_first:
            Reader.on_text(self, p)
            return
        # The greeting is parsed in full: a resumed greeting's top-level "seq" (the log's
        # last seq) must not be counted as an event, which Reader.on_text's regex would do.
        m = orjson.loads(p)
        op = m.get("op")
        g = self.g
        if op == "init":
            if self.expected:
                g.resets += 1
            self.expected = m["seq"] + 1
            self.epoch = m.get("epoch")
        elif op == "events" and m.get("resumed"):
            exp = self.expected
            for ev in m["events"]:
                s = ev["seq"]
                if s == exp:
                    exp += 1
                    g.events += 1
                elif s < exp:
                    g.dups += 1
                else:
                    g.gaps += s - exp
                    exp = s + 1
            self.expected = exp
        else:
            return  # presence etc. before the greeting
        self.awaiting_first = False
        self.greetings.append((time.monotonic(), op if op == "init" else "resumed"))
        if self.expected > g.target:
            g.conn_done(self)


class RGroup(ReaderGroup):
    def __init__(self, *args: Any, jitter: float, retry: float) -> None:
        super().__init__(*args)
        self.jitter, self.retry = jitter, retry
        self.due: list[tuple[float, int]] = []  # (when, idx) reconnects

    def connect_all(self) -> None:
        self.conns = [RReader(self, i) for i in range(self.n)]
        for r in self.conns:
            r.connect()
        for r in self.conns:
            r.wait_first()
            self.register(r)

    def drop(self, r: RReader) -> None:
        fd = r.sock.fileno()
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.ep.unregister(fd)
        self.by_fd.pop(fd, None)
        r.sock.close()

    def lost(self, r: RReader) -> None:  # type: ignore[override]
        now = time.monotonic()
        self.drop(r)
        r.closes.append((now, r.close_code))
        code = r.close_code
        key = "1006" if code is None else str(code)  # no close frame: an abnormal closure
        self.close_codes[key] = self.close_codes.get(key, 0) + 1
        if code is not None and not (4000 <= code < 4500 or code in (1001, 1011, 1012, 1013)):
            self.failed += 1
            return
        r.state = "wait"
        heapq.heappush(self.due, (now + random.uniform(0, self.jitter), r.idx))

    def retry_later(self, r: RReader) -> None:
        self.drop(r)
        r.state = "wait"
        heapq.heappush(self.due, (time.monotonic() + self.retry * random.uniform(0.5, 1.5), r.idx))

    def start_connect(self, r: RReader) -> None:
        r.attempts += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        r.sock, r.buf, r.frag, r.close_code, r.hs = s, b"", None, None, b""
        err = s.connect_ex((self.host, self.port))
        fd = s.fileno()
        self.by_fd[fd] = r
        if err not in (0, errno.EINPROGRESS):
            self.retry_later(r)
            return
        r.state = "connecting"
        self.ep.register(fd, select.EPOLLOUT)

    def on_writable(self, r: RReader) -> None:
        if r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.retry_later(r)  # refused: the server is not listening yet
            return
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        req = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        try:
            r.sock.send(req)
        except OSError:
            self.retry_later(r)
            return
        r.state = "upgrading"
        self.ep.modify(r.sock.fileno(), select.EPOLLIN)

    def on_upgrade_data(self, r: RReader, data: bytes) -> None:
        r.hs += data
        head, sep, rest = r.hs.partition(b"\r\n\r\n")
        if not sep:
            return
        if not head.startswith(b"HTTP/1.1 101"):
            self.retry_later(r)
            return
        msg: dict[str, Any] = {"op": "hello"}
        if r.expected:
            msg["since"] = r.expected - 1
            msg["epoch"] = r.epoch
        try:
            r.sock.send(text_frame(orjson.dumps(msg)))
        except OSError:
            self.retry_later(r)
            return
        r.state, r.awaiting_first = "open", True
        self.reconnects += 1
        if rest and not r.feed(rest):
            self.lost(r)

    def run(self, cmd_conn: Any) -> None:
        cmd_fd = cmd_conn.fileno()
        self.ep.register(cmd_fd, select.EPOLLIN)
        deadline = None
        conns = cast("list[RReader]", self.conns)
        by_fd, due = self.by_fd, self.due
        while True:
            timeout = 0.05
            if due:
                timeout = max(0.0, min(timeout, due[0][0] - time.monotonic()))
            for fd, _ in self.ep.poll(timeout, 1024):
                r = cast("RReader | None", by_fd.get(fd))
                if r is None:
                    if fd == cmd_fd:
                        cmd = cmd_conn.recv()
                        if cmd[0] == "target":
                            self.set_target(cmd[1])
                            deadline = time.monotonic() + cmd[2]
                        elif cmd[0] == "quit":
                            return
                    continue
                if r.state == "connecting":
                    self.on_writable(r)
                    continue
                try:
                    data = r.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if r.state == "upgrading":
                    if data:
                        self.on_upgrade_data(r, data)
                    else:
                        self.retry_later(r)
                elif not data or not r.feed(data):
                    self.lost(r)
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, idx = heapq.heappop(due)
                self.start_connect(conns[idx])
            if deadline is not None and (len(self.done) == self.n or now > deadline):
                return


def reader_main(conn: Any, port: int, path: str, n: int, jitter: float, retry: float) -> None:
    pin(LOAD_CORE)
    g = RGroup(HOST, port, path, n, 1 << 60, jitter=jitter, retry=retry)
    try:
        g.connect_all()
    except Exception as e:
        conn.send(("error", f"reader connect failed: {e!r}"))
        return
    conn.send(("ready", [r.expected - 1 for r in g.conns]))
    g.run(conn)
    rs = cast("list[RReader]", g.conns)
    conn.send(
        (
            "result",
            {
                "events": g.events,
                "gaps": g.gaps,
                "dups": g.dups,
                "resets": g.resets,
                "failed": g.failed,
                "reconnects": g.reconnects,
                "close_codes": g.close_codes,
                "done": len(g.done),
                "final": [r.expected - 1 for r in g.conns],
                "closes": [r.closes for r in rs],
                "greetings": [r.greetings[1:] for r in rs],  # [0] is the first init
                "attempts": [r.attempts for r in rs],
            },
        )
    )
    bye = Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True)
    for r in g.conns:
        with contextlib.suppress(OSError, AttributeError):
            r.sock.send(bye)
            r.sock.close()


# --------------------------------------------------------------------------------------
# Writer: keep-alive HTTP POSTs at a steady rate; a failed POST is retried with the same id.
# --------------------------------------------------------------------------------------


def writer_main(conn: Any, port: int, sid: str, secret: str, rate: float) -> None:
    pin(LOAD_CORE)
    hdr = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    path = f"/v1/sessions/{sid}/events"
    c: HTTPConnection | None = None
    acks: list[tuple[str, int]] = []
    fails: list[tuple[float, str]] = []
    k = 0
    conn.send(("ready", None))
    t_next = time.monotonic()
    while True:
        if conn.poll() and conn.recv()[0] == "stop":
            break
        now = time.monotonic()
        if now < t_next:
            time.sleep(min(0.002, t_next - now))
            continue
        eid = f"w{k}"
        if k == 0:
            ev = {"id": eid, "type": "message", "data": {"id": "m1", "role": "assistant"}}
        else:
            ev = {"id": eid, "type": "message.delta", "data": {"id": "m1", "delta": "x"}}
        try:
            if c is None:
                c = HTTPConnection(HOST, port, timeout=5)
            c.request("POST", path, body=orjson.dumps({"events": [ev]}), headers=hdr)
            resp = c.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{resp.status} {body[:80]!r}")
            acks.append((eid, orjson.loads(body)["seqs"][0]))
            k += 1
            t_next += 1.0 / rate
            if t_next < time.monotonic() - 0.5:  # after an outage: no burst, steady rate
                t_next = time.monotonic()
        except Exception as e:
            fails.append((time.monotonic(), type(e).__name__ + ": " + str(e)[:80]))
            with contextlib.suppress(Exception):
                c.close()  # type: ignore[union-attr]
            c = None
            t_next = time.monotonic() + 0.01
    conn.send(("done", {"acks": acks, "fails": fails}))


# --------------------------------------------------------------------------------------
# One restart
# --------------------------------------------------------------------------------------


def poll_ready(port: int, out: dict[str, float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if http("GET", HOST, port, "/readyz")[0] == 200:
                out["t"] = time.monotonic()
                return
        except OSError:
            pass
        time.sleep(0.005)


def read_log(port: int, sid: str, secret: str) -> tuple[list[dict[str, Any]], int, str]:
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        st, data = http(
            "GET", HOST, port, f"/v1/sessions/{sid}/events?since={since}&limit=10000", token=secret
        )
        if st != 200:
            raise RuntimeError(f"GET events -> {st} {data[:200]!r}")
        page = orjson.loads(data)
        events += page["events"]
        if not page["events"] or events[-1]["seq"] >= page["last_seq"]:
            return events, page["last_seq"], page["epoch"]
        since = events[-1]["seq"]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run_once(sig: str, a: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    data_dir = tempfile.mkdtemp(prefix="agentsync-restart-")
    (srv,) = start_servers(["agentsync"], None, data_dir)
    cmd = list(cast("list[str]", srv.proc.args)[3:])  # fanout starts ["taskset", "-c", "0", *cmd]
    port = srv.port
    procs: list[Any] = []
    res: dict[str, Any] = {"signal": sig, "readers": a.readers, "rate": a.rate}
    try:
        st, body = http("POST", HOST, port, "/v1/shares", {"title": "restart-bench"})
        if st != 201:
            raise RuntimeError(f"POST /v1/shares -> {st} {body[:200]!r}")
        share = json.loads(body)
        sid, secret = share["session_id"], share["secret"]
        path = f"/v1/sessions/{sid}/ws"
        nproc = max(1, min(a.reader_procs, a.readers))
        sizes = [a.readers // nproc + (1 if i < a.readers % nproc else 0) for i in range(nproc)]
        pipes = []
        for n in sizes:
            pp, pc = ctx.Pipe()
            p = ctx.Process(
                target=reader_main,
                args=(pc, port, path, n, a.jitter_ms / 1000, a.retry_ms / 1000),
                daemon=True,
            )
            p.start()
            procs.append(p)
            pipes.append(pp)
        for pp in pipes:
            recv(pp, 120, "reader")
        wp, wc = ctx.Pipe()
        wproc = ctx.Process(target=writer_main, args=(wc, port, sid, secret, a.rate), daemon=True)
        wproc.start()
        procs.append(wproc)
        recv(wp, 30, "writer")
        time.sleep(a.before)

        # stop
        t_stop = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM if sig == "term" else signal.SIGKILL)
        try:
            rc = srv.proc.wait(30)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
            rc = -1000  # did not exit within 30 s
        t_exit = time.monotonic()
        res["exit_code"] = rc
        res["old_log"] = srv.log.name

        # start again, same port and data dir
        ready: dict[str, float] = {}
        stop_poll = threading.Event()
        th = threading.Thread(target=poll_ready, args=(port, ready, stop_poll), daemon=True)
        th.start()
        srv = Server("agentsync", cmd, port, ENV)
        res["new_log"] = srv.log.name
        th.join(5)
        stop_poll.set()
        t_ready = ready.get("t", time.monotonic())
        cpu_samples: list[tuple[float, float]] = []  # (time, server CPU s) during the resume
        t_end = time.monotonic() + a.after
        while time.monotonic() < t_end:
            with contextlib.suppress(Exception):
                cpu_samples.append((time.monotonic(), srv.cpu()))
            time.sleep(0.05)
        wp.send(("stop",))
        wres = recv(wp, 30, "writer")[1]
        last_seq_writer = max((s for _, s in wres["acks"]), default=0)
        for pp in pipes:
            pp.send(("target", last_seq_writer, a.drain_timeout))
        rres = [recv(pp, a.drain_timeout + 30, "reader")[1] for pp in pipes]
        log, last_seq, _epoch = read_log(port, sid, secret)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        srv.stop()
        res["exit_code_final"] = srv.proc.returncode
        shutil.rmtree(data_dir, ignore_errors=True)

    # per reader: the first greeting after the stop, and the one after ready
    finals = [f for x in rres for f in x["final"]]
    greets = [gr for x in rres for gr in x["greetings"]]
    closes = [c for x in rres for c in x["closes"]]
    attempts = [n for x in rres for n in x["attempts"]]
    resumed_at = []
    early = 0
    for gl in greets:
        after = [t for t, kind in gl if t >= t_stop]
        if after:
            resumed_at.append(min(after))
            early += min(after) < t_ready
    lat = [t - t_ready for t in resumed_at]
    close_t = [c[0][0] - t_stop for c in closes if c]
    codes: dict[str, int] = {}
    for x in rres:
        for c, v in x["close_codes"].items():
            codes[c] = codes.get(c, 0) + v
    seqs = [e["seq"] for e in log]
    ids = [e.get("id") for e in log]
    acked = dict(wres["acks"])
    by_id: dict[str, list[int]] = {}
    for e in log:
        by_id.setdefault(e["id"], []).append(e["seq"])
    lost_acked = [i for i, s in acked.items() if by_id.get(i) != [s]]
    dup_ids = [i for i, v in by_id.items() if len(v) > 1]
    fails = wres["fails"]
    srv_cpu_pct = None
    if resumed_at and len(cpu_samples) > 1:
        t_all = max(resumed_at)
        win = [c for c in cpu_samples if c[0] <= t_all + 0.05] or cpu_samples[:2]
        if len(win) > 1 and win[-1][0] > win[0][0]:
            srv_cpu_pct = 100 * (win[-1][1] - win[0][1]) / (win[-1][0] - win[0][0])
    res.update(
        server_cpu_pct_resume=srv_cpu_pct,
        exit_s=t_exit - t_stop,
        startup_s=t_ready - t_exit,
        ready_resume_p50_s=pct(lat, 0.5),
        ready_resume_p100_s=max(lat) if lat else None,
        ready_resume_min_s=min(lat) if lat else None,
        stop_to_all_resumed_s=(max(resumed_at) - t_stop) if resumed_at else None,
        close_seen_p100_s=max(close_t) if close_t else None,
        resumed=len(resumed_at),
        resumed_before_ready=early,
        all_resumed=len(resumed_at) == a.readers,
        close_codes=codes,
        attempts_p50=statistics.median(attempts) if attempts else None,
        attempts_max=max(attempts) if attempts else None,
        events=last_seq,
        writer_acked=len(acked),
        writer_failed_posts=len(fails),
        writer_outage_s=(fails[-1][0] - fails[0][0]) if fails else 0.0,
        writer_fail_kinds=sorted({f[1].split(":")[0] for f in fails}),
        readers_complete=sum(f == last_seq for f in finals),
        gaps=sum(x["gaps"] for x in rres),
        dups=sum(x["dups"] for x in rres),
        resets=sum(x["resets"] for x in rres),
        failed=sum(x["failed"] for x in rres),
        delivered=sum(x["events"] for x in rres),
        expected_deliveries=a.readers * last_seq,
        store_dense=seqs == list(range(1, last_seq + 1)),
        store_lost_acked=len(lost_acked),
        store_dup_ids=len(dup_ids),
        store_foreign_ids=sum(1 for i in ids if i not in acked),
    )
    res["ok"] = bool(
        res["all_resumed"]
        and res["readers_complete"] == a.readers
        and res["gaps"] == res["dups"] == res["resets"] == res["failed"] == 0
        and res["delivered"] == res["expected_deliveries"]
        and res["store_dense"]
        and not res["store_lost_acked"]
        and not res["store_dup_ids"]
        and (sig != "term" or rc == 0)
    )
    return res


def fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--signals", default="term,kill", help="comma list: term,kill")
    ap.add_argument("--readers", type=int, default=1000)
    ap.add_argument("--reader-procs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=200.0, help="writer events/s")
    ap.add_argument("--before", type=float, default=3.0, help="s of publishing before the stop")
    ap.add_argument("--after", type=float, default=5.0, help="s of publishing after ready")
    ap.add_argument("--jitter-ms", type=float, default=200.0, help="reconnect delay 0..this")
    ap.add_argument("--retry-ms", type=float, default=100.0, help="retry of a refused connect")
    ap.add_argument("--drain-timeout", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    pin(LOAD_CORE)
    rows = []
    for _ in range(a.repeat):
        for sig in [s.strip() for s in a.signals.split(",") if s.strip()]:
            try:
                r = run_once(sig, a)
            except Exception as e:
                print(f"# {sig}: {e!r}", file=sys.stderr)
                continue
            rows.append(r)
            if not a.json:
                print(
                    f"# {sig}: ready->all resumed {fmt(r['ready_resume_p100_s'])} s, ok={r['ok']}",
                    file=sys.stderr,
                )
    if a.json:
        print(json.dumps({"args": vars(a), "rows": rows}, indent=1))
        return
    print(
        f"R={a.readers}, writer {a.rate:.0f} ev/s (HTTP POST), reconnect jitter "
        f"0-{a.jitter_ms:.0f} ms, refused-connect retry {a.retry_ms:.0f} ms ±50 %"
    )
    print()
    print(
        "| signal | exit code | exit s | startup s | ready→resumed p50 s | p100 s "
        "| stop→all resumed s | srv CPU % while resuming | resumed | close codes "
        "| attempts p50/max | events | writer outage s | complete | gap/dup/reset "
        "| store dense / lost acked / dup ids | ok |"
    )
    print("|" + "---|" * 17)
    for r in rows:
        print(
            f"| {r['signal']} | {r['exit_code']} | {fmt(r['exit_s'])} | {fmt(r['startup_s'])} "
            f"| {fmt(r['ready_resume_p50_s'])} | {fmt(r['ready_resume_p100_s'])} "
            f"| {fmt(r['stop_to_all_resumed_s'])} | {fmt(r['server_cpu_pct_resume'], 0)} "
            f"| {r['resumed']}/{r['readers']} "
            f"| {r['close_codes']} | {fmt(r['attempts_p50'], 0)}/{r['attempts_max']} "
            f"| {r['events']} | {fmt(r['writer_outage_s'])} "
            f"| {r['readers_complete']}/{r['readers']} "
            f"| {r['gaps']}/{r['dups']}/{r['resets']} "
            f"| {r['store_dense']} / {r['store_lost_acked']} / {r['store_dup_ids']} "
            f"| {'yes' if r['ok'] else 'NO'} |"
        )
    if len(rows) > len({r["signal"] for r in rows}):
        print()
        print("| signal | runs | ready→resumed p100 s (median) | stop→all resumed s (median) |")
        print("|---|---|---|---|")
        for sig in dict.fromkeys(r["signal"] for r in rows):
            xs = [r for r in rows if r["signal"] == sig and r["ready_resume_p100_s"] is not None]
            if xs:
                print(
                    f"| {sig} | {len(xs)} "
                    f"| {statistics.median(r['ready_resume_p100_s'] for r in xs):.3f} "
                    f"| {statistics.median(r['stop_to_all_resumed_s'] for r in xs):.3f} |"
                )


if __name__ == "__main__":
    main()
